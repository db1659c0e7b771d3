"""Bulk scoring through the public API: score_file and score_batches on Parquet, Arrow and CSV."""

from __future__ import annotations

import os
import threading
import time

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scoreline
from scoreline.errors import InputError

FEATURES = [f"f{i}" for i in range(5)]


def _train(objective: str, num_class: int = 1, seed: int = 0) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(600, len(FEATURES)))
    if objective == "multiclass":
        y = np.digitize(X[:, 0] + 0.3 * X[:, 1], [-0.5, 0.5])
    else:
        y = (X[:, 0] - X[:, 2] + rng.normal(scale=0.5, size=len(X)) > 0).astype(int)
    params = dict(objective=objective, num_leaves=7, verbose=-1, num_threads=1, min_data_in_leaf=5)
    if num_class > 1:
        params["num_class"] = num_class
    return lgb.train(params, lgb.Dataset(X, y, feature_name=FEATURES), num_boost_round=15)


@pytest.fixture(scope="module")
def booster(tmp_path_factory) -> tuple[lgb.Booster, str]:
    b = _train("binary")
    path = str(tmp_path_factory.mktemp("model") / "binary.txt")
    b.save_model(path)
    return b, path


def _table(n: int, seed: int = 1, start: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES)))
    X[rng.random(size=X.shape) < 0.05] = np.nan
    columns = {name: X[:, j] for j, name in enumerate(FEATURES)}
    return pa.table({"id": np.arange(start, start + n), **columns, "extra": pa.array(["x"] * n)})


def _matrix(table: pa.Table) -> np.ndarray:
    return np.column_stack([table[name].to_numpy() for name in FEATURES])


def _files(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_parquet_scores_match_lightgbm_in_order(booster, tmp_path):
    b, model = booster
    table = _table(5000)
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=1200)
    result = scoreline.score_file(
        model, tmp_path / "in.parquet", tmp_path / "out.parquet", keep=["id"], batch_size=700, threads=2
    )
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.schema.names == ["id", "score"]
    assert out["id"].to_pylist() == list(range(5000))
    np.testing.assert_allclose(out["score"].to_numpy(), b.predict(_matrix(table)), rtol=0, atol=1e-12)
    assert (result.rows_read, result.rows_scored, result.rows_rejected, result.files) == (5000, 5000, 0, 1)
    assert pq.read_table(result.rejects).num_rows == 0
    assert _files(tmp_path) == ["in.parquet", "out.parquet", "out.rejects.parquet"]


def test_directory_and_glob_inputs_score_every_file(booster, tmp_path):
    b, model = booster
    folder = tmp_path / "lake"
    (folder / "part=2").mkdir(parents=True)
    tables = [_table(900, seed=s, start=1000 * s) for s in range(3)]
    pq.write_table(tables[0], folder / "a.parquet")
    pq.write_table(tables[1], folder / "b.parquet")
    pq.write_table(tables[2], folder / "part=2" / "c.parquet")
    (folder / "_SUCCESS").write_text("")
    (folder / ".d.parquet.tmp-1").write_text("unfinished")  # never an input
    expected = {row: p for t in tables for row, p in zip(t["id"].to_pylist(), b.predict(_matrix(t)))}
    for spec in (folder, str(folder / "**" / "*.parquet")):
        out_path = tmp_path / "out.arrow"
        result = scoreline.score_file(model, spec, out_path, keep=["id"], batch_size=256, threads=2)
        out = ipc.open_file(out_path).read_all()
        assert result.files == 3 and result.rows_scored == 2700
        ids = out["id"].to_pylist()
        assert sorted(ids) == sorted(expected)
        for t in tables:  # rows of one file keep their order
            mine = [i for i in ids if i in set(t["id"].to_pylist())]
            assert mine == t["id"].to_pylist()
        np.testing.assert_allclose(out["score"].to_numpy(), [expected[i] for i in ids], rtol=0, atol=1e-12)


def test_arrow_file_and_stream_inputs(booster, tmp_path):
    b, model = booster
    table = _table(3000)
    with ipc.new_file(tmp_path / "in.arrow", table.schema) as w:
        w.write_table(table, max_chunksize=1000)
    with ipc.new_stream(tmp_path / "in.arrows", table.schema) as w:
        w.write_table(table, max_chunksize=1000)
    for name in ("in.arrow", "in.arrows"):
        result = scoreline.score_file(model, tmp_path / name, tmp_path / "out.data", format="parquet", batch_size=400)
        assert result.rows_scored == 3000
        out = pq.read_table(tmp_path / "out.data")
        np.testing.assert_allclose(out["score"].to_numpy(), b.predict(_matrix(table)), rtol=0, atol=1e-12)


