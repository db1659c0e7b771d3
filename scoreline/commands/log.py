"""`scoreline log tail|stats`: what the decision log recorded, and calls per model and version."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def register(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log", help="decision log URL (default: $SCORELINE_LOG, else "
                                      "sqlite:///<root>/decisions.db)")
    common.add_argument("--root", help="registry folder (default: $SCORELINE_REGISTRY, else ./registry)")
    common.add_argument("--table", default="decisions", help="decision log table (default: decisions)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = subparsers.add_parser("log", help="read the decision log", description=__doc__)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("tail", parents=[common], help="the latest decisions, oldest first")
    t.add_argument("-n", type=int, default=20, help="how many (default: 20)")
    t.add_argument("--model", help="only this model id")
    t.set_defaults(func=_tail)
    s = sub.add_parser("stats", parents=[common],
                       help="calls, errors and latency per model and version")
    s.add_argument("--since", help="only calls in the last DURATION (30s, 15m, 24h, 7d) or since an "
                                   "ISO 8601 time (UTC unless it has an offset); default: all")
    s.set_defaults(func=_stats)


def log_url(args) -> str:
    """--log, else $SCORELINE_LOG, else the SQLite file in the registry root."""
    from scoreline.commands.registry import registry_root

    if args.log:
        return args.log
    if os.environ.get("SCORELINE_LOG"):
        return os.environ["SCORELINE_LOG"]
    return f"sqlite:///{Path(registry_root(args)).absolute() / 'decisions.db'}"


def _open(args):
    from scoreline.errors import NotFoundError
    from scoreline.registry.decision_log import DecisionLog

    url = log_url(args)
    # Reading must not create an empty database where the user mistyped a path.
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise NotFoundError(f"no decision log at {url[len('sqlite:///'):]!r} (give --log URL or "
                            "--root, or set SCORELINE_LOG)", path="log")
    return DecisionLog(url, table=args.table)


def _tail(args) -> int:
    from scoreline.commands.registry import print_json, print_table

    with _open(args) as log:
        table = log.tail(args.n, model_id=args.model)
    rows = table.to_pylist()
    if args.json:
        print_json(rows)
        return 0
    print_table(
        f"last {len(rows)} decisions" + (f" of {args.model}" if args.model else ""),
        ["time (UTC)", "model", "version", "entity", "score", "decision", "latency µs", "error",
         "request"],
        [(r["ts"].strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], r["model_id"], str(r["model_version"]),
          r["entity_key"] or "", _num(r["score"], 4), r["decision"] or "", _num(r["latency_us"], 1),
          r["error"] or "", r["request_id"] or "") for r in rows],
    )
    return 0


def _stats(args) -> int:
    from scoreline.commands.registry import print_json, print_table

    since = parse_since(args.since) if args.since else None
    with _open(args) as log:
        rows = log.stats(since=since).to_pylist()
    if args.json:
        print_json(rows)
        return 0
    print_table(
        "calls per model and version",
        ["model", "version", "calls", "errors", "mean µs", "p50 µs", "p99 µs", "last call (UTC)"],
        [(r["model_id"], str(r["model_version"]), str(r["calls"]), str(r["errors"]),
          _num(r["mean_latency_us"], 1), _num(r["p50_latency_us"], 1), _num(r["p99_latency_us"], 1),
          r["last_call"].strftime("%Y-%m-%d %H:%M:%S") if r["last_call"] else "") for r in rows],
    )
    return 0


def parse_since(text: str):
    """'15m' -> a timedelta; '2026-11-01T00:00' -> a datetime; else SchemaError."""
    import datetime as dt
    import re

    from scoreline.errors import SchemaError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return dt.timedelta(**{unit: float(m.group(1))})
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise SchemaError(f"--since: expected a duration like 15m, 24h, 7d or an ISO 8601 time, "
                          f"got {text!r}", path="--since") from None


def _num(value, digits: int) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
