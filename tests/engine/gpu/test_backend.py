"""GPU backend: the CUDA kernels give the CPU path's results bit for bit, and no GPU never crashes.

Kernel tests need a device: a real one when present, else Numba's CUDA simulator, which must be
switched on (NUMBA_ENABLE_CUDASIM=1) before numba.cuda is first imported and stays read by the
compiler afterwards. So without a GPU, ``test_kernels_under_the_cuda_simulator`` reruns this file
in a child pytest with the variable set, and the kernel tests run there (small models: the
simulator runs every CUDA thread as a Python thread).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pyarrow as pa
import pytest

import scoreline
from scoreline.engine.bulk.device import for_bulk
from scoreline.engine.gpu import backend as gpu
from scoreline.errors import InputError, NotReadyError

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
AVAILABLE, REASON = gpu.cuda_available()
KERNELS = SIMULATOR or AVAILABLE  # a device to run the kernel tests on, simulated or real
K_ZERO = float(np.float32(1e-35))

needs_device = pytest.mark.skipif(not KERNELS, reason="no CUDA device here; they run in the simulator child")


# --- without a device: detection, fallback, choice ------------------------------------------------

if not SIMULATOR:

    @pytest.mark.slow
    @pytest.mark.skipif(AVAILABLE, reason="a real GPU runs the kernel tests in this process")
    def test_kernels_under_the_cuda_simulator():
        env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
        cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
        assert " passed" in done.stdout and " failed" not in done.stdout

    @pytest.mark.skipif(AVAILABLE, reason="a GPU is present")
    def test_no_gpu_warns_once_and_scores_on_the_cpu(tiny_model, monkeypatch):
        model, X = tiny_model
        monkeypatch.setattr(gpu, "_warned", False)  # whatever warned earlier in this process
        assert isinstance(REASON, str) and REASON
        with pytest.warns(gpu.GpuUnavailableWarning, match="scoring on the CPU"):
            first = gpu.predict_gpu(model, X)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            second = gpu.on_gpu(model).predict(X, raw_score=True)  # warned already: silent now
        np.testing.assert_array_equal(first, model.predict(X))
        np.testing.assert_array_equal(second, model.predict(X, raw_score=True))

    @pytest.mark.skipif(AVAILABLE, reason="a GPU is present")
    def test_predict_with_device_cuda_falls_back_to_the_same_values(tiny_model, monkeypatch):
        model, X = tiny_model
        monkeypatch.setattr(gpu, "_warned", False)
        with pytest.warns(gpu.GpuUnavailableWarning, match="scoring on the CPU"):
            on_cuda = model.predict(X, device="cuda")
        np.testing.assert_array_equal(on_cuda, model.predict(X))
        np.testing.assert_array_equal(model.predict(X, device="auto"), model.predict(X))
        with pytest.raises(InputError, match="expected device"):
            model.predict(X, device="tpu")

    @pytest.mark.skipif(AVAILABLE, reason="a GPU is present")
    def test_no_gpu_without_fallback_raises_with_the_reason(tiny_model):
        model, X = tiny_model
        with pytest.raises(NotReadyError, match="cannot score on the GPU") as info:
            gpu.predict_gpu(model, X, fallback=False)
        assert info.value.path == "device" and REASON in info.value.message
        with pytest.raises(NotReadyError):
            next(gpu.score_batches_gpu(model, [pa.RecordBatch.from_pandas(_frame(model, X))]))

    @pytest.mark.skipif(AVAILABLE, reason="a GPU is present")
    def test_bulk_without_a_gpu_keeps_the_model(tiny_model, tmp_path, monkeypatch):
        model, _ = tiny_model
        monkeypatch.setattr(gpu, "_warned", False)
        assert for_bulk(model, "cpu") is model
        assert for_bulk(model, "auto") is model  # silently: auto means "if there is one"
        with pytest.warns(gpu.GpuUnavailableWarning, match="scoring on the CPU"):
            assert for_bulk(model, "cuda") is model

    def test_missing_numba_cuda_is_reported_not_raised():
        # A fresh interpreter in which importing numba.cuda fails, as without the gpu extra.
        code = (
            "import sys; sys.modules['numba.cuda'] = None\n"
            "from scoreline.engine.gpu import backend as gpu\n"
            "ok, why = gpu.cuda_available()\n"
            "assert not ok and 'scoreline[gpu]' in why, why\n"
            "assert gpu.choose_device('auto', 10**9) == 'cpu'\n"
            "print('fine')\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "fine" in done.stdout, done.stderr[-3000:]


    def test_importing_the_gpu_module_does_not_import_numba_cuda():
        code = "import sys; import scoreline.engine.gpu.backend; print('numba.cuda' in sys.modules)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "False", done.stderr[-3000:]


def test_choose_device(monkeypatch):
    monkeypatch.delenv("SCORELINE_DEVICE", raising=False)
    assert gpu.choose_device("cpu", 10**9) == "cpu"
    assert gpu.choose_device("cuda", 1) == "cuda"
    assert gpu.choose_device(None, 10**9) == "cpu"
    assert gpu.choose_device("auto", gpu.GPU_MIN_ROWS - 1) == "cpu"
    assert gpu.choose_device("auto", gpu.GPU_MIN_ROWS) == ("cuda" if AVAILABLE else "cpu")
    monkeypatch.setenv("SCORELINE_DEVICE", "CUDA")
    assert gpu.choose_device(None, 1) == "cuda"
    with pytest.raises(InputError, match="expected device"):
        gpu.choose_device("tpu", 1)


def test_gpu_model_keeps_the_model_interface_and_pickles(tiny_model):
    model, X = tiny_model
    wrapped = gpu.on_gpu(model)
    assert gpu.on_gpu(wrapped) is wrapped
    assert (wrapped.kind, wrapped.feature_names, wrapped.num_class) == ("lightgbm", model.feature_names, 1)
    again = pickle.loads(pickle.dumps(wrapped))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gpu.GpuUnavailableWarning)
        np.testing.assert_array_equal(again.predict_matrix(X), model.predict(X))
    np.testing.assert_array_equal(again.predict(X, pred_leaf=True), model.predict(X, pred_leaf=True))
    with pytest.raises(InputError, match="LightGBM model"):
        gpu.on_gpu(object())


# --- models and rows ----------------------------------------------------------------------------

lgb = pytest.importorskip("lightgbm")


def _train(objective="binary", rounds=6, n=240, width=5, seed=0, **params):
    """A small fresh model and rows with NaN, +-inf, exact zeros, the zero band and categories."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, width))
    X[:, 1] = rng.integers(0, 40, n)  # categorical, 40 categories: a two-word bitset
    X[:, 2] = np.round(X[:, 2], 1)  # exact zeros
    X[rng.random(X.shape) < 0.08] = np.nan
    signal = np.nan_to_num(X[:, 0]) + (np.nan_to_num(X[:, 1]) % 3 == 0) + 0.5 * np.nan_to_num(X[:, 2])
    if objective in ("multiclass", "multiclassova"):
        y = np.digitize(signal, [0.0, 1.0]).astype(float)
        params.setdefault("num_class", 3)
    elif objective in ("regression", "poisson"):
        y = np.exp(signal / 3) if objective == "poisson" else signal + rng.normal(scale=0.1, size=n)
    else:
        y = (signal > 0.5).astype(float)
    full = {"objective": objective, "num_leaves": 7, "min_data_in_leaf": 5, "min_data_per_group": 5,
            "cat_smooth": 1, "verbose": -1, "num_threads": 1, "seed": seed, **params}
    booster = lgb.train(full, lgb.Dataset(X, y, categorical_feature=[1]), rounds)
    model = scoreline.load_lightgbm(booster.model_to_string())
    return model, booster, _probe_rows(model, X[:48])


