"""HTTP load generator run as its own process: closed loop, fixed concurrency, one POST body.

    python -m benchmarks.suite.loadgen URL --body-file F --concurrency 64 --duration 5

prints one JSON line: requests, errors, rps, p50_ms, p99_ms, tool. `measure()` runs it as a child
process and adds the CPU the client and the server used (client and server share this machine,
so a client eating a core is part of the result). It drives wrk when wrk is installed (Debian's
package: far less CPU per request than a Python client), else an aiohttp client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["measure", "process_cpu_seconds", "wrk_ms"]


def measure(url: str, body: bytes, concurrency: int, duration_s: float, *, server_pids=(),
            headers: dict | None = None, tool: str | None = None) -> dict:
    """Run the load generator process against `url`; returns its figures plus CPU use of both sides."""
    with tempfile.NamedTemporaryFile(suffix=".body", delete=False) as f:
        f.write(body)
    try:
        cmd = [sys.executable, "-m", "benchmarks.suite.loadgen", url, "--body-file", f.name,
               "--concurrency", str(concurrency), "--duration", str(duration_s)]
        for k, v in (headers or {"content-type": "application/json"}).items():
            cmd += ["--header", f"{k}: {v}"]
        if tool:
            cmd += ["--tool", tool]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_before = sum(process_cpu_seconds(p) for p in server_pids)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60,
                              cwd=Path(__file__).resolve().parents[2])
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_after = sum(process_cpu_seconds(p) for p in server_pids)
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.strip()[-400:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # The child's CPU includes wrk or the aiohttp loop (and the Python start-up, a few tens of ms).
    out["client_cpu_cores"] = ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / wall
    out["server_cpu_cores"] = (server_after - server_before) / wall if server_pids else None
    out["concurrency"] = concurrency
    return out


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children that have been waited for (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- the process itself

def _run_wrk(args, body: bytes) -> dict:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body.decode())}"]
    lines += [f'wrk.headers[{_lua_string(k)}] = {_lua_string(v)}' for k, v in args.headers.items()]
    script.write("\n".join(lines) + "\n")
    script.close()
    try:
        threads = 1 if args.concurrency < 4 else 2
        done = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{args.concurrency}", f"-d{args.duration}s", "--latency",
             "--timeout", "10s", "-s", script.name, args.url],
            capture_output=True, text=True, check=True,
        )
    finally:
        os.unlink(script.name)
    text = done.stdout
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M))
    return {
        "tool": "wrk", "requests": requests, "errors": errors,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50_ms": wrk_ms(pct["50"]), "p99_ms": wrk_ms(pct["99"]),
    }


def _lua_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def wrk_ms(text: str) -> float:
    """A wrk duration ("250.00us", "1.50ms", "2.00s") in milliseconds."""
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


async def _run_aiohttp(args, body: bytes) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + args.duration

    async def worker(session):
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                async with session.post(args.url, data=body, headers=args.headers) as resp:
                    await resp.read()
                    ok = resp.status < 300
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3
    return {
        "tool": "aiohttp", "requests": len(latencies), "errors": errors, "rps": len(latencies) / wall,
        "p50_ms": float(np.median(lat)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.suite.loadgen", description=__doc__)
    p.add_argument("url")
    p.add_argument("--body-file", required=True, type=Path)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
    p.add_argument("--tool", choices=("wrk", "aiohttp"), default=None,
                   help="default: wrk when it is installed, else aiohttp")
    args = p.parse_args(argv)
    args.headers = dict(h.split(": ", 1) for h in args.header) or {"content-type": "application/json"}
    body = args.body_file.read_bytes()
    tool = args.tool or ("wrk" if shutil.which("wrk") else "aiohttp")
    if tool == "wrk":
        args.duration = max(1, round(args.duration))  # wrk takes whole seconds
        out = _run_wrk(args, body)
    else:
        out = asyncio.run(_run_aiohttp(args, body))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
