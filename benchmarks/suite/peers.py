"""One adapter per engine (Scoreline and each peer) with the same small interface, for the kernels section.

    engine = make("lleaves", ctx)           # raises Unavailable (with the reason) if not installed
    engine.load(model) -> dict               # cold/warm load or compile seconds
    engine.predict(X, threads) -> ndarray    # Booster.predict's transformed output
    engine.time_calls(X, path, batch, threads, budget_s, calls=None) -> ns per call
    engine.time_bulk(X, path, threads, repeats) -> seconds per call

`X` is the shared C-contiguous float64 matrix; `path` is the .npy it was loaded from, for an
engine that runs in another process (lleaves). Every engine sets its thread count per call or per
predictor, never relies on a library default (LightGBM's default threads oversubscribe 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.suite.timing import calls_for_budget, time_bulk, time_calls

__all__ = ["PEERS", "OURS", "ENGINES", "ADAPTERS", "Unavailable", "Context", "Engine", "make"]

# Scoreline first, then the peers in the order the tables show them.
PEERS = ("lightgbm", "lleaves", "treelite", "onnxruntime")
# Scoreline: "scoreline" is the default path (load_lightgbm(path): the tier chosen per batch size
# by measurement at load); the others pin one tier each (compile="generic", "simd", "bins", "model").
OURS = ("scoreline", "scoreline-generic", "scoreline-simd", "scoreline-bins", "scoreline-model")
ENGINES = OURS + PEERS

REPO = Path(__file__).resolve().parents[2]


class Unavailable(Exception):
    """An engine cannot run here; the message says why and how to install it."""


@dataclass
class Context:
    """Where engines keep compiled artifacts, and how long a cold compile may take."""

    cache: Path  # .cache/ of the repo: compiled peer libraries live under it
    peers_dir: Path = REPO / ".peers"
    # A peer whose compiled library is not cached yet is compiled only when the model has at most
    # this many leaves in total. Measured here: lleaves 9 s for 3.1k leaves, 183 s for 31.5k and
    # 505 s for 25.5k deep ones; TL2cgen 12-130 s for the same models, so it gets a higher limit.
    # scoreline-model (Scoreline's compile="model") gets lleaves' limit: both compile per model.
    compile_leaf_limit: dict = field(default_factory=lambda: {"lleaves": 40_000, "treelite": 300_000,
                                                              "scoreline-model": 40_000})
    # Scoreline's cold/warm load is timed in fresh interpreters (one with an empty Numba cache);
    # off when timing is off, since a cold compile takes seconds and measures nothing then.
    fresh_process_loads: bool = True
    cold_every_model: bool = True  # quick runs time Scoreline's cold start on the first model only


class Engine:
    """Base adapter: subclasses give `_load(model)` and `_make_predictor(threads)`; timing is shared."""

    name = "engine"
    exact = True  # float64 all the way, so it must agree with LightGBM (kernels.EXACT_RTOL)
    version = ""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._predictors: dict[int, object] = {}

    def load(self, model) -> dict:
        """Load (or compile) `model`; returns cold and warm seconds and what they measure."""
        self._predictors = {}
        return self._load(model)

    def predictor(self, threads: int):
        """A callable X -> predictions using `threads` threads (built once per thread count)."""
        if threads not in self._predictors:
            self._predictors[threads] = self._make_predictor(threads)
        return self._predictors[threads]

    def prepare(self, X: np.ndarray) -> np.ndarray:
        """The matrix this engine is timed on (ONNX Runtime gets a float32 copy, made untimed)."""
        return X

    def predict(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        return np.asarray(self.predictor(threads)(self.prepare(X)), dtype=np.float64)

    def time_calls(self, X, path, batch, threads, budget_s, calls=None) -> np.ndarray:
        fn = self.predictor(threads)
        X = self.prepare(X)
        calls = calls or calls_for_budget(fn, X, batch, budget_s)
        return time_calls(fn, X, batch, calls)

    def time_bulk(self, X, path, threads, repeats) -> np.ndarray:
        return time_bulk(self.predictor(threads), self.prepare(X), repeats)

    def close(self) -> None:
        pass


class ScorelineEngine(Engine):
    """Scoreline's default path: ``load_lightgbm(path)``, every tier it can use measured at load.
    A background compile of the per-model tier (models of at most treecode.MAX_AUTO_LEAVES leaves)
    is waited for before timing, so the figures are those of the settled choice."""

    name = "scoreline"
    compile = "auto"  # load_lightgbm's compile option

    def __init__(self, ctx):
        super().__init__(ctx)
        try:
            import scoreline

            scoreline.load_lightgbm  # noqa: B018 (the lazy import raises if the engine is absent)
        except (ImportError, AttributeError) as exc:
            raise Unavailable(f"scoreline.load_lightgbm cannot be imported ({exc})") from exc
        self.version = scoreline.__version__

    def _load(self, model):
        import scoreline

        t0 = time.perf_counter()
        self.model = scoreline.load_lightgbm(model.path, compile=self.compile, cache_dir=self._cache_dir())
        in_process = time.perf_counter() - t0
        settled = self.model.wait_for_tiers(timeout=600)
        chosen = {"tier": self.model.tier, "tiers": self.model.tiers, "settled": settled}
        if not self.ctx.fresh_process_loads:
            return {"cold_s": None, "warm_s": in_process, "what": "load in this process (fresh-process timing off)",
                    **chosen}
        # The kernels' compile does not depend on the model, so a quick run times it once.
        cold = None
        if self.ctx.cold_every_model or not getattr(self, "_cold_timed", False):
            cold = _scoreline_fresh_process(model, fresh_cache=True, compile=self.compile)
            self._cold_timed = True
        warm = _scoreline_fresh_process(model, fresh_cache=False, compile=self.compile,
                                        cache_dir=self._cache_dir())
        return {
            "cold_s": cold["load_s"] + cold["first_call_s"] if cold else None,
            "warm_s": warm["load_s"] + warm["first_call_s"],
            "detail": {"cold": cold, "warm": warm, "reload_in_process_s": in_process},
            "what": "fresh process: imports + load + first call; cold = empty Numba cache (kernels compile)"
                    + ("" if cold else "; cold timed on the first model only"),
            **chosen,
        }

    def _cache_dir(self):
        return None

    def _make_predictor(self, threads):
        predict_matrix = self.model.predict_matrix
        return lambda X: predict_matrix(X, num_threads=threads)


class ScorelineGenericEngine(ScorelineEngine):
    """Scoreline's generic walk pinned (compile="generic")."""

    name = "scoreline-generic"
    compile = "generic"


