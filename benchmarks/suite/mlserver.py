"""MLServer with mlserver-lightgbm as an HTTP peer: started from .peers/mlserver-venv on loopback.

    with MLServerPeer(model_path, num_features, batching=True, venv=...) as server:
        server.url, server.body, server.headers    # POST server.body to server.url
        server.pid                                  # for the load generator's CPU accounting

MLServer 1.7.1 runs in its own venv (its worker crashes with uvloop >= 0.22, issue #2286). It
serves in-process (`parallel_workers: 0`, faster than its worker pool on this machine), and
LightGBM inside it gets OMP_NUM_THREADS=1: mlserver-lightgbm calls Booster.predict with the default
thread count, which oversubscribes a 2-core machine that also runs the load generator.
Adaptive batching on means `max_batch_size` 64 and `max_batch_time` 5 ms.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

__all__ = ["MLServerPeer", "free_port", "stop_process_group"]

MODEL_NAME = "bench-model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, first: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Stop a server started in its own process group: ``first``, then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        os.killpg(proc.pid, first)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class MLServerPeer:
    def __init__(self, model_path: Path, rows: np.ndarray, *, batching: bool, venv: Path,
                 max_batch_size: int = 64, max_batch_time_s: float = 0.005) -> None:
        self.mlserver = Path(venv) / "bin" / "mlserver"
        if not self.mlserver.exists():
            raise FileNotFoundError(f"{self.mlserver} is missing (run benchmarks/peers/setup.sh mlserver)")
        self.model_path = Path(model_path)
        self.rows = rows
        self.batching = batching
        self.max_batch_size = max_batch_size
        self.max_batch_time_s = max_batch_time_s
        self.proc: subprocess.Popen | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v2/models/{MODEL_NAME}/infer"
        self.headers = {"content-type": "application/json"}

    @property
    def body(self) -> bytes:
        """One single-row Open Inference Protocol v2 request (first row of the benchmark rows)."""
        row = self.rows[0]
        return json.dumps({"inputs": [{
            "name": "input-0", "shape": [1, row.size], "datatype": "FP64",
            "data": [None if np.isnan(v) else float(v) for v in row],
        }]}).encode()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> "MLServerPeer":
        self.dir = Path(tempfile.mkdtemp(prefix="bench-mlserver-"))
        model_dir = self.dir / MODEL_NAME
        model_dir.mkdir()
        shutil.copyfile(self.model_path, model_dir / "model.bst")
        settings = {"name": MODEL_NAME, "implementation": "mlserver_lightgbm.LightGBMModel",
                    "parameters": {"uri": "./model.bst", "version": "v1"}}
        if self.batching:
            settings["max_batch_size"] = self.max_batch_size
            settings["max_batch_time"] = self.max_batch_time_s
        (model_dir / "model-settings.json").write_text(json.dumps(settings))
        (self.dir / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": self.port, "grpc_port": free_port(),
            "metrics_port": free_port(), "metrics_endpoint": None, "parallel_workers": 0,
            "debug": False,
        }))
        env = dict(os.environ, OMP_NUM_THREADS="1", MLSERVER_LOGGING_LEVEL="WARNING")
        self.log = open(self.dir / "mlserver.log", "w")
        self.proc = subprocess.Popen([str(self.mlserver), "start", str(self.dir)], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(timeout_s=90)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        ready = f"http://127.0.0.1:{self.port}/v2/models/{MODEL_NAME}/ready"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"MLServer exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(ready, timeout=1) as resp:
                    if resp.status == 200:
                        self._check_answer()
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"MLServer was not ready after {timeout_s} s: {self._log_tail()}")

    def _check_answer(self) -> None:
        req = urllib.request.Request(self.url, data=self.body, headers=self.headers, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            self.first_answer = json.loads(resp.read())["outputs"][0]["data"]

    def _log_tail(self) -> str:
        self.log.flush()
        return (self.dir / "mlserver.log").read_text()[-600:]

    def __exit__(self, *exc) -> None:
        if self.proc:
            stop_process_group(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
