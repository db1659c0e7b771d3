"""Scoring on a Ray cluster: `score_dataset(ds, model)` maps a Ray Data Dataset through a scorer
(Arrow batches, zero-copy), and `score_files` is the `scoreline score --engine ray` driver.

What travels to the workers is the scorer's pickle: a bare model's packed arrays and metadata, or
a deployment's manifest and artifact bytes. It is put in the object store once; each worker
process fetches it once (its arrays come out of the store read-only; the model copies them, a
matter of milliseconds, so the kernels' one specialization serves, and never writes to them), and
compiles its kernels or loads them from Numba's cache (set NUMBA_CACHE_DIR on the workers; see
docs/distributed.md).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

import pyarrow as pa

from scoreline.engine.bulk import jobs as bulk
from scoreline.engine.bulk.sources import CSV_NULL_VALUES
from scoreline.errors import InputError

__all__ = ["score_dataset", "score_files"]

# Scorers fetched from the object store in this worker process, by object id: a worker runs many
# tasks, and fetching (and for a deployment, rebuilding) once per process is enough.
_FETCHED: dict[str, object] = {}
_FETCHED_LOCK = threading.Lock()


class _ScoreBlock:
    """The map_batches function: a pyarrow Table in, keep + outputs + ``error`` out."""

    def __init__(self, scorer_ref, keep: tuple[str, ...], text: tuple[str, ...]) -> None:
        self.scorer_ref = scorer_ref
        self.keep = keep
        self.text = text

    def __call__(self, table: pa.Table) -> pa.Table:
        scorer = _fetch(self.scorer_ref)
        outs = [bulk.score_batch(scorer, b, self.keep, self.text) for b in table.to_batches() if b.num_rows]
        if outs:
            return pa.Table.from_batches(outs)
        # An empty block still has to have the output's columns.
        fields = [table.schema.field(n) for n in self.keep if n in table.schema.names]
        fields += [f for f in scorer.output_schema if f.name not in self.keep] + [pa.field("error", pa.string())]
        return pa.schema(fields).empty_table()


def _fetch(ref):
    import ray

    key = ref.hex()
    with _FETCHED_LOCK:
        scorer = _FETCHED.get(key)
        if scorer is None:
            scorer = _FETCHED[key] = ray.get(ref)
    return scorer


def score_dataset(
    ds,
    model,
    *,
    keep: Sequence[str] = (),
    raw_score: bool = False,
    registry=None,
    version: int | str | None = None,
    batch_size: int | None = None,
    concurrency: int | None = None,
    num_cpus: float = 1,
    text_columns: Sequence[str] = (),
):
    """Score a Ray Data ``Dataset`` lazily: returns a Dataset of the ``keep`` columns, the model's
    output columns and ``error`` (null for a scored row), one row per input row.

    Parameters
    ----------
    ds:
        A ``ray.data.Dataset`` with the model's input columns (feature names for a bare model; the
        key and/or raw inputs for a registered model).
    model:
        As for ``scoreline.score_file``: a Deployment, a loaded model, a model file, or a model id
        with ``registry`` (and ``version``). It is resolved here, on the driver.
    keep:
        Input columns carried to the output (say, an id).
    batch_size:
        Rows per call (default: Ray's block as it comes, no re-batching).
    concurrency, num_cpus:
        Passed to ``map_batches``: the number of parallel tasks and the CPUs each one reserves.
        Scoring runs as tasks, not an actor pool (see docs/distributed.md for why).
    text_columns:
        Columns read as text (CSV) that hold numbers, parsed per row (a bad value rejects its row).
    """
    import ray

    scorer = bulk.as_scorer(model, raw_score=raw_score, registry=registry, version=version)
    fn = _ScoreBlock(ray.put(scorer), tuple(keep), tuple(text_columns))
    options = dict(batch_format="pyarrow", zero_copy_batch=True, batch_size=batch_size, num_cpus=num_cpus)
    if concurrency is not None:
        options["concurrency"] = concurrency
    return ds.map_batches(fn, **options)


def score_files(
    model,
    input,
    output,
    *,
    address: str | None = None,
    registry=None,
    version: int | str | None = None,
    keep: Sequence[str] = (),
    rejects=None,
    batch_size: int = bulk.DEFAULT_BATCH_SIZE,
    format: str | None = None,
    raw_score: bool = False,
    progress=None,
) -> bulk.BulkResult:
    """``score_file`` with the scoring on a Ray cluster: the workers read and score the Parquet or
    CSV files (which they must be able to reach: a shared file system or object store), and this
    process streams the results into one output and one rejects file, written atomically.

    ``address``: the cluster (``auto``, ``ray://head:10001``); None starts a local Ray.
    Rejects carry the file each row came from; their ``row`` is null (Ray does not say it).
    """
    import ray

    started = time.perf_counter()
    job = bulk.plan_job(model, input, output, registry=registry, version=version, keep=keep, rejects=rejects,
                        format=format, raw_score=raw_score)
    kinds = {src.format for src in job.sources}
    if not kinds <= {"parquet", "csv"} or len(kinds) != 1:
        raise InputError(
            f"--engine ray reads Parquet or CSV files (one kind per job), got {', '.join(sorted(kinds))}",
            path="input",
        )
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    paths = [os.path.abspath(src.path) for src in job.sources]
    columns = sorted(set().union(*(job.columns_for(src.schema) or src.schema.names for src in job.sources)))
    text: tuple[str, ...] = ()
    path_column = "path" not in columns and "path" not in job.keep
    if "parquet" in kinds:
        ds = ray.data.read_parquet(paths, include_paths=path_column)
        ds = ds.select_columns(columns + (["path"] if path_column else []))  # pushed down into the read
    else:
        import pyarrow.csv as pacsv

        types = dict(job.sources[0].column_types or {})
        text = tuple(types)
        convert = pacsv.ConvertOptions(column_types=types, include_columns=columns, strings_can_be_null=True,
                                       null_values=CSV_NULL_VALUES)
        ds = ray.data.read_csv(paths, convert_options=convert, include_paths=path_column)
    keep_more = job.keep + (("path",) if path_column else ())
    scored = score_dataset(ds, job.scorer, keep=keep_more, batch_size=batch_size, text_columns=text)
    with job.sink(progress) as sink:
        for table in scored.iter_batches(batch_format="pyarrow", batch_size=None):
            for batch in table.to_batches():
                source = batch.column("path") if path_column else "?"
                sink.write(*job.split(batch, source, None))
        sink.commit()
    return sink.result(time.perf_counter() - started)