class ScorelineSimdEngine(ScorelineEngine):
    """Scoreline's branch-free SIMD tier pinned (compile="simd"; models it cannot hold use the walk)."""

    name = "scoreline-simd"
    compile = "simd"


class ScorelineBinsEngine(ScorelineEngine):
    """Scoreline's SIMD tier on 16-bit bins pinned (compile="bins"; categorical models use the walk)."""

    name = "scoreline-bins"
    compile = "bins"


class ScorelineModelEngine(ScorelineEngine):
    """Scoreline's per-model compiled tier (engine/models/treecode.py, compile="model"), for models within
    the run's compile limit, as lleaves (compile="auto" alone stops at treecode.MAX_AUTO_LEAVES);
    cold = an empty Numba cache and an empty compiled-model cache."""

    name = "scoreline-model"
    compile = "model"

    def _load(self, model):
        leaves = int(model.stats["trees"] * model.stats["mean_leaves"])
        limit = self.ctx.compile_leaf_limit.get(self.name)
        if limit is not None and leaves > limit:
            raise Unavailable(f"compiling {leaves:,} leaves per model is over this run's limit of {limit:,} "
                              "(gen-500x63-cat's 31.5k took 79 s here); raise it with --compile-leaf-limit")
        return super()._load(model)

    def _cache_dir(self):
        return self.ctx.cache / "treecode"