def _probe_rows(model, X):
    """X plus rows that sit exactly on thresholds and on LightGBM's special values."""
    extra = np.tile(X[:1], (16, 1))
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, K_ZERO, -K_ZERO, K_ZERO / 2, 1e-300, -1e-300, 2.0**31,
                33.0, 33.7, -0.5, 1e300, -1e300]
    for j in range(X.shape[1]):
        extra[:, j] = specials[j:] + specials[:j]
    packed = model.packed
    words = packed.nodes.view(np.int64)[:, 1]
    split = np.isfinite(packed.nodes[:, 0]) & ((words >> 57) & 1 == 0)  # numeric splits
    features = (words[split] >> 32) & ((1 << 24) - 1)
    on = np.tile(X[1:2], (int(split.sum()), 1))
    on[np.arange(on.shape[0]), features] = packed.nodes[split, 0]
    return np.ascontiguousarray(np.vstack([X, extra, on[:32]]))


def _frame(model, X):
    import pandas as pd

    return pd.DataFrame(X, columns=list(model.feature_names))


@pytest.fixture(scope="module")
def tiny_model():
    model, _, X = _train(rounds=3)
    return model, X


def _same(gpu_out, cpu_out):
    """Bit-for-bit equality, NaN included (a NaN score must be NaN on both)."""
    assert gpu_out.shape == cpu_out.shape and gpu_out.dtype == cpu_out.dtype == np.float64
    diff = np.flatnonzero(~((gpu_out == cpu_out) | (np.isnan(gpu_out) & np.isnan(cpu_out))).reshape(-1))
    assert diff.size == 0, f"{diff.size} values differ, first at flat index {diff[:5]}"


