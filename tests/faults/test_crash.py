"""kill -9 and SIGTERM of a real `scoreline serve` under load, the decision log checked against
every answer the clients got: with --durable-log (or a manifest's `log.durable`) no answered decision
is ever missing, even after kill -9; in the default mode a graceful stop loses nothing and kill -9
loses at most the last fraction of a second (measured, reported, bounded)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time

import httpx
import pytest

from tests.faults.serve import serve
from tests.support.server import KEY, MODEL_ID, N_CUSTOMERS, build_registry

pytestmark = pytest.mark.slow

CLIENTS = 12


def load(url: str, prefix: str, stop: threading.Event) -> tuple[dict[str, float], list]:
    """CLIENTS threads sending /v1/score with request ids until `stop` or the server goes away;
    returns {request id answered 200: when (monotonic)}, filled as answers come, and the threads."""
    answered: dict[str, float] = {}

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            i = 0
            while not stop.is_set():
                rid = f"{prefix}-{c}-{i}"
                i += 1
                try:
                    answer = http.post("/v1/score", json={"model-id": MODEL_ID, KEY: 1000 + i % N_CUSTOMERS,
                                                          "request-id": rid})
                except httpx.TransportError:
                    return  # the server is gone
                if answer.status_code == 200:
                    assert answer.json()["request-id"] == rid
                    answered[rid] = time.monotonic()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    return answered, threads


def logged(url: str, prefix: str) -> set[str]:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            rows = conn.execute("SELECT request_id FROM decisions WHERE request_id LIKE ?", (prefix + "-%",))
            return {r[0] for r in rows}
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT request_id FROM decisions WHERE request_id LIKE $1", (prefix + "-%",))
        return {r[0] for r in cur.fetchall()}


@pytest.fixture
def registry(tmp_path):
    return build_registry(tmp_path / "registry")


def run_and_stop(registry, how: signal.Signals, *args: str, seconds: float = 1.5,
                 log: str | None = None) -> tuple[dict, set, float]:
    log = log or f"sqlite:///{registry['root'].parent / 'decisions.db'}"
    # unique per run: a PostgreSQL log is shared with other runs
    prefix = f"{how.name}-{'durable' if args else 'fast'}-{os.getpid()}-{time.time_ns()}"
    stop = threading.Event()
    with serve(registry["root"], "--log", log, *args) as (process, url):
        answered, threads = load(url, prefix, stop)
        time.sleep(seconds)
        stopped_at = time.monotonic()
        process.send_signal(how)
        process.wait(30)
        stop.set()
        for t in threads:
            t.join(15)
    return answered, logged(log, prefix), stopped_at


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_durable_mode_never_loses_an_answered_decision(registry, how):
    answered, on_record, _ = run_and_stop(registry, how, "--durable-log")
    assert len(answered) > 50
    missing = set(answered) - on_record
    assert not missing, f"{len(missing)} of {len(answered)} answered decisions are not in the log"


def test_durable_mode_with_postgresql(registry, postgres_uri):
    answered, on_record, _ = run_and_stop(registry, signal.SIGKILL, "--durable-log", log=postgres_uri)
    assert len(answered) > 50 and not set(answered) - on_record


def test_default_mode_loses_nothing_on_sigterm_and_little_on_kill_9(registry):
    answered, on_record, _ = run_and_stop(registry, signal.SIGTERM)
    assert answered and not set(answered) - on_record
    answered, on_record, killed_at = run_and_stop(registry, signal.SIGKILL)
    lost = set(answered) - on_record
    oldest = max((killed_at - answered[rid] for rid in lost), default=0.0)
    print(f"default mode, kill -9: {len(lost)} of {len(answered)} answered decisions not in the log, "
          f"answered at most {oldest:.3f} s before the kill")
    # the documented window: decisions answered in the last ~0.2 s (the log's flush_interval, plus
    # the write) before the kill; a second here, where the machine is shared and slow
    assert all(answered[rid] > killed_at - 1.0 for rid in lost)


def test_a_manifest_can_ask_for_durable_logging(registry):
    root = registry["root"]
    for version in (registry["v1"], registry["v2"]):
        path = root / MODEL_ID / str(version) / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["log"] = {"durable": True}
        path.write_text(json.dumps(manifest))
    answered, on_record, _ = run_and_stop(registry, signal.SIGKILL)
    assert len(answered) > 50 and not set(answered) - on_record
