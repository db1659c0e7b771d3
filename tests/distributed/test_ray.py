"""Ray Data integration on a local 2-CPU Ray cluster (one per module): score_dataset with a bare
model and a registered model, and `scoreline score --engine ray`."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'scoreline[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'scoreline[ray]')")

import lightgbm as lgb  # noqa: E402

import scoreline  # noqa: E402
from scoreline.cli import main  # noqa: E402
from scoreline.distributed.ray import score_dataset  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

FEATURES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def cluster():
    # Workers inherit the driver's environment: the kernels' cache is shared with the tests.
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.getcwd(), ".cache", "numba"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4))
    y = np.digitize(X[:, 0] - X[:, 3], [-0.4, 0.4])
    booster = lgb.train(dict(objective="multiclass", num_class=3, num_leaves=7, verbose=-1, num_threads=1),
                        lgb.Dataset(X, y, feature_name=FEATURES), num_boost_round=8)
    path = str(tmp_path_factory.mktemp("ray-model") / "model.txt")
    booster.save_model(path)
    return booster, path


def _table(n: int, start: int = 0) -> pa.Table:
    X = np.random.default_rng(start).normal(size=(n, 4))
    return pa.table({"id": np.arange(start, start + n), **{f: X[:, j] for j, f in enumerate(FEATURES)}})


def test_score_dataset_matches_lightgbm(cluster, model):
    booster, path = model
    table = _table(3000)
    ds = ray.data.from_arrow(table).repartition(3)
    out = score_dataset(ds, path, keep=["id"], batch_size=700).to_arrow_refs()
    result = pa.concat_tables(ray.get(out)).sort_by("id")
    assert result.schema.names == ["id", "score_0", "score_1", "score_2", "error"]
    assert result["error"].null_count == 3000
    X = np.column_stack([table[f].to_numpy() for f in FEATURES])
    got = np.column_stack([result[f"score_{k}"].to_numpy() for k in range(3)])
    np.testing.assert_allclose(got, booster.predict(X), rtol=0, atol=1e-12)


def test_registered_model_on_ray_reports_errors_as_a_column(cluster, tmp_path):
    from tests.support.server import build_registry, customers

    reg = build_registry(tmp_path / "registry")
    keys = customers()["customer-id"].to_pylist()[:40] + [7, 8]
    ds = ray.data.from_arrow(pa.table({"customer-id": pa.array(keys, pa.int64())}))
    result = score_dataset(ds, "credit-risk", registry=reg["root"]).to_pandas().sort_values("customer-id")
    expected = scoreline.score_batches([pa.table({"customer-id": pa.array(keys, pa.int64())})], "credit-risk",
                                       registry=reg["root"])
    expected = pa.Table.from_batches(list(expected)).to_pandas().sort_values("customer-id")
    assert result["error"].notna().sum() == 2
    np.testing.assert_allclose(result["score"].to_numpy(), expected["score"].to_numpy(), equal_nan=True)
    assert list(result["application-decision"].fillna("")) == list(expected["application-decision"].fillna(""))


def test_cli_engine_ray_writes_one_output_and_rejects(cluster, model, tmp_path, capsys):
    booster, path = model
    tables = [_table(500, start=0), _table(700, start=1000)]
    for i, t in enumerate(tables):
        pq.write_table(t, tmp_path / f"part-{i}.parquet")
    code = main(["score", path, str(tmp_path / "part-*.parquet"), "-o", str(tmp_path / "out.parquet"),
                 "--keep", "id", "--engine", "ray"])
    assert code == 0
    out = pq.read_table(tmp_path / "out.parquet").sort_by("id")
    assert out["id"].to_pylist() == tables[0]["id"].to_pylist() + tables[1]["id"].to_pylist()
    X = np.vstack([np.column_stack([t[f].to_numpy() for f in FEATURES]) for t in tables])
    np.testing.assert_allclose(out["score_1"].to_numpy(), booster.predict(X)[:, 1], rtol=0, atol=1e-12)
    assert "1,200 rows read from 2 file(s), 1,200 scored, 0 rejected" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "out.rejects.parquet").num_rows == 0


def test_cli_engine_ray_csv_rejects_name_their_file(cluster, model, tmp_path):
    _, path = model
    lines = ["id,a,b,c,d", "1,0.1,0.2,0.3,0.4", "2,zero,0.2,0.3,0.4", "3,0.5,,0.1,0.1"]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    assert main(["score", path, str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.arrow"), "--keep", "id",
                 "--engine", "ray", "-q"]) == 0
    rejects = pa.ipc.open_file(tmp_path / "out.rejects.arrow").read_all()
    assert rejects["id"].to_pylist() == [2]
    assert rejects["source"].to_pylist()[0].endswith("in.csv")
    assert "'zero' is not a number" in rejects["reason"].to_pylist()[0]
    assert pa.ipc.open_file(tmp_path / "out.arrow").read_all()["id"].to_pylist() in ([1, 3], [3, 1])
