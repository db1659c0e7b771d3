"""deploy/build.sh, the image's build steps, run for real: the locked runtime set and scoreline
installed into a fresh prefix, the demo registry compiled into the prefix's caches, then
`scoreline serve` from that prefix answering /readyz and a scored request exactly as the
checkout scores it, without compiling anything at start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import pytest
from packaging.requirements import Requirement

import scoreline

from tests.support.deploy import ROOT, uv_path
from tests.support.server import free_port

pytest.importorskip("lightgbm")  # the demo trains its models

BUILD = str(ROOT / "deploy" / "build.sh")
MODEL_ID = "credit-risk"


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "NUMBA_CACHE_DIR"}}
    return {**env, **extra}


def _build(*args, env):
    r = subprocess.run([BUILD, *map(str, args)], capture_output=True, text=True, timeout=400, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _cache_files(prefix):
    return sorted(str(p.relative_to(prefix)) for p in (prefix / "cache").rglob("*") if p.is_file())


def _installed(prefix) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))")
    r = subprocess.run([prefix / "bin" / "python", "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _locked_runtime_set(uv) -> dict[str, str]:
    r = subprocess.run([uv, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    pins = {}
    for line in r.stdout.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate():
                pins[req.name.lower()], = (s.version for s in req.specifier)
    return pins


@pytest.mark.slow
def test_build_script_installs_warms_and_serves_from_a_fresh_prefix(tmp_path):
    from scoreline.engine.demo import build_demo

    demo = build_demo(tmp_path / "data", customers=2_000, train_rows=5_000, log=lambda *a: None)
    registry, key = demo["registry"], demo["example-key"]
    prefix = tmp_path / "prefix"
    uv = uv_path()
    env = _env(UV=uv)
    _build("install", prefix, env=env)
    installed = _installed(prefix)
    assert installed.pop("scoreline") == scoreline.__version__
    assert installed == _locked_runtime_set(uv)  # exactly the lock's runtime set: no test or dev tools
    _build("warm", prefix, registry, env=env)
    warmed = _cache_files(prefix)
    assert any(name.endswith(".nbi") for name in warmed)

    port = free_port()
    server = subprocess.Popen(
        [prefix / "bin" / "scoreline", "serve", "--registry", registry, "--port", str(port), "--log", "none",
         "--log-level", "warning"],
        env=_env(NUMBA_CACHE_DIR=str(prefix / "cache" / "numba")), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 90
            while True:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the server from the prefix did not become ready"
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            answer = client.post("/v1/score", json={"model-id": MODEL_ID, "customer-id": key})
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=60)[0]
    assert server.returncode == 0, output
    assert answer.status_code == 200, answer.text
    engine = scoreline.Engine(registry)  # the checkout's own scoring of the same request
    try:
        assert answer.json() == engine.score(MODEL_ID, {"customer-id": key})
    finally:
        engine.close()
    assert _cache_files(prefix) == warmed  # the server read the caches and compiled nothing
