"""`scoreline serve`: the HTTP service (v1 JSON and Arrow, Open Inference Protocol v2) on uvicorn."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DESCRIPTION = """\
Serve a model registry over HTTP: POST /v1/score, /v1/score/batch, /v1/models/{id}/score (Arrow IPC),
the Open Inference Protocol v2 under /v2, /v1/models, /healthz, /readyz, /metrics, /openapi.json,
and /admin/reload, /admin/promote (only with an admin key).

Keys can also come from $SCORELINE_API_KEYS and $SCORELINE_ADMIN_KEYS (comma-separated), which
keeps them out of the process list. Compiled kernels are cached in $NUMBA_CACHE_DIR (default
~/.cache/scoreline/numba), so restarts and extra workers start fast.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a registry over HTTP", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", default=os.environ.get("SCORELINE_REGISTRY"),
                   help="model registry folder (default: $SCORELINE_REGISTRY)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (default: 1)")
    p.add_argument("--log", help="decision log URL, or 'none' (default: $SCORELINE_LOG, else "
                                 "sqlite:///<registry>/decisions.db)")
    p.add_argument("--api-key", action="append", default=[], help="a key that scoring requests must carry "
                   "(Authorization: Bearer KEY or X-API-Key); repeat for several")
    p.add_argument("--admin-key", action="append", default=[], help="a key for /admin/*; without one, admin is off")
    p.add_argument("--max-batch", type=int, default=64, help="rows per micro-batch (default: 64)")
    p.add_argument("--max-wait-us", type=int, default=500,
                   help="wait budget of a micro-batch while another runs, in microseconds (default: 500)")
    p.add_argument("--max-queue", type=int, default=4096,
                   help="waiting rows per model version before answering 503 (default: 4096)")
    p.add_argument("--max-in-flight", type=int, default=1,
                   help="micro-batches of one model version scoring at once (default: 1)")
    p.add_argument("--max-active", type=int, default=64,
                   help="scoring requests worked on at once; more wait their turn (default: 64)")
    p.add_argument("--max-waiting", type=int, default=4096,
                   help="scoring requests waiting for a turn before new ones get 503 (default: 4096)")
    p.add_argument("--threads", type=int, default=2, help="scoring threads per worker (default: 2)")
    p.add_argument("--switch-interval-us", type=int, default=None,
                   help="Python's GIL switch interval in the workers (default: Python's 5000); smaller "
                        "lets the event loop take the GIL back sooner from a scoring thread")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request deadline in seconds (default: 5)")
    p.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024, help="request body limit (default: 16 MiB)")
    p.add_argument("--max-rows", type=int, default=10_000, help="rows per JSON or v2 request (default: 10000)")
    p.add_argument("--max-arrow-rows", type=int, default=1_000_000, help="rows per Arrow request (default: 1000000)")
    p.add_argument("--max-connections-per-client", type=int, default=256,
                   help="open connections per client address; more are answered 503 (default: 256)")
    p.add_argument("--read-timeout", type=float, default=10.0,
                   help="seconds for a request to arrive whole; slower ones get 408 and are closed (default: 10)")
    p.add_argument("--durable-log", action="store_true",
                   help="answer a scoring request only once its decision is committed to the decision log "
                        "(group commit; default: answer first, commit within ~0.2 s; see the README)")
    p.add_argument("--reload-interval", type=float, default=2.0,
                   help="seconds between checks of the registry for new versions and moved aliases, 0 for "
                        "never (default: 2; with --workers, how /admin/promote on one worker reaches the others)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)


def _keys(flag: list[str], env: str) -> list[str]:
    keys = [k for k in flag if k]
    keys += [k.strip() for k in os.environ.get(env, "").split(",") if k.strip()]
    return keys


def run(args) -> int:
    import msgspec

    from scoreline.errors import NotFoundError, SchemaError

    if not args.registry:
        raise SchemaError("give --registry DIR (or set SCORELINE_REGISTRY)", path="--registry")
    registry = Path(args.registry).absolute()
    if not registry.is_dir():
        raise NotFoundError(f"no registry folder at {str(registry)!r}", path="--registry")
    if args.workers < 1:
        raise SchemaError("--workers must be at least 1", path="--workers")
    log = args.log or os.environ.get("SCORELINE_LOG") or f"sqlite:///{registry / 'decisions.db'}"
    settings = {
        "max_batch": args.max_batch, "max_wait_us": args.max_wait_us, "max_queue": args.max_queue,
        "max_in_flight": args.max_in_flight,
        "max_active_requests": args.max_active, "max_waiting_requests": args.max_waiting,
        "threads": args.threads, "request_timeout_s": args.timeout, "max_body_bytes": args.max_body_bytes,
        "max_rows": args.max_rows, "max_arrow_rows": args.max_arrow_rows,
        "max_connections_per_client": args.max_connections_per_client, "read_timeout_s": args.read_timeout,
        "durable_log": args.durable_log,
        "api_keys": _keys(args.api_key, "SCORELINE_API_KEYS"),
        "admin_keys": _keys(args.admin_key, "SCORELINE_ADMIN_KEYS"),
    }
    from scoreline.server.settings import ServerSettings

    try:
        msgspec.convert(settings, ServerSettings)  # refuse bad values here, not in every worker
    except (msgspec.ValidationError, ValueError) as exc:
        raise SchemaError(f"bad server option: {exc}") from None
    os.environ.setdefault("NUMBA_CACHE_DIR", str(_cache_home() / "scoreline" / "numba"))
    if args.workers > 1:
        _warm_cache(registry)

    import uvicorn

    from scoreline.server.app import ENV_CONFIG
    from scoreline.server.connections import GuardedProtocol

    os.environ[ENV_CONFIG] = msgspec.json.encode(
        {"registry": str(registry), "log": None if log == "none" else log,
         "reload_interval": args.reload_interval, "switch_interval_us": args.switch_interval_us,
         "settings": settings}).decode()
    uvicorn.run("scoreline.server.app:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, http=GuardedProtocol, loop=_loop(), log_level=args.log_level,
                access_log=False, lifespan="on", timeout_graceful_shutdown=10)
    return 0


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _warm_cache(registry: Path) -> None:
    """Compile every live version once here, so N workers read Numba's cache instead of racing to
    write it (numba#4807) and each starts in well under a second per model."""
    import scoreline

    scoreline.Engine(registry, preload=True).close()


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"