def test_multiclass_and_raw_scores(tmp_path):
    b = _train("multiclass", num_class=3)
    b.save_model(tmp_path / "m.txt")
    table = _table(800)
    pq.write_table(table, tmp_path / "in.parquet")
    for raw in (False, True):
        scoreline.score_file(tmp_path / "m.txt", tmp_path / "in.parquet", tmp_path / "o.parquet", raw_score=raw)
        out = pq.read_table(tmp_path / "o.parquet")
        assert out.schema.names == ["score_0", "score_1", "score_2"]
        got = np.column_stack([out[n].to_numpy() for n in out.schema.names])
        np.testing.assert_allclose(got, b.predict(_matrix(table), raw_score=raw), rtol=0, atol=1e-12)


def _csv(path, rows: list[list[str]]) -> None:
    path.write_text("\n".join(",".join(r) for r in [["id", *FEATURES], *rows]) + "\n")


@settings(max_examples=15)
@given(
    bad=st.lists(st.sampled_from(["abc", "1,5", "--", "0x1g"]), min_size=60, max_size=60),
    where=st.sets(st.integers(0, 59), max_size=20),
    column=st.integers(0, len(FEATURES) - 1),
)
def test_every_csv_row_is_scored_or_rejected(booster, tmp_path_factory, bad, where, column):
    b, model = booster
    folder = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(len(where))
    X = rng.normal(size=(60, len(FEATURES)))
    rows = []
    for i in range(60):
        values = [repr(float(v)) for v in X[i]]
        if i in where:
            values[column] = bad[i]
        rows.append([str(i), *values])
    # "1,5" is two fields: quote it so the row keeps its shape.
    _csv(folder / "in.csv", [[f'"{v}"' if "," in v else v for v in r] for r in rows])
    result = scoreline.score_file(model, folder / "in.csv", folder / "out.parquet", keep=["id"], batch_size=16)
    out = pq.read_table(folder / "out.parquet")
    rejects = pq.read_table(folder / "out.rejects.parquet")
    assert result.rows_read == 60 == result.rows_scored + result.rows_rejected
    assert sorted(out["id"].to_pylist() + rejects["id"].to_pylist()) == list(range(60))
    assert set(rejects["id"].to_pylist()) == where
    assert rejects["row"].to_pylist() == rejects["id"].to_pylist()
    for reason in rejects["reason"].to_pylist():
        assert f"column '{FEATURES[column]}'" in reason and "is not a number" in reason
    good = [i for i in range(60) if i not in where]
    np.testing.assert_allclose(out["score"].to_numpy(), b.predict(X[good]), rtol=0, atol=1e-12)


def test_csv_nulls_are_missing_values(booster, tmp_path):
    b, model = booster
    _csv(tmp_path / "in.csv", [["0", "", "NA", "1.5", " 2 ", "nan"]])
    scoreline.score_file(model, tmp_path / "in.csv", tmp_path / "out.parquet")
    expected = b.predict(np.array([[np.nan, np.nan, 1.5, 2.0, np.nan]]))
    np.testing.assert_allclose(pq.read_table(tmp_path / "out.parquet")["score"].to_numpy(), expected, atol=1e-12)


@pytest.mark.parametrize(
    "change, names",
    [
        (lambda t: t.drop_columns(["f1", "f3"]), ["'f1' is missing", "'f3' is missing"]),
        (lambda t: t.set_column(2, "f1", pa.array(["a"] * len(t))), ["'f1' is string, expected numeric"]),
        (lambda t: t.drop_columns(["id"]), ["'id' (kept) is missing"]),
    ],
)
def test_unusable_files_stop_before_any_output(booster, tmp_path, change, names):
    _, model = booster
    pq.write_table(_table(100), tmp_path / "good.parquet")
    pq.write_table(change(_table(100)), tmp_path / "bad.parquet")
    with pytest.raises(InputError) as info:
        scoreline.score_file(model, [tmp_path / "good.parquet", tmp_path / "bad.parquet"], tmp_path / "out.parquet", keep=["id"])
    for name in names:
        assert name in info.value.message
    assert "bad.parquet" in info.value.message and "good.parquet" not in info.value.message
    assert _files(tmp_path) == ["bad.parquet", "good.parquet"]


