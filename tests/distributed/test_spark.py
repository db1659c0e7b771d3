"""Spark integration on local[2] (one session per module): score_dataframe over mapInArrow with a
bare model and a registered model, and `scoreline score --engine spark`."""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'scoreline[spark]')")
pytest.importorskip("pandas", reason="pyspark's Arrow path needs pandas (pip install 'scoreline[spark]')")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs Java 17 (no java on PATH and no JAVA_HOME)", allow_module_level=True)

import lightgbm as lgb  # noqa: E402

import scoreline  # noqa: E402
from scoreline.cli import main  # noqa: E402
from scoreline.distributed.spark import score_dataframe  # noqa: E402

pytestmark = [
    pytest.mark.spark,
    pytest.mark.slow,
    # PySpark 4.3 under pandas 3 warns on each Arrow call; the adapter silences it, the tests'
    # own toArrow/createDataFrame calls do here.
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

FEATURES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    # Workers must run this interpreter (its venv has scoreline) and share the kernels' cache.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.getcwd(), ".cache", "numba"))
    session = (
        SparkSession.builder.master("local[2]")
        .appName("scoreline-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    booster = lgb.train(dict(objective="binary", num_leaves=7, verbose=-1, num_threads=1),
                        lgb.Dataset(X, y, feature_name=FEATURES), num_boost_round=10)
    path = str(tmp_path_factory.mktemp("spark-model") / "model.txt")
    booster.save_model(path)
    return booster, path


def _table(n: int, start: int = 0) -> pa.Table:
    X = np.random.default_rng(start).normal(size=(n, 3))
    return pa.table({"id": np.arange(start, start + n), **{f: X[:, j] for j, f in enumerate(FEATURES)}})


def test_score_dataframe_matches_lightgbm(spark, model, tmp_path):
    booster, path = model
    table = _table(2000)
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=500)
    df = spark.read.parquet(str(tmp_path / "in.parquet")).repartition(2)
    out = score_dataframe(df, path, keep=["id"])
    assert out.columns == ["id", "score", "error"]
    result = out.toArrow().sort_by("id")
    assert result["id"].to_pylist() == list(range(2000)) and result["error"].null_count == 2000
    X = np.column_stack([table[f].to_numpy() for f in FEATURES])
    np.testing.assert_allclose(result["score"].to_numpy(), booster.predict(X), rtol=0, atol=1e-12)


def test_registered_model_on_spark_with_hyphenated_columns(spark, tmp_path):
    from tests.support.server import build_registry, customers

    reg = build_registry(tmp_path / "registry")
    people = customers().slice(0, 30)
    keys = pa.table({"customer-id": pa.array(people["customer-id"].to_pylist() + [5], pa.int64())})
    df = spark.createDataFrame(keys.to_pandas())
    result = score_dataframe(df, "credit-risk", registry=reg["root"]).toArrow().sort_by("customer-id")
    expected = pa.Table.from_batches(list(scoreline.score_batches([keys], "credit-risk", registry=reg["root"])))
    expected = expected.sort_by("customer-id")
    assert result.column_names == expected.column_names
    assert result["error"].null_count == 30
    assert result["application-decision"].to_pylist() == expected["application-decision"].to_pylist()
    np.testing.assert_allclose(result["score"].to_numpy(zero_copy_only=False),
                               expected["score"].to_numpy(zero_copy_only=False), equal_nan=True)


def test_cli_engine_spark_csv_to_one_file_with_rejects(spark, model, tmp_path, capsys):
    booster, path = model
    lines = ["id,a,b,c", "1,0.1,0.2,0.3", "2,oops,0.2,0.3", "3,0.5,,NA", "4,1e3,-2,0"]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    code = main(["score", path, str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.parquet"), "--keep", "id",
                 "--engine", "spark"])
    assert code == 0
    assert "4 rows read from 1 file(s), 3 scored, 1 rejected" in capsys.readouterr().out
    out = pq.read_table(tmp_path / "out.parquet").sort_by("id")
    assert out["id"].to_pylist() == [1, 3, 4]
    X = np.array([[0.1, 0.2, 0.3], [0.5, np.nan, np.nan], [1e3, -2, 0]])
    np.testing.assert_allclose(out["score"].to_numpy(), booster.predict(X), rtol=0, atol=1e-12)
    rejects = pq.read_table(tmp_path / "out.rejects.parquet")
    assert rejects["id"].to_pylist() == [2] and rejects["source"][0].as_py().endswith("in.csv")
    assert sorted(os.listdir(tmp_path)) == ["in.csv", "out.parquet", "out.rejects.parquet"]
