"""A lleaves engine in its own process and venv, driven by JSON lines on stdin (one reply per line).

lleaves 1.3 needs llvmlite 0.44, which our numba cannot share, so the suite starts this script
with .peers/lleaves-venv/bin/python and sends it the same rows (as .npy paths) it gives every
other engine. Requests: {"op": "load", "model": path, "cache": so_path}, {"op": "predict",
"rows": npy, "n": rows, "out": npy, "threads": k}, {"op": "calls", "rows", "n", "batch", "threads",
"budget"}, {"op": "bulk", "rows", "n", "threads", "repeats"}, {"op": "quit"}. Replies carry "ok".
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

# The timing loops are shared with the suite (they import nothing but numpy).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.suite.timing import calls_for_budget, time_bulk, time_calls  # noqa: E402


def main() -> None:
    model = None
    rows: dict[str, np.ndarray] = {}

    def load_rows(req: dict) -> np.ndarray:
        if req["rows"] not in rows:
            rows[req["rows"]] = np.ascontiguousarray(np.load(req["rows"]))
        return rows[req["rows"]][: req["n"]]

    for line in sys.stdin:
        req = json.loads(line)
        try:
            op = req["op"]
            if op == "quit":
                break
            if op == "load":
                import lleaves

                cached = Path(req["cache"]).exists()
                t0 = time.perf_counter()
                model = lleaves.Model(model_file=req["model"])
                model.compile(cache=req["cache"])
                reply = {"seconds": time.perf_counter() - t0, "from_cache": cached,
                         "version": lleaves.__version__ if hasattr(lleaves, "__version__") else "1.3"}
            elif op == "predict":
                pred = model.predict(load_rows(req), n_jobs=req["threads"])
                np.save(req["out"], np.asarray(pred, dtype=np.float64))
                reply = {}
            elif op == "calls":
                X = load_rows(req)
                threads = req["threads"]

                def predict(x):
                    return model.predict(x, n_jobs=threads)

                calls = req.get("calls") or calls_for_budget(predict, X, req["batch"], req["budget"])
                reply = {"ns": time_calls(predict, X, req["batch"], calls).tolist()}
            elif op == "bulk":
                X = load_rows(req)
                threads = req["threads"]
                reply = {"seconds": time_bulk(lambda x: model.predict(x, n_jobs=threads), X, req["repeats"]).tolist()}
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # report, keep serving: the suite decides what a failure means
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        reply["ok"] = "error" not in reply
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