def test_a_kept_column_may_not_hide_an_output(booster, tmp_path):
    _, model = booster
    pq.write_table(_table(10).append_column("score", pa.array([1.0] * 10)), tmp_path / "in.parquet")
    with pytest.raises(InputError, match="kept column 'score' has the name of one of the model's outputs"):
        scoreline.score_file(model, tmp_path / "in.parquet", tmp_path / "out.parquet", keep=["id", "score"])
    assert _files(tmp_path) == ["in.parquet"]


def test_a_failure_midway_leaves_no_output(booster, tmp_path):
    _, model = booster
    table = _table(4000)
    pq.write_table(table, tmp_path / "a.parquet")
    with ipc.new_stream(tmp_path / "b.arrows", table.schema) as w:
        w.write_table(table, max_chunksize=500)
    data = (tmp_path / "b.arrows").read_bytes()
    (tmp_path / "b.arrows").write_bytes(data[: len(data) // 2])  # a stream cut off halfway
    with pytest.raises(Exception):
        scoreline.score_file(model, [tmp_path / "a.parquet", tmp_path / "b.arrows"], tmp_path / "out.parquet", batch_size=300)
    assert _files(tmp_path) == ["a.parquet", "b.arrows"]


def test_score_batches_keeps_order_and_reports_errors_as_a_column(booster):
    b, model = booster
    loaded = scoreline.load_lightgbm(model)
    table = _table(2000)
    outs = list(scoreline.score_batches(table.to_batches(max_chunksize=128), loaded, keep=["id", "extra"], threads=2))
    assert [o.num_rows for o in outs] == [bt.num_rows for bt in table.to_batches(max_chunksize=128)]
    out = pa.Table.from_batches(outs)
    assert out.schema.names == ["id", "extra", "score", "error"]
    assert out["id"].to_pylist() == list(range(2000)) and out["error"].null_count == 2000
    np.testing.assert_allclose(out["score"].to_numpy(), b.predict(_matrix(table)), rtol=0, atol=1e-12)
    # A Table is taken batch by batch; a batch missing a feature raises InputError naming it.
    assert sum(o.num_rows for o in scoreline.score_batches([table], model)) == 2000
    with pytest.raises(InputError, match="'f4' is missing"):
        list(scoreline.score_batches([table.drop_columns(["f4"])], model))


def test_reading_ahead_is_bounded(booster):
    """Memory depends on the batch size, not the input's length: the reader stays a few batches ahead."""
    _, model = booster
    batch = _table(64).to_batches()[0]
    produced = []

    def endless():
        while True:
            produced.append(1)
            yield batch

    stream = scoreline.score_batches(endless(), model, threads=2)
    next(stream)
    time.sleep(0.5)  # let the reader run as far ahead as it is allowed to
    ahead = len(produced)
    stream.close()
    # the consumed batch + up to 2 x threads in flight + 2 x threads queued + 1 in the reader's hand
    assert ahead <= 1 + 4 + 4 + 1, ahead


def test_threads_left_running_after_close_are_daemons(booster):
    _, model = booster
    stream = scoreline.score_batches(iter(_table(500).to_batches(max_chunksize=50)), model, threads=2)
    next(stream)
    stream.close()
    for thread in threading.enumerate():
        if thread.name.startswith("scoreline-"):
            assert thread.daemon


def test_output_file_mode_is_not_private(booster, tmp_path):
    _, model = booster
    pq.write_table(_table(10), tmp_path / "in.parquet")
    scoreline.score_file(model, tmp_path / "in.parquet", tmp_path / "out.parquet")
    assert os.stat(tmp_path / "out.parquet").st_mode & 0o044


def test_csv_written_by_arrow_round_trips(booster, tmp_path):
    b, model = booster
    table = _table(300)
    pacsv.write_csv(table, tmp_path / "in.csv")
    result = scoreline.score_file(model, tmp_path / "in.csv", tmp_path / "out.arrow", keep=["id"], batch_size=64)
    assert result.rows_rejected == 0
    out = ipc.open_file(tmp_path / "out.arrow").read_all()
    np.testing.assert_allclose(out["score"].to_numpy(), b.predict(_matrix(table)), rtol=0, atol=1e-9)


# --- registered models: the deployment's contract, per-row errors as rejects ---------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from tests.support.server import build_registry

    return build_registry(tmp_path_factory.mktemp("bulk-registry") / "registry")


def _requests(n_known: int = 200) -> pa.Table:
    from tests.support.server import customers

    people = customers().slice(0, n_known)
    keys = people["customer-id"].to_pylist() + [1, 2, 3]  # three unknown customers
    table = pa.table({"customer-id": pa.array(keys, pa.int64()), "batch-tag": pa.array(["t"] * len(keys))})
    return table


def test_registered_model_by_id_scores_through_the_deployment(registry, tmp_path):
    from scoreline.engine.pipeline.deployment import Deployment
    from scoreline.registry.repository import Repository

    table = _requests()
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=64)
    result = scoreline.score_file(
        "credit-risk", tmp_path / "in.parquet", tmp_path / "out.parquet",
        registry=registry["root"], keep=["customer-id"], batch_size=50, threads=2,
    )
    assert (result.rows_read, result.rows_scored, result.rows_rejected) == (203, 200, 3)
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.schema.names == ["customer-id", "model-id", "model-version", "score", "application-decision"]
    assert set(out["model-version"].to_pylist()) == {registry["v1"]}  # production alias
    rejects = pq.read_table(result.rejects)
    assert rejects["customer-id"].to_pylist() == [1, 2, 3]
    assert all("not found" in r for r in rejects["reason"].to_pylist())
    repo = Repository(registry["root"])
    reference = Deployment(repo.load_manifest("credit-risk", registry["v1"]), repo.version_dir("credit-risk", registry["v1"]),
                           version=registry["v1"]).score(table.to_batches()[0])
    ok = pc.is_null(reference.column("error"))
    np.testing.assert_allclose(out["score"].to_numpy(), reference.filter(ok).column("score").to_numpy(), rtol=0, atol=0)
    # id@version picks another version
    scoreline.score_file(f"credit-risk@{registry['v2']}", tmp_path / "in.parquet", tmp_path / "v2.arrow",
                         registry=registry["root"])
    assert set(ipc.open_file(tmp_path / "v2.arrow").read_all()["model-version"].to_pylist()) == {registry["v2"]}


def test_registered_model_from_csv_with_inline_inputs_and_bad_values(registry, tmp_path):
    rows = [
        "customer-id,date-of-birth,state,account-balance",
        "1,1980-02-03,NSW,1200.5",
        "2,1975-12-30,VIC,abc",        # not a number
        "3,1990-01-01,XX,10",          # not an allowed state
        "4,1970-13-01,QLD,10",         # not a date
        "5,1985-05-05,WA,-3",          # below the minimum
        "6,1999-09-09,SA,0",
    ]
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n")
    result = scoreline.score_file("credit-risk", tmp_path / "in.csv", tmp_path / "out.parquet",
                                  registry=registry["root"], keep=["customer-id"])
    out = pq.read_table(tmp_path / "out.parquet")
    rejects = pq.read_table(result.rejects)
    assert out["customer-id"].to_pylist() == [1, 6]
    assert rejects["customer-id"].to_pylist() == [2, 3, 4, 5]
    reasons = rejects["reason"].to_pylist()
    assert "account-balance" in reasons[0] and "'abc'" in reasons[0]
    assert "state" in reasons[1] and "date-of-birth" in reasons[2] and "account-balance" in reasons[3]


def test_registered_model_needs_its_columns_before_writing(registry, tmp_path):
    pq.write_table(pa.table({"who": [1, 2]}), tmp_path / "in.parquet")
    with pytest.raises(InputError, match="customer-id"):
        scoreline.score_file("credit-risk", tmp_path / "in.parquet", tmp_path / "out.parquet", registry=registry["root"])
    assert _files(tmp_path) == ["in.parquet"]


def test_scorers_pickle_to_plain_data_and_score_the_same(registry, booster):
    import pickle

    from scoreline.engine.bulk.jobs import as_scorer

    table = _requests(50)
    dep = as_scorer("credit-risk", registry=registry["root"])
    copy = pickle.loads(pickle.dumps(dep))
    assert copy.deployment is not dep.deployment
    assert copy.deployment.score(table.to_batches()[0]).equals(dep.deployment.score(table.to_batches()[0]))
    assert pickle.loads(pickle.dumps(dep)).deployment is copy.deployment  # rebuilt once per process
    model = as_scorer(booster[1])
    features = _table(100).to_batches()[0]
    assert pickle.loads(pickle.dumps(model)).score(features).equals(model.score(features))


def test_malformed_csv_lines_are_rejects_not_failures(booster, tmp_path):
    b, model = booster
    good = [[str(i), *[repr(0.1 * i + j) for j in range(len(FEATURES))]] for i in range(40)]
    lines = [",".join(["id", *FEATURES])] + [",".join(r) for r in good]
    lines.insert(11, "10,1,2")  # too few fields
    lines.insert(31, "29,1,2,3,4,5,6")  # too many
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    result = scoreline.score_file(model, tmp_path / "in.csv", tmp_path / "out.parquet", keep=["id"], batch_size=8)
    assert (result.rows_read, result.rows_scored, result.rows_rejected) == (42, 40, 2)
    rejects = pq.read_table(result.rejects)
    assert rejects["id"].null_count == 2 and rejects["row"].null_count == 2
    assert sorted(r.split(":")[0] for r in rejects["reason"].to_pylist()) == ["malformed CSV line"] * 2
    assert "expected 6 fields, got 3: '10,1,2'" in " ".join(rejects["reason"].to_pylist())
    out = pq.read_table(tmp_path / "out.parquet")
    assert out["id"].to_pylist() == list(range(40))


def test_linear_model_file(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, len(FEATURES)))
    y = (X[:, 1] - X[:, 4] > 0).astype(int)
    estimator = LogisticRegression().fit(X, y)
    scoreline.load_linear(estimator, feature_names=FEATURES).save(tmp_path / "linear.json")
    table = _table(500)
    pq.write_table(table, tmp_path / "in.parquet")
    result = scoreline.score_file(tmp_path / "linear.json", tmp_path / "in.parquet", tmp_path / "out.parquet")
    assert result.rows_scored == 500
    X = np.nan_to_num(_matrix(table))  # LinearModel's rule for missing values is its own; compare complete rows
    complete = ~np.isnan(_matrix(table)).any(axis=1)
    got = pq.read_table(tmp_path / "out.parquet")["score"].to_numpy()
    np.testing.assert_allclose(got[complete], estimator.predict_proba(X[complete])[:, 1], rtol=1e-9, atol=1e-12)


