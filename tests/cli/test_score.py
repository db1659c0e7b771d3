"""The `scoreline score` command: outputs, the summary, exit codes, a progress bar only on a
terminal, and Ctrl-C leaving no output behind."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from scoreline.cli import main

FEATURES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[lgb.Booster, str]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    booster = lgb.train(dict(objective="binary", num_leaves=7, verbose=-1, num_threads=1),
                        lgb.Dataset(X, y, feature_name=FEATURES), num_boost_round=10)
    path = str(tmp_path_factory.mktemp("cli-model") / "model.txt")
    booster.save_model(path)
    return booster, path


def _write(path, n: int, seed: int = 1) -> np.ndarray:
    X = np.random.default_rng(seed).normal(size=(n, 3))
    pq.write_table(pa.table({"id": np.arange(n), **{f: X[:, j] for j, f in enumerate(FEATURES)}}), path)
    return X


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", os.path.join(os.getcwd(), ".cache", "numba"))
    return env


def test_score_writes_output_and_prints_a_summary(model, tmp_path, capsys):
    booster, path = model
    X = _write(tmp_path / "in.parquet", 1000)
    code = main(["score", path, str(tmp_path / "in.parquet"), "-o", str(tmp_path / "out.arrow"),
                 "--keep", "id", "--batch-size", "128", "--threads", "2"])
    assert code == 0
    out = ipc.open_file(tmp_path / "out.arrow").read_all()
    assert out.schema.names == ["id", "score"]
    np.testing.assert_allclose(out["score"].to_numpy(), booster.predict(X), rtol=0, atol=1e-12)
    captured = capsys.readouterr()
    assert "1,000 rows read from 1 file(s), 1,000 scored, 0 rejected" in captured.out
    assert captured.err == ""  # not a terminal: no progress bar


def test_unusable_input_exits_non_zero_naming_the_columns(model, tmp_path, capsys):
    _, path = model
    pq.write_table(pa.table({"a": [1.0], "c": ["x"]}), tmp_path / "in.parquet")
    code = main(["score", path, str(tmp_path / "in.parquet"), "-o", str(tmp_path / "out.parquet")])
    err = capsys.readouterr().err
    assert code == 1
    assert "'b' is missing" in err and "'c' is string, expected numeric" in err
    assert sorted(os.listdir(tmp_path)) == ["in.parquet"]


def test_unknown_model_and_output_format_are_errors(model, tmp_path, capsys):
    _, path = model
    _write(tmp_path / "in.parquet", 10)
    assert main(["score", "no-such-model", str(tmp_path / "in.parquet"), "-o", str(tmp_path / "o.parquet")]) == 1
    assert "no-such-model" in capsys.readouterr().err
    assert main(["score", path, str(tmp_path / "in.parquet"), "-o", str(tmp_path / "o.txt")]) == 1
    assert "output format" in capsys.readouterr().err
    assert main(["score", path, str(tmp_path / "in.parquet"), "-o", str(tmp_path / "o.txt"), "--format", "arrow",
                 "--rejects", str(tmp_path / "bad.parquet"), "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert ipc.open_file(tmp_path / "o.txt").read_all().num_rows == 10
    assert pq.read_table(tmp_path / "bad.parquet").schema.names == ["source", "row", "reason"]


def test_progress_bar_on_a_terminal(model, tmp_path):
    _, path = model
    _write(tmp_path / "in.parquet", 20_000)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoreline.cli", "score", path, str(tmp_path / "in.parquet"), "-o",
         str(tmp_path / "out.parquet"), "--batch-size", "256"],
        stdout=subprocess.PIPE, stderr=follower, env=_env(),
    )
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(leader)
    assert proc.returncode == 0
    assert b"rows/s" in seen and b"20000" in seen
    assert b"20,000 scored" in out


@pytest.mark.slow
def test_ctrl_c_stops_promptly_and_leaves_no_output(model, tmp_path):
    _, path = model
    _write(tmp_path / "in.parquet", 400_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoreline.cli", "score", path, str(tmp_path / "in.parquet"), "-o",
         str(tmp_path / "out.parquet"), "--batch-size", "16", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
    )
    deadline = time.monotonic() + 240  # a cold Numba cache compiles first
    while not any(name.startswith(".out.parquet.tmp-") for name in os.listdir(tmp_path)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the job never started writing"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    # Uninterrupted, this job runs for many seconds; a hang would raise TimeoutExpired here.
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert b"interrupted" in err
    assert sorted(os.listdir(tmp_path)) == ["in.parquet"]


def test_registered_model_by_id_and_version(tmp_path, capsys):
    from tests.support.server import build_registry, customers

    reg = build_registry(tmp_path / "registry")
    pq.write_table(customers().select(["customer-id"]).slice(0, 25), tmp_path / "keys.parquet")
    code = main(["score", "credit-risk", str(tmp_path / "keys.parquet"), "-o", str(tmp_path / "out.parquet"),
                 "--registry", str(reg["root"]), "--version", str(reg["v2"]), "--keep", "customer-id"])
    assert code == 0, capsys.readouterr().err
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["customer-id", "model-id", "model-version", "score", "application-decision"]
    assert set(out["model-version"].to_pylist()) == {reg["v2"]} and out.num_rows == 25
    assert main(["score", "credit-risk", str(tmp_path / "keys.parquet"), "-o", str(tmp_path / "o.parquet"),
                 "--registry", str(reg["root"]), "--version", "no-such-alias"]) == 1
    assert "no-such-alias" in capsys.readouterr().err


def test_device_cuda_without_a_gpu_warns_and_writes_the_cpu_scores(model, tmp_path, capsys):
    from scoreline.engine.gpu import backend as gpu

    if gpu.cuda_available()[0]:
        pytest.skip("a GPU is present: tests/engine/gpu/test_backend.py compares the device path")
    booster, path = model
    X = _write(tmp_path / "in.parquet", 300)
    with pytest.warns(gpu.GpuUnavailableWarning, match="scoring on the CPU"):
        code = main(["score", path, str(tmp_path / "in.parquet"), "-o", str(tmp_path / "out.parquet"),
                     "--keep", "id", "--device", "cuda", "-q"])
    assert code == 0
    out = pq.read_table(tmp_path / "out.parquet")
    np.testing.assert_allclose(out.column("score").to_numpy(), booster.predict(X, num_threads=1), rtol=1e-12)
