"""HTTP section: Scoreline's full call vs a bare Starlette floor, Starlette + LightGBM, and MLServer.

Every server runs as its own process on loopback, all started up front and loaded one at a time;
the load generator is a further process (benchmarks/suite/loadgen.py) whose CPU use is reported
with the server's, since both share the machine. Rounds rotate the server order, and the ratios
are taken pair by pair within a round.

- scoreline: `scoreline serve` on the demo registry, {"model-id", "customer-id"} to /v1/score:
  entity lookup, transforms, model, decision and decision log (SQLite) on every call.
- starlette-constant: the floor (a constant body); starlette-lightgbm: Booster.predict with one
  thread on the same model with its features inline (no lookup, no log).
- mlserver / mlserver-batching: MLServer 1.7.1 + mlserver-lightgbm, adaptive batching off / on.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.suite.kernels import pairwise_ratio
from benchmarks.suite.loadgen import measure
from benchmarks.suite.mlserver import MLServerPeer, free_port, stop_process_group
from benchmarks.suite.peers import REPO

__all__ = ["run_http", "demo_registry"]

MODEL_ID = "customer-segmentation"


def demo_registry(cfg) -> tuple[Path, int]:
    """The demo registry (built once under .cache/bench-demo) and an entity key that exists."""
    root = cfg.cache / "bench-demo"
    marker = root / "bench.json"
    if not marker.exists():
        from scoreline.engine.demo import build_demo

        summary = build_demo(root, customers=100_000, log=lambda m: cfg.log(f"demo: {m}"))
        marker.write_text(json.dumps({"registry": summary["registry"], "key": summary["example-key"]}))
    info = json.loads(marker.read_text())
    return Path(info["registry"]), int(info["key"])


class _Process:
    """A server subprocess on a free loopback port, ready once a POST of `body` to `url` answers 200."""

    def __init__(self, name, cmd, path, body, env=None):
        self.name = name
        self.port = free_port()
        self.cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self.body = body
        self.headers = {"content-type": "application/json"}
        self.env = dict(os.environ, **(env or {}))

    def __enter__(self):
        self.logfile = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=REPO, stdout=self.logfile,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.logfile.seek(0)
                raise RuntimeError(f"exited with {self.proc.returncode}: {self.logfile.read()[-500:].decode()}")
            try:
                req = urllib.request.Request(self.url, data=self.body, headers=self.headers, method="POST")
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        self.first_answer = json.loads(resp.read())
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        self.__exit__()
        raise RuntimeError("not ready after 120 s")

    @property
    def pid(self):
        return self.proc.pid

    def __exit__(self, *exc):
        stop_process_group(self.proc)
        self.logfile.close()


def _uvicorn(name, app, body, env=None):
    cmd = [sys.executable, "-m", "uvicorn", f"benchmarks.suite.http_apps:{app}", "--host", "127.0.0.1",
           "--port", "{port}", "--log-level", "warning", "--no-access-log", "--http", "httptools"]
    return _Process(name, cmd, "/", body, env)


def run_http(cfg, log) -> dict:
    concurrencies = (1, 8, 64) if cfg.timing else (1, 8)
    duration = (3 if cfg.quick else 8) if cfg.timing else 1
    rounds = (2 if cfg.quick else 3) if cfg.timing else 1
    registry, key = demo_registry(cfg)
    from scoreline.registry.repository import Repository

    version_dir = Repository(registry).version_dir(MODEL_ID)
    # the manifest names the artifact (the folder also holds golden.json, provenance.json, ...)
    artifact = version_dir / Repository(registry).load_manifest(MODEL_ID).model.artifact
    import lightgbm as lgb

    num_features = lgb.Booster(model_file=str(artifact)).num_feature()
    row = np.random.default_rng(3).normal(size=(1, num_features))
    db = Path(tempfile.mkdtemp(prefix="bench-http-")) / "decisions.db"
    candidates = [
        ("scoreline", lambda: _Process(
            "scoreline", [sys.executable, "-m", "scoreline.cli", "serve", "--registry", str(registry),
                          "--port", "{port}", "--log", f"sqlite:///{db}", "--log-level", "warning",
                          "--reload-interval", "0"],
            "/v1/score", json.dumps({"model-id": MODEL_ID, "customer-id": key}).encode())),
        ("starlette-constant", lambda: _uvicorn("starlette-constant", "constant_app", b"{}")),
        ("starlette-lightgbm", lambda: _uvicorn(
            "starlette-lightgbm", "lightgbm_app", json.dumps({"features": row[0].tolist()}).encode(),
            {"BENCH_MODEL_FILE": str(artifact)})),
        ("mlserver", lambda: MLServerPeer(artifact, row, batching=False, venv=cfg.peers_dir / "mlserver-venv")),
        ("mlserver-batching", lambda: MLServerPeer(artifact, row, batching=True, venv=cfg.peers_dir / "mlserver-venv")),
    ]
    points: list[dict] = []
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, start in candidates:
            try:
                servers[name] = stack.enter_context(start())
                log(f"http: {name} ready")
            except (FileNotFoundError, RuntimeError) as exc:
                cfg.skip(f"http: {name} skipped: {exc}")
        if "scoreline" not in servers:
            return {"status": "the Scoreline server did not start", "points": []}
        for server in servers.values():  # warm-up, discarded: first requests compile and fill caches
            measure(server.url, server.body, 8, 1, headers=server.headers)
        names = list(servers)
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                server = servers[name]
                for c in concurrencies:
                    log(f"http: round {r + 1}/{rounds}: {name} at concurrency {c}")
                    out = measure(server.url, server.body, c, duration, server_pids=[server.pid],
                                  headers=server.headers)
                    points.append({"server": name, "round": r, **out})
    return _summarise(points, concurrencies)


def _summarise(raw: list[dict], concurrencies) -> dict:
    points, by = [], {}
    for p in raw:
        by.setdefault((p["server"], p["concurrency"]), []).append(p)
    for (server, c), runs in by.items():
        points.append({
            "server": server, "concurrency": c,
            "rps": float(np.median([r["rps"] for r in runs])),
            "p50_ms": float(np.median([r["p50_ms"] for r in runs])),
            "p99_ms": float(np.median([r["p99_ms"] for r in runs])),
            "errors": int(sum(r["errors"] for r in runs)),
            "client_cpu_cores": float(np.median([r["client_cpu_cores"] for r in runs])),
            "server_cpu_cores": float(np.median([r["server_cpu_cores"] for r in runs])),
            "tool": runs[0]["tool"], "round_rps": [r["rps"] for r in runs], "round_p99_ms": [r["p99_ms"] for r in runs],
        })
    table = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in p.items()
              if not k.startswith("round_")} for p in points]
    targets = []
    top = max(concurrencies)
    ours, floor, plain = (by.get((s, top)) for s in ("scoreline", "starlette-constant", "starlette-lightgbm"))
    if ours and floor:
        ratio = pairwise_ratio([r["rps"] for r in ours], [r["rps"] for r in floor])
        targets.append({"target": f"HTTP full call >= 0.8x a bare Starlette endpoint's throughput at concurrency {top}",
                        "reached": ratio >= 0.8,
                        "figure": f"{ratio:.2f}x ({np.median([r['rps'] for r in ours]):,.0f} vs "
                                  f"{np.median([r['rps'] for r in floor]):,.0f} req/s)"})
    if ours and plain:
        p99, p99_plain = np.median([r["p99_ms"] for r in ours]), np.median([r["p99_ms"] for r in plain])
        targets.append({"target": f"HTTP p99 at concurrency {top} below a plain Starlette + LightGBM app's",
                        "reached": bool(p99 < p99_plain), "figure": f"{p99:.2f} ms vs {p99_plain:.2f} ms"})
    notes = ["One request = one entity; the load generator sends the same body each time (so the "
             "entity lookup hits the same row), closed loop, HTTP/1.1 keep-alive.",
             "client_cpu_cores / server_cpu_cores: CPU seconds per wall second of the load generator and the "
             "server; on 2 cores their sum near 2 means the machine, not the server, is the limit."]
    return {"points": points, "tables": {"HTTP, single-row requests (medians over rounds)": table},
            "targets": targets, "notes": notes}