def test_arrow_memory_stays_flat_as_a_parquet_file_grows(tmp_path):
    """Reading holds a row group or so, not every row group read so far."""
    from scoreline.engine.bulk.sources import open_sources

    table = _table(2000)
    with pq.ParquetWriter(tmp_path / "in.parquet", table.schema) as w:
        for _ in range(40):  # 40 row groups
            w.write_table(table)
    before = pa.total_allocated_bytes()
    held = [pa.total_allocated_bytes() - before for _ in open_sources(tmp_path / "in.parquet")[0].batches(2000)]
    assert len(held) == 40
    # pyarrow's default (pre_buffer=True) ends at ~40 row groups' worth here.
    assert max(held) < 8 * table.nbytes, (max(held), table.nbytes)


def test_registered_model_batches_scored_concurrently(registry, tmp_path):
    """Two scoring threads, batches large enough for the deployment's parallel kernel path."""
    from tests.support.server import customers

    keys = np.resize(customers()["customer-id"].to_numpy(), 6000)
    pq.write_table(pa.table({"customer-id": keys}), tmp_path / "in.parquet")
    result = scoreline.score_file("credit-risk", tmp_path / "in.parquet", tmp_path / "out.parquet",
                                  registry=registry["root"], keep=["customer-id"], batch_size=3000, threads=2)
    assert (result.rows_scored, result.rows_rejected) == (6000, 0)
    out = pq.read_table(tmp_path / "out.parquet")
    single = pa.Table.from_batches(list(scoreline.score_batches([pa.table({"customer-id": keys[:300]})],
                                                                "credit-risk", registry=registry["root"])))
    np.testing.assert_array_equal(out["score"].to_numpy()[:300], single["score"].to_numpy())
    np.testing.assert_array_equal(out["score"].to_numpy()[300:600], single["score"].to_numpy())
