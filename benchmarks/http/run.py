"""The HTTP benchmark: Scoreline's server against the floor and a plain LightGBM app, in one run.

    .venv/bin/python -m benchmarks.http.run [--duration 5] [--rounds 3] [--out bench-results/http]

Servers (each its own uvicorn process with httptools, one worker, all on loopback):
- scoreline: `scoreline serve` on the demo registry (built once under .cache/bench-http-demo), the
  full call {"model-id": "customer-segmentation", "customer-id": K}: entity lookup, transforms,
  model, decision, decision log (SQLite), micro-batching on;
- scoreline-unbatched: the same with `--max-batch 1` (every request its own engine call);
- starlette-constant: a POST endpoint returning a constant (the floor of Starlette + uvicorn);
- starlette-lightgbm: Booster.predict(num_threads=1) on the same model's artifact, features inline.
The load generator (benchmarks/suite/loadgen.py: wrk when installed, else aiohttp) is a separate
process; its CPU use and the server's are reported, since they share this machine. Rounds rotate
the server order; figures are medians over rounds. Arrow bulk: 10,000 customer ids per request
to /v1/models/customer-segmentation/score, reported as rows per second.
MLServer is measured by the full suite (`scoreline bench --only http`), not here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MODEL_ID = "customer-segmentation"
ARROW = "application/vnd.apache.arrow.stream"


def demo_registry(customers: int) -> tuple[Path, int, int]:
    """The demo registry (built once), its first customer id and how many there are."""
    root = REPO / ".cache" / "bench-http-demo"
    marker = root / "bench-http.json"
    if not marker.exists() or json.loads(marker.read_text())["customers"] != customers:
        from scoreline.engine.demo import FIRST_CUSTOMER_ID, build_demo

        summary = build_demo(root, customers=customers, log=lambda m: print(f"demo: {m}", file=sys.stderr))
        marker.write_text(json.dumps({"registry": str(Path(summary["registry"]).absolute()),
                                      "first": FIRST_CUSTOMER_ID, "customers": customers}))
    info = json.loads(marker.read_text())
    return Path(info["registry"]), info["first"], info["customers"]


class Server:
    """A server process on a free loopback port; ready once POSTing its body answers 200."""

    def __init__(self, name: str, cmd: list[str], path: str, body: bytes, env: dict | None = None) -> None:
        from benchmarks.suite.mlserver import free_port

        self.name, self.body = name, body
        self.port = free_port()
        self.cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self.env = dict(os.environ, **(env or {}))

    def __enter__(self) -> Server:
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.name} exited: {self.log.read()[-800:].decode(errors='replace')}")
            try:
                request = urllib.request.Request(self.url, data=self.body, method="POST",
                                                 headers={"content-type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(f"{self.name} was not ready after 180 s")

    def __exit__(self, *exc) -> None:
        from benchmarks.suite.mlserver import stop_process_group

        stop_process_group(self.proc, signal.SIGINT, timeout=20)
        self.log.close()


def servers(registry: Path, key: int, db: Path) -> list[Server]:
    from scoreline import Repository

    version_dir = Repository(registry).version_dir(MODEL_ID)
    # the manifest names the artifact (the folder also holds golden.json, provenance.json, ...)
    artifact = version_dir / Repository(registry).load_manifest(MODEL_ID).model.artifact
    import lightgbm as lgb

    row = np.random.default_rng(3).normal(size=lgb.Booster(model_file=str(artifact)).num_feature())
    body = json.dumps({"model-id": MODEL_ID, "customer-id": key}).encode()
    serve = [sys.executable, "-m", "scoreline.cli", "serve", "--registry", str(registry), "--port", "{port}",
             "--log", f"sqlite:///{db}", "--log-level", "warning", "--reload-interval", "0"]
    uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning",
               "--no-access-log", "--http", "httptools"]
    return [
        Server("scoreline", serve, "/v1/score", body),
        Server("scoreline-unbatched", serve + ["--max-batch", "1"], "/v1/score", body),
        Server("starlette-constant", uvicorn + ["benchmarks.suite.http_apps:constant_app"], "/", b"{}"),
        Server("starlette-lightgbm", uvicorn + ["benchmarks.suite.http_apps:lightgbm_app"], "/",
               json.dumps({"features": row.tolist()}).encode(), {"BENCH_MODEL_FILE": str(artifact)}),
    ]


def arrow_body(first: int, customers: int, rows: int) -> bytes:
    import pyarrow as pa

    keys = np.random.default_rng(5).integers(first, first + customers, rows)
    table = pa.table({"customer-id": pa.array(keys, pa.int64())})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def run(args) -> dict:
    from benchmarks.suite.loadgen import measure

    registry, first, customers = demo_registry(args.customers)
    key = first + customers // 2
    db = Path(tempfile.mkdtemp(prefix="bench-http-")) / "decisions.db"
    points, bulk = [], []
    with contextlib.ExitStack() as stack:
        running = [stack.enter_context(s) for s in servers(registry, key, db)]
        for server in running:  # warm-up, discarded
            measure(server.url, server.body, 8, 1)
        arrow = arrow_body(first, customers, args.arrow_rows)
        bulk_url = running[0].url.replace("/v1/score", f"/v1/models/{MODEL_ID}/score")
        for r in range(args.rounds):
            k = r % len(running)
            for server in running[k:] + running[:k]:
                for c in args.concurrency:
                    out = measure(server.url, server.body, c, args.duration, server_pids=[server.proc.pid])
                    points.append({"server": server.name, "round": r, **out})
                    print(f"round {r + 1}: {server.name:20s} c={c:<3d} {out['rps']:9.0f} req/s  p50 {out['p50_ms']:.3f} ms"
                          f"  p99 {out['p99_ms']:.3f} ms  client {out['client_cpu_cores']:.2f} cores", file=sys.stderr)
            for c in (1, 2):
                out = measure(bulk_url, arrow, c, args.duration, server_pids=[running[0].proc.pid],
                              headers={"content-type": ARROW}, tool="aiohttp")
                out["rows_per_s"] = out["rps"] * args.arrow_rows
                bulk.append({"round": r, **out})
                print(f"round {r + 1}: arrow bulk c={c} {out['rows_per_s']:,.0f} rows/s", file=sys.stderr)
    return summarise(points, bulk, args)


def summarise(points: list[dict], bulk: list[dict], args) -> dict:
    med = lambda xs: float(np.median(xs))  # noqa: E731
    table = []
    by = {}
    for p in points:
        by.setdefault((p["server"], p["concurrency"]), []).append(p)
    for (server, c), runs in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        table.append({"server": server, "concurrency": c, "rps": med([r["rps"] for r in runs]),
                      "p50_ms": med([r["p50_ms"] for r in runs]), "p99_ms": med([r["p99_ms"] for r in runs]),
                      "errors": sum(r["errors"] for r in runs), "tool": runs[0]["tool"],
                      "client_cpu_cores": med([r["client_cpu_cores"] for r in runs]),
                      "server_cpu_cores": med([r["server_cpu_cores"] for r in runs])})
    bulk_table = []
    for c in (1, 2):
        runs = [b for b in bulk if b["concurrency"] == c]
        if runs:
            bulk_table.append({"concurrency": c, "rows_per_request": args.arrow_rows,
                               "rows_per_s": med([b["rows_per_s"] for b in runs]),
                               "p50_ms": med([b["p50_ms"] for b in runs]), "errors": sum(b["errors"] for b in runs),
                               "client_cpu_cores": med([b["client_cpu_cores"] for b in runs])})
    targets = []
    get = {(row["server"], row["concurrency"]): row for row in table}
    top, low = max(args.concurrency), min(args.concurrency)
    ours, floor, plain = (get.get((s, top)) for s in ("scoreline", "starlette-constant", "starlette-lightgbm"))
    if ours and floor:
        # ratio per round, then the median: both servers saw the same machine state in a round
        ratios = [a["rps"] / b["rps"] for a in by[("scoreline", top)] for b in by[("starlette-constant", top)]
                  if a["round"] == b["round"]]
        targets.append({"target": f"full call >= 0.8x the floor's throughput at concurrency {top}",
                        "figure": f"{med(ratios):.2f}x ({ours['rps']:,.0f} vs {floor['rps']:,.0f} req/s)",
                        "reached": med(ratios) >= 0.8})
    if ours and plain:
        targets.append({"target": f"p99 below the plain LightGBM app's at concurrency {top}",
                        "figure": f"{ours['p99_ms']:.2f} ms vs {plain['p99_ms']:.2f} ms",
                        "reached": ours["p99_ms"] < plain["p99_ms"]})
    ours1, floor1, plain1 = (get.get((s, low)) for s in ("scoreline", "starlette-constant", "starlette-lightgbm"))
    if ours1 and floor1 and plain1:
        # the model's own cost over HTTP: the plain app's p50 above the floor's
        bound = 1.2 * (floor1["p50_ms"] + max(0.0, plain1["p50_ms"] - floor1["p50_ms"]))
        targets.append({"target": f"p50 at concurrency {low} within 1.2x of the floor plus the model's own cost",
                        "figure": f"{ours1['p50_ms']:.3f} ms vs a bound of {bound:.3f} ms", "reached": ours1["p50_ms"] <= bound})
    return {"single_row": table, "arrow_bulk": bulk_table, "targets": targets,
            "settings": {"duration_s": args.duration, "rounds": args.rounds, "concurrency": args.concurrency,
                         "customers": args.customers, "cpus": os.cpu_count(),
                         "load_average_at_end": os.getloadavg()}}


def markdown(result: dict) -> str:
    lines = ["| server | concurrency | req/s | p50 ms | p99 ms | errors | client CPU | server CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["single_row"]:
        lines.append(f"| {r['server']} | {r['concurrency']} | {r['rps']:,.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['errors']} | {r['client_cpu_cores']:.2f} | {r['server_cpu_cores']:.2f} |")
    lines += ["", "| Arrow bulk | rows/request | rows/s | p50 ms | errors |", "|---|---:|---:|---:|---:|"]
    for b in result["arrow_bulk"]:
        lines.append(f"| concurrency {b['concurrency']} | {b['rows_per_request']:,} | {b['rows_per_s']:,.0f} | "
                     f"{b['p50_ms']:.1f} | {b['errors']} |")
    lines += ["", "| target | figure | reached |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['figure']} | {'yes' if t['reached'] else 'no'} |" for t in result["targets"]]
    s = result["settings"]
    lines += ["", f"{s['rounds']} rounds x {s['duration_s']} s per point, {s['cpus']} CPUs, "
                  f"load average at the end {s['load_average_at_end'][0]:.1f}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.http.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per point (default: 5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, rotating the server order (default: 3)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 64],
                   help="comma-separated (default: 1,8,64)")
    p.add_argument("--customers", type=int, default=100_000, help="demo customers (default: 100000)")
    p.add_argument("--arrow-rows", type=int, default=10_000, help="rows per Arrow request (default: 10000)")
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "http", help="where results go")
    args = p.parse_args(argv)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba"))
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "http.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (args.out / "http.md").write_text(text)
    print(text)
    bad = sum(r["errors"] for r in result["single_row"]) + sum(b["errors"] for b in result["arrow_bulk"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
