"""`scoreline bench`: run the benchmark suite (benchmarks/suite/) side by side with the peers."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

SECTIONS = ("kernels", "pipeline", "http", "bulk", "scaling")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="run the benchmark suite against the peers (LightGBM, lleaves, Treelite, ONNX Runtime, MLServer)",
        description=(
            "Benchmarks Scoreline side by side with its peers and writes results.json, results.md "
            "(ratios to the best peer) and PNG plots. Peers come from benchmarks/peers/setup.sh; "
            "a peer that is not installed is skipped with a line saying so."
        ),
    )
    p.add_argument("--quick", action="store_true", help="fewer models, rows and rounds: a few minutes on 2 cores")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder (default: bench-results)")
    p.add_argument("--only", type=_sections, default=SECTIONS, metavar="SECTIONS",
                   help=f"comma-separated sections to run, of: {','.join(SECTIONS)} (default: all)")
    p.add_argument("--models", type=_names, default=None, metavar="NAMES",
                   help="comma-separated kernel model names (default: the run's set; see benchmarks/suite/models.py)")
    p.add_argument("--engines", type=_names, default=None, metavar="NAMES",
                   help="comma-separated engines: scoreline (the default path: the tier chosen at load), "
                        "scoreline-generic, scoreline-simd, scoreline-bins, scoreline-model (pinned tiers), lightgbm, lleaves, "
                        "treelite, onnxruntime (default: all)")
    p.add_argument("--compile-leaf-limit", type=int, default=None, metavar="LEAVES",
                   help="compile a peer (lleaves, TL2cgen) not yet cached only for models with at most this many "
                        "leaves in total (default: lleaves 16000 quick / 40000 full, TL2cgen 40000 / 300000); "
                        "their compiled builds are cached under .cache/ and reused whatever the limit; "
                        "scoreline-model (compile='model') keeps lleaves' limit, cached or not")
    p.add_argument("--no-timing", action="store_true",
                   help="run every measurement once on tiny inputs: checks the plumbing, measures nothing")
    p.set_defaults(func=run)


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(SECTIONS)}, got {text!r}")
    return names


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def run(args) -> int:
    _import_suite()
    from benchmarks.suite import models as bench_models
    from benchmarks.suite.peers import ENGINES
    from benchmarks.suite.runner import Config, run as run_suite

    from scoreline.errors import InputError

    overrides = {"only": args.only, "command": _command_line(args)}
    if args.models:
        known = {m.name: m for m in bench_models.KERNEL_MODELS}
        missing = [n for n in args.models if n not in known]
        if missing:
            raise InputError(f"unknown model {missing[0]!r}; expected one of {', '.join(known)}", path="--models")
        overrides["models"] = tuple(known[n] for n in args.models)
    if args.engines:
        bad = [n for n in args.engines if n not in ENGINES]
        if bad or "scoreline" not in args.engines or "lightgbm" not in args.engines:
            raise InputError(f"expected engines among {', '.join(ENGINES)}, including scoreline and lightgbm "
                             f"(the reference); got {','.join(args.engines)}", path="--engines")
        overrides["engines"] = args.engines
    if args.compile_leaf_limit is not None:
        overrides["compile_leaf_limit"] = dict.fromkeys(("lleaves", "treelite", "scoreline-model"), args.compile_leaf_limit)
    cfg = Config.for_run(quick=args.quick, out=args.out, timing=not args.no_timing, **overrides)
    results = run_suite(cfg)
    for line in results["skipped"]:
        print(f"     skipped  {line}")
    for t in results["targets"]:
        verdict = {True: "reached", False: "MISSED", None: "not measured"}[t["reached"]]
        print(f"{verdict:>12}  {t['target']}: {t['figure'] or t.get('why') or '-'}")
    print(f"results: {cfg.out / 'results.md'}")
    return 0


def _command_line(args) -> str:
    """The command that reproduces this run, for the results page."""
    words = ["scoreline", "bench"]
    if args.quick:
        words.append("--quick")
    if tuple(args.only) != SECTIONS:
        words += ["--only", ",".join(args.only)]
    for flag, value in (("--models", args.models), ("--engines", args.engines)):
        if value:
            words += [flag, ",".join(value)]
    if args.compile_leaf_limit is not None:
        words += ["--compile-leaf-limit", str(args.compile_leaf_limit)]
    if args.no_timing:
        words.append("--no-timing")
    words += ["--out", str(args.out)]
    return " ".join(shlex.quote(w) for w in words)


def _import_suite() -> None:
    """The suite lives in the source tree's benchmarks/, next to the package: put the tree on sys.path."""
    from scoreline.errors import NotFoundError

    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "suite" / "runner.py").exists():
        raise NotFoundError(
            "the benchmark suite is not next to this installation; run `scoreline bench` from a source "
            "checkout installed with `pip install -e '.[bench]'`", path=str(root / "benchmarks"))
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