_FRESH_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np, scoreline
m = scoreline.load_lightgbm(sys.argv[1], compile=sys.argv[2], cache_dir=sys.argv[3] or None)
t1 = time.perf_counter()
X = np.zeros((1, m.num_features))
m.predict_matrix(X, num_threads=1)
t2 = time.perf_counter()
m.predict_matrix(X, num_threads=1)
t3 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "first_call_s": t2 - t1, "second_call_s": t3 - t2}))
"""


def _scoreline_fresh_process(model, *, fresh_cache: bool, compile: str = "generic", cache_dir=None) -> dict:
    """Load + first call timed in a new interpreter; cold runs with an empty Numba cache dir (and
    an empty compiled-model cache for compile="model")."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="bench-numba-") as tmp:
        if fresh_cache:
            env["NUMBA_CACHE_DIR"] = tmp
            cache_dir = Path(tmp) / "treecode"
        done = subprocess.run(
            [sys.executable, "-c", _FRESH_SCRIPT, str(model.path), compile, str(cache_dir or "")],
            env=env, capture_output=True, text=True, timeout=900,
        )
    if done.returncode != 0:
        raise RuntimeError(f"fresh-process load failed: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class LightGBMEngine(Engine):
    name = "lightgbm"

    def __init__(self, ctx):
        super().__init__(ctx)
        try:
            import lightgbm
        except ImportError as exc:
            raise Unavailable("lightgbm is not installed (pip install -e '.[bench]')") from exc
        self.version = lightgbm.__version__

    def _load(self, model):
        import lightgbm as lgb

        t0 = time.perf_counter()
        lgb.Booster(model_file=str(model.path))
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.booster = lgb.Booster(model_file=str(model.path))
        warm = time.perf_counter() - t0
        return {"cold_s": cold, "warm_s": warm, "what": "Booster(model_file): first and second load in this process"}

    def _make_predictor(self, threads):
        predict = self.booster.predict
        return lambda X: predict(X, num_threads=threads)


class LleavesEngine(Engine):
    """lleaves in .peers/lleaves-venv, as a worker process fed the same .npy rows."""

    name = "lleaves"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.python = ctx.peers_dir / "lleaves-venv" / "bin" / "python"
        if not self.python.exists():
            raise Unavailable(f"{self.python} is missing (run benchmarks/peers/setup.sh lleaves)")
        self.proc = subprocess.Popen(
            [str(self.python), str(REPO / "benchmarks" / "peers" / "lleaves_worker.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self.version = "1.3"

    def _ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the lleaves worker exited")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"lleaves worker: {reply['error']}")
        return reply

    def _load(self, model):
        so = _compiled_path(self.ctx, "lleaves", model, ".so")
        record = so.with_suffix(".json")
        if not so.exists():
            _check_compile_budget(self.ctx, "lleaves", model)
        reply = self._ask(op="load", model=str(model.path), cache=str(so))
        if not reply["from_cache"]:
            record.write_text(json.dumps({"compile_s": reply["seconds"], "when": time.strftime("%Y-%m-%d %H:%M")}))
            warm = self._ask(op="load", model=str(model.path), cache=str(so))["seconds"]
            return {"cold_s": reply["seconds"], "warm_s": warm, "what": "compile (LLVM) vs load from its cache"}
        cold = json.loads(record.read_text()) if record.exists() else {}
        return {
            "cold_s": cold.get("compile_s"), "warm_s": reply["seconds"],
            "what": f"compile measured when the cache was made ({cold.get('when', 'unknown')}) vs load from cache",
        }

    def predict(self, X, threads=1):
        # Agreement rows are few: hand them over through a temporary .npy.
        with tempfile.TemporaryDirectory(dir=self.ctx.cache) as tmp:
            rows, out = Path(tmp) / "rows.npy", Path(tmp) / "pred.npy"
            np.save(rows, np.ascontiguousarray(X, dtype=np.float64))
            self._ask(op="predict", rows=str(rows), n=X.shape[0], out=str(out), threads=threads)
            return np.load(out)

    # Timed rows are the first X.shape[0] rows of the .npy at `path`: the very bytes we score.
    def time_calls(self, X, path, batch, threads, budget_s, calls=None):
        reply = self._ask(op="calls", rows=str(path), n=X.shape[0], batch=batch, threads=threads,
                          budget=budget_s, calls=calls)
        return np.asarray(reply["ns"], dtype=np.int64)

    def time_bulk(self, X, path, threads, repeats):
        reply = self._ask(op="bulk", rows=str(path), n=X.shape[0], threads=threads, repeats=repeats)
        return np.asarray(reply["seconds"])

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


class TreeliteEngine(Engine):
    """Treelite's LightGBM frontend compiled to a shared library by TL2cgen with gcc."""

    name = "treelite"

    def __init__(self, ctx):
        super().__init__(ctx)
        try:
            import tl2cgen
            import treelite
        except ImportError as exc:
            raise Unavailable("treelite/tl2cgen are not installed (benchmarks/peers/setup.sh main)") from exc
        self.version = f"treelite {treelite.__version__}, tl2cgen {tl2cgen.__version__}"

    def _load(self, model):
        import tl2cgen
        import treelite

        so = _compiled_path(self.ctx, "tl2cgen", model, ".so")
        record = so.with_suffix(".json")
        self.libpath = so
        if not so.exists():
            _check_compile_budget(self.ctx, "treelite", model)
            t0 = time.perf_counter()
            tl_model = treelite.frontend.load_lightgbm_model(str(model.path))
            tmp = so.with_name(f"{so.stem}.{os.getpid()}.tmp.so")
            # Many small source files: gcc -O3's time grows faster than linearly with a file's
            # size, and two files of 500 deep trees each did not compile in 27 minutes here.
            tl2cgen.export_lib(tl_model, toolchain="gcc", libpath=str(tmp),
                               params={"parallel_comp": max(2, model.stats["trees"] // 8)}, nthread=os.cpu_count())
            os.replace(tmp, so)
            compile_s = time.perf_counter() - t0
            record.write_text(json.dumps({"compile_s": compile_s, "when": time.strftime("%Y-%m-%d %H:%M")}))
        info = json.loads(record.read_text()) if record.exists() else {}
        t0 = time.perf_counter()
        tl2cgen.Predictor(str(so), nthread=1)
        warm = time.perf_counter() - t0
        return {"cold_s": info.get("compile_s"), "warm_s": warm,
                "what": f"treelite load + export_lib with gcc (measured {info.get('when', '?')}) vs Predictor(.so)"}

    def _make_predictor(self, threads):
        import tl2cgen

        predictor = tl2cgen.Predictor(str(self.libpath), nthread=threads)
        DMatrix = tl2cgen.DMatrix

        def predict(X):
            # The DMatrix wrap is part of every call a user makes, so it is timed too. TL2cgen
            # returns (rows, targets, classes): flatten to Booster.predict's shape.
            out = predictor.predict(DMatrix(X, dtype="float64")).reshape(X.shape[0], -1)
            return out[:, 0] if out.shape[1] == 1 else out

        return predict


class OnnxEngine(Engine):
    """onnxmltools.convert_lightgbm + ONNX Runtime: float32 inputs, thresholds and sums."""

    name = "onnxruntime"
    exact = False  # float32 all the way: its differences are reported, never counted as exact

    def __init__(self, ctx):
        super().__init__(ctx)
        try:
            import onnxmltools  # noqa: F401
            import onnxruntime
        except ImportError as exc:
            raise Unavailable("onnxmltools/onnxruntime are not installed (benchmarks/peers/setup.sh main)") from exc
        self.version = onnxruntime.__version__
        self._f32: tuple[tuple, np.ndarray] | None = None

    def _load(self, model):
        import lightgbm as lgb
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType

        path = _compiled_path(self.ctx, "onnx", model, ".onnx")
        record = path.with_suffix(".json")
        self.path = path
        self.num_class = model.spec.num_class
        if not path.exists():  # converting the 1000-tree model takes half a minute: cached like the others
            t0 = time.perf_counter()
            booster = lgb.Booster(model_file=str(model.path))
            onx = onnxmltools.convert_lightgbm(
                booster, initial_types=[("input", FloatTensorType([None, model.num_features]))], zipmap=False
            )
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.onnx")
            tmp.write_bytes(onx.SerializeToString())
            os.replace(tmp, path)
            self._session(1)
            record.write_text(json.dumps({"convert_s": time.perf_counter() - t0,
                                          "when": time.strftime("%Y-%m-%d %H:%M")}))
        info = json.loads(record.read_text()) if record.exists() else {}
        t0 = time.perf_counter()
        self._session(1)
        warm = time.perf_counter() - t0
        return {"cold_s": info.get("convert_s"), "warm_s": warm,
                "what": f"convert_lightgbm + session (measured {info.get('when', '?')}) vs session from .onnx"}

    def _session(self, threads):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

    def prepare(self, X):
        # Converted once per matrix, untimed: ONNX Runtime gets its best case. Keyed on the data
        # pointer and shape (an id() could be reused by a later array).
        key = (X.__array_interface__["data"][0], X.shape, X.strides)
        if self._f32 is None or self._f32[0] != key:
            self._f32 = (key, np.ascontiguousarray(X, dtype=np.float32))
        return self._f32[1]

    def _make_predictor(self, threads):
        session = self._session(threads)
        outputs = [o.name for o in session.get_outputs()]
        name = session.get_inputs()[0].name
        # Classifiers give (label, probabilities); binary probabilities are (n, 2): keep column 1.
        wanted = [outputs[-1]]
        binary = self.num_class == 1 and len(outputs) == 2

        def predict(X):
            out = session.run(wanted, {name: X})[0]
            if binary:
                return out[:, 1]
            return out.reshape(X.shape[0]) if out.ndim == 2 and out.shape[1] == 1 else out

        return predict


# Engine name -> adapter class; `make` looks names up here.
ADAPTERS = {
    "scoreline": ScorelineEngine,
    "scoreline-generic": ScorelineGenericEngine,
    "scoreline-simd": ScorelineSimdEngine,
    "scoreline-bins": ScorelineBinsEngine,
    "scoreline-model": ScorelineModelEngine,
    "lightgbm": LightGBMEngine,
    "lleaves": LleavesEngine,
    "treelite": TreeliteEngine,
    "onnxruntime": OnnxEngine,
}


def make(name: str, ctx: Context) -> Engine:
    """The adapter for `name`; raises Unavailable saying why it cannot run here."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown engine {name!r}; expected one of {sorted(ADAPTERS)}")
    return ADAPTERS[name](ctx)


def _compiled_path(ctx: Context, kind: str, model, suffix: str) -> Path:
    folder = ctx.cache / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{model.path.stem}{suffix}"  # twins sharing a model file share its builds


def _check_compile_budget(ctx: Context, peer: str, model) -> None:
    leaves = int(model.stats["trees"] * model.stats["mean_leaves"])
    limit = ctx.compile_leaf_limit[peer]
    if leaves > limit:
        raise Unavailable(
            f"{peer} has no cached build of {model.name} and compiling {leaves:,} leaves is over this run's "
            f"limit of {limit:,} (lleaves took 183 s for 31.5k leaves here, 505 s for 25.5k deep ones); "
            f"raise it with --compile-leaf-limit to include it"
        )
