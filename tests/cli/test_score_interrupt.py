"""Ctrl-C and kill -9 on real `scoreline score` processes: a SIGINT at any moment ends the job with
exit 130, "interrupted", and neither output nor temporary file, or (once the files are published)
with exit 0 and the complete result; a job killed outright leaves temporary files that the next
job into the same folder removes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoreline.engine.bulk.writers import clean_stale

ROWS = 120_000
LINEAR = ('{"format": "scoreline-linear", "version": 1, "objective": "binary", "feature_names": ["a", "b"], '
          '"coefficients": [0.5, -0.25], "intercept": 0.1}')


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interrupt-inputs")
    rng = np.random.default_rng(5)
    a = rng.normal(size=ROWS)
    a[::97] = np.nan  # some rows are rejected, so both files are written
    pq.write_table(pa.table({"id": np.arange(ROWS), "a": a, "b": rng.normal(size=ROWS)}), folder / "in.parquet")
    (folder / "model.json").write_text(LINEAR)
    return folder


def start(inputs, out_dir):
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", os.path.join(os.getcwd(), ".cache", "numba"))
    return subprocess.Popen(
        [sys.executable, "-m", "scoreline.cli", "score", str(inputs / "model.json"), str(inputs / "in.parquet"),
         "-o", str(out_dir / "out.parquet"), "--keep", "id", "--batch-size", "4096", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def check_outcome(proc, out_dir) -> str:
    out, err = proc.communicate(timeout=60)
    files = sorted(os.listdir(out_dir))
    assert b"Traceback" not in err, err
    if proc.returncode == 130:
        assert b"interrupted" in err and files == [], (proc.returncode, err, files)
        return "interrupted"
    assert proc.returncode == 0, (proc.returncode, err, files)
    assert files == ["out.parquet", "out.rejects.parquet"], files
    rows = pq.read_table(out_dir / "out.parquet").num_rows + pq.read_table(out_dir / "out.rejects.parquet").num_rows
    assert rows == ROWS and b"scored" in out
    return "finished"


@pytest.mark.slow
def test_ctrl_c_at_random_moments(inputs, tmp_path):
    # How long a whole job takes here, then SIGINTs spread over that span and a little beyond. The
    # first ~0.15 s are the interpreter's own start, before any Scoreline code runs (Python's own
    # handling: a Ctrl-C in its `site` import is a fatal error), so the loop starts after 0.3 s.
    began = time.monotonic()
    full = tmp_path / "full"
    full.mkdir()
    assert check_outcome(start(inputs, full), full) == "finished"
    span = time.monotonic() - began
    rng = random.Random(int(os.environ.get("SCORELINE_INTERRUPT_SEED", "13")))
    outcomes = []
    deadline = time.monotonic() + 12  # bounded: at most this long, at most 10 runs
    for i in range(10):
        if time.monotonic() > deadline:
            break
        out_dir = tmp_path / f"run{i}"
        out_dir.mkdir()
        proc = start(inputs, out_dir)
        time.sleep(rng.uniform(0.3, span + 0.2))
        proc.send_signal(signal.SIGINT)
        if rng.random() < 0.3:  # an impatient user presses twice
            time.sleep(rng.uniform(0, 0.05))
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        outcomes.append(check_outcome(proc, out_dir))
    assert "interrupted" in outcomes, outcomes


@pytest.mark.slow
def test_kill_9_leftovers_are_cleaned_by_the_next_job(inputs, tmp_path):
    proc = start(inputs, tmp_path)
    deadline = time.monotonic() + 120
    while not any(".tmp-" in name for name in os.listdir(tmp_path)):
        assert proc.poll() is None and time.monotonic() < deadline, "the job never started writing"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    left = [name for name in os.listdir(tmp_path) if ".tmp-" in name]
    assert left, "kill -9 left nothing to clean"
    # a temporary file of a live process (this one) is someone's job in progress: kept
    alive = tmp_path / f".other.parquet.tmp-{os.getppid()}-0123abcd"
    alive.write_bytes(b"x")
    os.utime(alive, (time.time() - 60, time.time() - 60))
    second = start(inputs, tmp_path)
    second.communicate(timeout=120)
    assert second.returncode == 0
    assert sorted(os.listdir(tmp_path)) == sorted(["out.parquet", "out.rejects.parquet", alive.name])


def test_clean_stale_spares_new_files_and_foreign_names(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - 60
    names = {
        f".out.parquet.tmp-{dead.pid}-0123abcd": True,       # dead writer, old: removed
        f".out.parquet.tmp-{os.getpid()}-0123abcd": False,   # this process: kept
        ".out.parquet.tmp-x1y2z3": False,                    # not our naming: kept
        "notes.txt": False,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (old, old))
    fresh = tmp_path / f".new.parquet.tmp-{dead.pid}-89abcdef"  # written after the job began: kept
    fresh.write_bytes(b"x")
    removed = {p.name for p in clean_stale(tmp_path, before=time.time() - 30)}
    assert removed == {n for n, gone in names.items() if gone}
    assert fresh.exists()
