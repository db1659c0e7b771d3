"""The locked environment: uv.lock agrees with pyproject.toml, uv-bootstrap.txt is exported from it,
and the Makefile installs from the lock, again whenever the lock changes."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.deploy import ROOT, uv_path


def _run(*args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT, **kwargs)


def test_lock_agrees_with_pyproject():
    r = _run(uv_path(), "lock", "--check", "--offline")
    assert r.returncode == 0, r.stderr


def test_bootstrap_file_is_the_locks_dev_group():
    r = _run(uv_path(), "export", "--frozen", "--only-dev", "--no-emit-project")
    assert r.returncode == 0, r.stderr

    def pins(text):
        return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]

    exported = pins(r.stdout)
    assert any(line.startswith("uv==") for line in exported)
    assert pins((ROOT / "uv-bootstrap.txt").read_text()) == exported, "run `make lock`"


def _make_plan(venv, *args) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    r = _run("make", "-n", f"VENV={venv}", *args, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("target, sync", [("test", "sync --locked --extra test"),
                                          ("serve", "sync --locked --inexact --extra demo")])
def test_make_installs_from_the_lock_and_again_when_it_changes(tmp_path, target, sync):
    fresh = _make_plan(tmp_path / "fresh", target)
    assert "-m venv" in fresh and "--require-hashes" in fresh and "-r uv-bootstrap.txt" in fresh
    assert sync in fresh
    venv = tmp_path / "venv"  # a venv installed after the lock was written
    (venv / "bin").mkdir(parents=True)
    for name in ("bin/python", "bin/uv", ".installed-test", ".installed-serve"):
        (venv / name).touch()
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / ".built").touch()
    assert sync not in _make_plan(venv, f"DEMO={demo}", target)
    assert sync in _make_plan(venv, f"DEMO={demo}", "-W", "uv.lock", target)