# --- on a device (simulated or real): GPU == CPU bit for bit -------------------------------------


@needs_device
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf - inf in a simulated linear leaf
@pytest.mark.parametrize(
    ("objective", "params"),
    [
        ("binary", {}),
        ("binary", {"zero_as_missing": True}),
        ("binary", {"use_missing": False}),
        ("multiclass", {}),
        ("multiclassova", {"sigmoid": 0.7}),
        ("regression", {"reg_sqrt": True}),
        ("poisson", {}),
        ("regression", {"linear_tree": True, "linear_lambda": 0.1}),
        ("binary", {"boosting": "rf", "bagging_freq": 1, "bagging_fraction": 0.7}),
    ],
    ids=["binary", "zero-missing", "no-missing", "multiclass", "ova", "reg-sqrt", "poisson", "linear", "rf"],
)
def test_gpu_equals_cpu_bit_for_bit(objective, params):
    model, booster, X = _train(objective, **params)
    for raw in (False, True):
        ours = gpu.predict_gpu(model, X, raw_score=raw, fallback=False)
        _same(ours, model.predict(X, raw_score=raw))
        np.testing.assert_allclose(ours, booster.predict(X, raw_score=raw, num_threads=1), rtol=1e-12, atol=1e-300)


@needs_device
def test_layouts_dtypes_and_batches_agree():
    model, _, X = _train("multiclass", seed=3)
    expected = model.predict(X)
    _same(gpu.predict_gpu(model, np.asfortranarray(X), fallback=False), expected)  # feature-major rows
    _same(gpu.predict_gpu(model, X, fallback=False, batch_rows=37, streams=3), expected)  # 3 streams, a tail
    with np.errstate(over="ignore"):
        X32 = X.astype(np.float32)
    _same(gpu.predict_gpu(model, X32, fallback=False), model.predict(X32))  # widened like the CPU path
    ints = np.clip(np.nan_to_num(X), -9, 9).astype(np.int64) * 1_000_003
    _same(gpu.predict_gpu(model, ints, fallback=False), model.predict(ints))  # scored as float32, as LightGBM
    out = np.full((X.shape[0], 3), -1.0)
    assert gpu.predict_gpu(model, X, fallback=False, out=out) is out
    _same(out, expected)
    assert gpu.predict_gpu(model, X[:0], fallback=False).shape == (0, 3)
    with pytest.raises(InputError, match="features"):
        gpu.predict_gpu(model, X[:, :3], fallback=False)


@needs_device
def test_arrow_input_through_pinned_buffers():
    model, _, X = _train("binary", seed=5)
    frame = _frame(model, X)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    expected = model.predict(X)
    _same(gpu.predict_gpu(model, table, fallback=False, batch_rows=50), expected)
    # Nulls are missing values; columns may come in any order and as float32 or integers.
    arrays = {name: pa.array(frame[name], from_pandas=True) for name in reversed(model.feature_names)}
    arrays[model.feature_names[1]] = pa.array(frame[model.feature_names[1]], from_pandas=True).cast(pa.float32())
    batch = pa.RecordBatch.from_pydict(arrays)
    _same(gpu.predict_gpu(model, batch, fallback=False), model.predict(batch))
    chunked = pa.Table.from_batches([table.slice(0, 30).to_batches()[0], table.slice(30).to_batches()[0]])
    _same(gpu.predict_gpu(model, chunked, fallback=False), expected)
    with pytest.raises(InputError, match="f_0|Column_0|missing"):
        gpu.predict_gpu(model, table.drop_columns([model.feature_names[0]]), fallback=False)


