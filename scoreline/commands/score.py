"""`scoreline score MODEL INPUT... -o OUTPUT`: bulk scoring of Parquet, Arrow IPC and CSV files,
on this machine (streaming, threaded) or on a Ray or Spark cluster."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported only when a bar is shown
    from rich.progress import TaskID

DESCRIPTION = """\
Score Parquet (a file, a directory or a glob), Arrow IPC (file or stream) or CSV input into one
Parquet or Arrow IPC file. MODEL is a model id in --registry (optionally `id@version` or
`id@alias`), or a LightGBM / linear model file. The output holds the --keep columns and the
model's outputs (the deployment's contract columns; `score` or `score_<class>` for a model file).
Rows that cannot be scored go to the rejects file with the reason; every row read is in one of
the two. Both files appear only when the job finishes.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="score Parquet/Arrow/CSV files in bulk",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="model id (id, id@version, id@alias) or a model file")
    p.add_argument("input", metavar="INPUT", nargs="+", help="Parquet/Arrow/CSV file, directory or glob")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="output file (.parquet or .arrow)")
    p.add_argument(
        "--registry",
        metavar="DIR",
        default=os.environ.get("SCORELINE_REGISTRY"),
        help="model registry folder (default: $SCORELINE_REGISTRY)",
    )
    p.add_argument("--version", dest="model_version", metavar="V", help="version number or alias (default: production, else latest)")
    p.add_argument("--keep", action="append", default=[], metavar="COLS", help="input columns to copy to the output, comma-separated")
    p.add_argument("--rejects", metavar="FILE", help="file for rows that could not be scored (default: OUTPUT's stem + .rejects)")
    p.add_argument("--batch-size", type=int, default=65_536, metavar="N", help="rows per batch (memory scales with it)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="scoring threads (default: all CPUs)")
    p.add_argument("--format", choices=("parquet", "arrow"), help="output format (default: from OUTPUT's extension)")
    p.add_argument("--raw-score", action="store_true", help="model files only: raw margins, not probabilities")
    p.add_argument("--explain", type=int, metavar="K", help="registered models with an explain section: the top K "
                   "reason codes per row as columns reason-<i>-code, -input and -contribution")
    p.add_argument("--engine", choices=("local", "ray", "spark"), default="local", help="where to score")
    p.add_argument("--address", metavar="URL", help="Ray cluster address (ray://host:10001, auto) or Spark master URL")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default=os.environ.get("SCORELINE_DEVICE", "cpu"),
                   help="--engine local, LightGBM model files: score on the GPU (cuda: warns and uses the CPU "
                   "without one; auto: the GPU when one is usable). Default: $SCORELINE_DEVICE or cpu")
    p.add_argument("--drift-json", metavar="PATH", help="--engine local, a registered model: write the run's data "
                   "quality counters and PSI drift per input and of the score (vs the version's reference) as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from scoreline.engine.bulk.writers import interruptible

    # Every Ctrl-C before the files are published: exit 130, no output, no temporary file (the
    # writers stop at the next batch even when a library swallowed the KeyboardInterrupt); once
    # they are published, the result stands and the command ends with 0.
    with interruptible(until_exit=getattr(args, "process", False)):
        result = _score(args)
        if not args.quiet:
            print(result.summary())
        _drift(result, args)
    return 0


def _score(args):
    keep = [name.strip() for item in args.keep for name in item.split(",") if name.strip()]
    inputs = args.input if len(args.input) > 1 else args.input[0]
    model = args.model
    if args.explain:
        from scoreline.engine.bulk.scorers import as_scorer

        model = as_scorer(model, registry=args.registry, version=args.model_version, explain=args.explain)
    common = dict(
        registry=args.registry,
        version=args.model_version,
        keep=keep,
        rejects=args.rejects,
        batch_size=args.batch_size,
        format=args.format,
        raw_score=args.raw_score,
    )
    if args.engine == "ray":
        _require("ray", "ray")
        from scoreline.distributed.ray import score_files as ray_score_files

        return ray_score_files(model, inputs, args.output, address=args.address, **common)
    if args.engine == "spark":
        _require("pyspark", "spark")
        from scoreline.distributed.spark import score_files as spark_score_files

        return spark_score_files(model, inputs, args.output, master=args.address, **common)
    from scoreline.engine.bulk.jobs import score_file

    bar = None if args.quiet else _bar()
    if args.device != "cpu":
        from scoreline.engine.bulk.device import for_bulk  # numba.cuda only when a GPU is asked for

        model = for_bulk(model, args.device)
    return score_file(model, inputs, args.output, threads=args.threads, progress=bar, **common)


def _drift(result, args) -> None:
    """The run's data quality and drift: a short table (unless --quiet) and --drift-json."""
    report = getattr(result, "drift", None)
    if args.drift_json:
        import json

        with open(args.drift_json, "w", encoding="utf-8") as f:
            json.dump(report or [], f, indent=1)
    if report and not args.quiet:
        from scoreline.engine.monitor.runs import summary

        print(summary(report))


def _require(module: str, extra: str) -> None:
    import importlib.util

    from scoreline.errors import NotReadyError

    if importlib.util.find_spec(module) is None:
        raise NotReadyError(f"--engine {extra} needs {module}: pip install 'scoreline[{extra}]'", path="--engine")


def _bar():
    """A rich progress bar on stderr when it is a terminal; None (no bar) otherwise."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        return None
    return _RichProgress(console)


class _RichProgress:
    """Rows done, rows per second and time left (when the files say how many rows they hold)."""

    def __init__(self, console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TimeElapsedColumn
        from rich.progress import TimeRemainingColumn
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task):
                speed = task.finished_speed or task.speed
                return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s", style="progress.data.speed")

        self._progress = Progress(
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task: TaskID | None = None

    def start(self, total_rows: int | None) -> None:
        self._task = self._progress.add_task("score", total=total_rows)
        self._progress.start()

    def advance(self, rows: int) -> None:
        if self._task is not None:  # before start() there is no bar to move
            self._progress.update(self._task, advance=rows)

    def stop(self) -> None:
        self._progress.stop()

