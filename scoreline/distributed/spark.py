"""Scoring on Spark: `score_dataframe(df, model)` maps a DataFrame through a scorer with
`DataFrame.mapInArrow` (the same iterator-of-RecordBatches contract as `score_batches`), and
`score_files` is the `scoreline score --engine spark` driver.

What travels to the executors is the scorer's pickle, broadcast once: a bare model's packed arrays
and metadata, or a deployment's manifest and artifact bytes; each Python worker unpickles it once
and compiles its kernels or loads them from Numba's cache (set NUMBA_CACHE_DIR on the executors;
see docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from scoreline.engine.bulk import jobs as bulk
from scoreline.engine.bulk import sources as _sources
from scoreline.errors import InputError

__all__ = ["score_dataframe", "score_files"]

_SOURCE = "__scoreline_source"  # the file a row came from, while the job runs


def score_dataframe(
    df,
    model,
    *,
    keep: Sequence[str] = (),
    raw_score: bool = False,
    registry=None,
    version: int | str | None = None,
    text_columns: Sequence[str] = (),
):
    """Score a Spark DataFrame lazily: returns a DataFrame of the ``keep`` columns, the model's
    output columns and ``error`` (null for a scored row), one row per input row.

    ``model`` is resolved on the driver (as for ``scoreline.score_file``) and broadcast;
    ``text_columns`` are string columns holding numbers, parsed per row (a bad value sets
    ``error``). Column names are matched exactly, hyphens included.
    """
    from pyspark.sql.types import StringType, StructField, StructType

    scorer = bulk.as_scorer(model, raw_score=raw_score, registry=registry, version=version)
    keep = tuple(keep)
    missing = [name for name in keep if name not in df.columns]
    if missing:
        raise InputError(f"column {missing[0]!r} (kept) is missing", path=f"column {missing[0]!r}")
    fields = [df.schema[name] for name in keep]
    fields += [StructField(f.name, _spark_type(f.type), True) for f in scorer.output_schema if f.name not in keep]
    fields.append(StructField("error", StringType(), True))
    shared = df.sparkSession.sparkContext.broadcast(scorer)
    text = tuple(text_columns)
    needed = scorer.columns_to_read()
    columns = [c for c in df.columns if needed is None or c in needed or c in keep]

    def score(batches):
        # Runs on the executors: the broadcast value is unpickled once per Python worker.
        local = shared.value
        for batch in batches:
            if batch.num_rows:
                yield bulk.score_batch(local, batch, keep, text)

    with _pandas_3_tolerated():
        return df.select(*[df[c] for c in columns]).mapInArrow(score, StructType(fields))


@contextlib.contextmanager
def _pandas_3_tolerated():
    # PySpark 4.3 warns on every Arrow call under pandas 3 ("does not yet fully support"). Its
    # Arrow path (mapInArrow, toArrow) does not use pandas to move data: the warning is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        yield


def _spark_type(kind: pa.DataType):
    from pyspark.sql.pandas.types import from_arrow_type

    return from_arrow_type(kind)


def score_files(
    model,
    input,
    output,
    *,
    master: str | None = None,
    registry=None,
    version: int | str | None = None,
    keep: Sequence[str] = (),
    rejects=None,
    batch_size: int = bulk.DEFAULT_BATCH_SIZE,
    format: str | None = None,
    raw_score: bool = False,
    progress=None,
) -> bulk.BulkResult:
    """``score_file`` with the scoring on Spark: executors read and score the Parquet or CSV files
    and write their results to a temporary folder beside ``output``; this process then streams
    them into one output and one rejects file (atomically) and removes the folder.

    ``master``: the Spark master URL (``local[4]``, ``yarn``, ``k8s://...``); None uses the active
    session, or ``local[*]``. Rejects carry their file; their ``row`` is null.
    """
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    started = time.perf_counter()
    job = bulk.plan_job(model, input, output, registry=registry, version=version, keep=keep, rejects=rejects,
                        format=format, raw_score=raw_score)
    kinds = {src.format for src in job.sources}
    if not kinds <= {"parquet", "csv"} or len(kinds) != 1:
        raise InputError(
            f"--engine spark reads Parquet or CSV files (one kind per job), got {', '.join(sorted(kinds))}",
            path="input",
        )
    spark = SparkSession.getActiveSession()
    if spark is None or master is not None:
        builder = SparkSession.builder.appName("scoreline score")
        spark = builder.master(master or "local[*]").getOrCreate()
    # Arrow batches of the job's size travel between the JVM and the Python workers.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    paths = [os.path.abspath(src.path) for src in job.sources]
    text: tuple[str, ...] = ()
    if "parquet" in kinds:
        df = spark.read.parquet(*paths)
    else:
        from pyspark.sql.pandas.types import from_arrow_schema

        # The schema our own reader sees (numbers as text, parsed per row), not Spark's inference.
        src = job.sources[0]
        text = tuple(src.column_types or ())
        df = spark.read.csv(paths, header=True, schema=from_arrow_schema(src.schema), nullValue="", nanValue="NaN")
    df = df.withColumn(_SOURCE, F.regexp_replace(F.input_file_name(), "^file://", ""))
    scored = score_dataframe(df, job.scorer, keep=job.keep + (_SOURCE,), text_columns=text)
    folder = Path(tempfile.mkdtemp(prefix=f".{job.output.name}.spark-", dir=job.output.parent))
    try:
        with _pandas_3_tolerated():
            scored.write.mode("overwrite").parquet(str(folder / "scored"))
        with job.sink(progress) as sink:
            for part in _sources.open_sources(folder / "scored"):
                for batch in part.batches(batch_size):
                    source = batch.column(_SOURCE)
                    sink.write(*job.split(batch, source, None))
            sink.commit()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return sink.result(time.perf_counter() - started)