@needs_device
def test_score_batches_yields_each_batch_in_order():
    model, _, X = _train("multiclass", seed=7)
    table = pa.Table.from_pandas(_frame(model, X), preserve_index=False)
    batches = [table.slice(0, 50).to_batches()[0], table.slice(50, 0), table.slice(50, 7), table.slice(57)]
    results = list(gpu.score_batches_gpu(model, iter(batches), batch_rows=20, streams=2))
    assert [r.shape[0] for r in results] == [b.num_rows for b in batches]
    _same(np.concatenate(results), model.predict(X))
    raw = list(gpu.score_batches_gpu(model, [table], raw_score=True))
    _same(raw[0], model.predict(X, raw_score=True))


@needs_device
def test_bulk_scoring_through_the_gpu_model(tmp_path):
    # What `scoreline score --device cuda` does: the bulk pipeline's threads call predict_matrix
    # on the GPU model at once, each with its own streams and buffers.
    import pyarrow.parquet as pq

    from scoreline.engine.bulk.jobs import score_file

    model, _, X = _train("multiclass", seed=13)
    pq.write_table(pa.Table.from_pandas(_frame(model, X), preserve_index=False), tmp_path / "rows.parquet")
    on_cpu = score_file(model, tmp_path / "rows.parquet", tmp_path / "cpu.parquet", batch_size=40, threads=3)
    on_gpu = score_file(gpu.on_gpu(model), tmp_path / "rows.parquet", tmp_path / "gpu.parquet", batch_size=40,
                        threads=3)
    assert on_gpu.rows_scored == on_cpu.rows_scored == X.shape[0]
    assert pq.read_table(tmp_path / "gpu.parquet").equals(pq.read_table(tmp_path / "cpu.parquet"))


@needs_device
def test_bulk_device_choice(tmp_path):
    from sklearn.linear_model import LinearRegression

    model, booster, _ = _train("binary", seed=17, rounds=2)
    booster.save_model(tmp_path / "model.txt")
    assert isinstance(for_bulk(str(tmp_path / "model.txt"), "cuda"), gpu.GpuLightGBM)
    assert isinstance(for_bulk(model, "auto"), gpu.GpuLightGBM)
    assert for_bulk(model, "cpu") is model
    with pytest.warns(gpu.GpuUnavailableWarning, match="registered deployments"):
        assert for_bulk("customer-segmentation@3", "cuda") == "customer-segmentation@3"
    linear = scoreline.load_linear(LinearRegression().fit(np.eye(3), [1.0, 2.0, 3.0]))
    with pytest.warns(gpu.GpuUnavailableWarning, match="only LightGBM"):
        assert for_bulk(linear, "cuda") is linear


@needs_device
def test_category_column_maps_through_the_model_categories():
    import pandas as pd

    rng = np.random.default_rng(11)
    frame = pd.DataFrame({"x": rng.normal(size=300), "c": pd.Categorical(rng.choice(list("abcdef"), 300))})
    y = (frame["x"] + frame["c"].isin(["a", "d"]) > 0.4).astype(float)
    booster = lgb.train({"objective": "binary", "num_leaves": 7, "min_data_per_group": 5, "cat_smooth": 1,
                         "verbose": -1, "num_threads": 1}, lgb.Dataset(frame, y), 5)
    model = scoreline.load_lightgbm(booster.model_to_string())
    test = pd.DataFrame({"x": rng.normal(size=40), "c": pd.Categorical(rng.choice(list("abcdefz"), 40))})
    test.loc[3, "x"] = np.nan
    batch = pa.RecordBatch.from_pandas(test, preserve_index=False)  # a dictionary column, 'z' unseen
    _same(gpu.predict_gpu(model, batch, fallback=False), model.predict(batch))
    _same(gpu.predict_gpu(model, test, fallback=False), booster.predict(test, num_threads=1))


