"""`scoreline serve` as a real process: two workers on one port, ready once compiled, scoring, and a
clean shutdown that flushes the decision log; and its refusals of bad options."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from scoreline.registry.decision_log import DecisionLog

from tests.support.server import KEY, MODEL_ID, build_registry, free_port


def _scoreline(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "scoreline.cli", *args], capture_output=True, text=True,
                          timeout=60, **kwargs)


def test_bad_options_are_refused_with_a_message(tmp_path):
    r = _scoreline("serve", "--registry", str(tmp_path / "missing"))
    assert r.returncode == 1 and "no registry folder" in r.stderr
    tmp_path.joinpath("reg").mkdir()
    r = _scoreline("serve", "--registry", str(tmp_path / "reg"), "--max-batch", "0")
    assert r.returncode == 1 and "max_batch" in r.stderr


@pytest.mark.slow
def test_serve_with_two_workers(tmp_path):
    registry = build_registry(tmp_path / "registry")
    port = free_port()
    env = dict(os.environ, SCORELINE_ADMIN_KEYS="adm")
    env.setdefault("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    process = subprocess.Popen(
        [sys.executable, "-m", "scoreline.cli", "serve", "--registry", str(registry["root"]), "--port", str(port),
         "--workers", "2", "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        ready = 0
        with httpx.Client(base_url=url, timeout=10) as client:
            while ready < 10:  # ten ready answers in a row: both workers have compiled
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "the server did not become ready"
                try:
                    ready = ready + 1 if client.get("/readyz").status_code == 200 else 0
                except httpx.TransportError:
                    ready = 0
                time.sleep(0.05)
            answers = [client.post("/v1/score", json={"model-id": MODEL_ID, KEY: 1000 + i, "request-id": f"cli-{i}"})
                       for i in range(20)]
            assert all(a.status_code == 200 for a in answers)
            assert client.post("/admin/reload", headers={"x-api-key": "adm"}).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    logged = DecisionLog(f"sqlite:///{registry['root'] / 'decisions.db'}").tail(100).column("request_id").to_pylist()
    assert sorted(i for i in logged if i and i.startswith("cli-")) == sorted(f"cli-{i}" for i in range(20))