@needs_device
def test_every_decision_type_and_categorical_edge():
    # One one-split tree per (missing type, default side, threshold) and per category set, with
    # leaf values 0 and 2^t: the raw sum spells out which side each tree took, bit by bit.
    thresholds = [-1.5, -K_ZERO, -K_ZERO / 2, 0.0, K_ZERO / 2, K_ZERO, 2.5]
    trees = []
    for missing in (0, 1, 2):
        for default_left in (0, 2):
            for threshold in thresholds:
                trees.append(((missing << 2) | default_left, 0, repr(threshold), ""))
    # Sets within 0..63 live in the record (bit 63, category 63, is its sign bit); wider ones apart.
    for words in ("5 1", "0 0 4294967295", "4294967295", "1", "0 2147483648", "1 2147483648 1"):
        count = len(words.split())
        trees.append((1, 1, "0", f"cat_boundaries=0 {count}\ncat_threshold={words}\n"))
    text = _ensemble_text(trees)
    values = [np.nan, -np.inf, np.inf, -1.5, np.nextafter(-1.5, 0), -K_ZERO, np.nextafter(-K_ZERO, -1),
              np.nextafter(-K_ZERO, 1), -K_ZERO / 2, -1e-300, -0.0, 0.0, 1e-300, K_ZERO / 2, K_ZERO,
              np.nextafter(K_ZERO, 1), 2.5, np.nextafter(2.5, 3), 1e300, 1.7e308]
    categories = [np.nan, -np.inf, np.inf, -1.0, -0.99, -0.5, -0.0, 0.7, 2.9, 31.0, 32.0, 33.0, 62.0, 63.0,
                  63.9, 64.0, 95.0, 96.0, 1e9, 2.0**31 - 1, 2.0**31, 1e10]
    X = np.array([[v, c] for v in values for c in categories[:: 7]] + [[0.5, c] for c in categories])
    model = scoreline.load_lightgbm(text)
    ours = gpu.predict_gpu(model, X, fallback=False)
    _same(ours, model.predict(X))
    np.testing.assert_array_equal(ours, lgb.Booster(model_str=text).predict(X, num_threads=1))


@needs_device
def test_linear_leaves_zero_band_nan_and_no_fused_multiply_add():
    # Left leaf: -1 + c * x1 with c = x1 = 1 + 2^-30, whose product rounds away 2^-60 unless an FMA
    # fuses it; right leaf: 0 + 1 * x1, which shows whether x1 in the zero band counted as 0.
    c = 1.0 + 2.0**-30
    linear = (f"is_linear=1\nleaf_const=-1 0\nnum_features=1 1\nleaf_features=1  1  \n"
              f"leaf_coeff={c!r}  1  \n")
    text = _ensemble_text([(2, 0, "0", linear)])
    X = np.array([[side, v] for side in (-1.0, 1.0)
                  for v in (c, K_ZERO / 2, -K_ZERO, np.nextafter(K_ZERO, 1), 1e-36, -1e-40, np.nan, 0.3, np.inf)])
    model = scoreline.load_lightgbm(text)
    ours = gpu.predict_gpu(model, X, fallback=False)
    _same(ours, model.predict(X))
    np.testing.assert_array_equal(ours, lgb.Booster(model_str=text).predict(X, num_threads=1))
    assert ours[0] == 2.0**-29 and ours[9 + 1] == 0.0  # unfused product; the band read as zero


@needs_device
def test_wide_rows_take_the_global_memory_kernel():
    # 200 features do not fit a warp's rows in 48 KB of shared memory: the kernel reads global memory.
    model, _, X = _train("binary", width=200, n=200, rounds=4, seed=2)
    assert model.num_features == 200
    _same(gpu.predict_gpu(model, X, fallback=False), model.predict(X))
    _same(gpu.predict_gpu(model, np.asfortranarray(X), fallback=False, raw_score=True),
          model.predict(X, raw_score=True))


def _ensemble_text(trees) -> str:
    """A LightGBM model text of one-split trees: (decision_type, feature, threshold, extra lines), the
    extra lines holding a categorical split's set or a linear tree's leaves."""
    blocks = []
    for t, (decision, feature, threshold, extra) in enumerate(trees):
        num_cat = 1 if "cat_threshold" in extra else 0
        plain = "" if "is_linear" in extra else "is_linear=0\n"
        blocks.append(
            f"Tree={t}\nnum_leaves=2\nnum_cat={num_cat}\nsplit_feature={feature}\nsplit_gain=1\n"
            f"threshold={threshold}\ndecision_type={decision}\nleft_child=-1\nright_child=-2\n"
            f"leaf_value=0 {2.0 ** t!r}\nleaf_weight=1 1\nleaf_count=1 1\ninternal_value=0\ninternal_weight=0\n"
            f"internal_count=2\n{extra}{plain}shrinkage=1\n\n"
        )
    return (
        "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=1\n"
        "objective=regression\nfeature_names=f0 f1\nfeature_infos=[-10:10] [-10:10]\n\n"
        + "\n".join(blocks)
        + "\nend of trees\n\nparameters:\n[objective: regression]\nend of parameters\n\npandas_categorical:null\n"
    )
