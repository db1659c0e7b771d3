"""`scoreline log tail|stats|drift|compare`: what the decision log recorded, calls per model and
version, the data quality and drift of a model's recent traffic, and how an experiment's variants
compare with the champion."""

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
    d = sub.add_parser("drift", parents=[common],
                       help="data quality and PSI drift of a model's recent traffic")
    d.add_argument("model_id", metavar="MODEL")
    d.add_argument("--last", type=int, default=10_000,
                   help="how many of the latest logged key requests to replay (default: 10000)")
    d.add_argument("--html", metavar="FILE", help="also write the report as a self-contained HTML page")
    d.set_defaults(func=_drift)
    c = sub.add_parser("compare", parents=[common],
                       help="per experiment variant: agreement with the champion, score PSI, latency")
    c.add_argument("model_id", metavar="MODEL")
    c.add_argument("--last", type=int, default=100_000, help="latest rows read (default: 100000)")
    c.add_argument("--experiment", help="only this experiment (default: the latest rows' one)")
    c.set_defaults(func=_compare)


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


def _drift(args) -> int:
    """Replay the model's latest logged key requests through each version that answered them
    (the entity store gives their inputs again) with drift tracking on, and report."""
    import numpy as np
    import pyarrow as pa

    from scoreline.commands.registry import print_json, print_table, registry_root
    from scoreline.engine.monitor import PSI_ALERT, PSI_WARN
    from scoreline.engine.monitor.report import drift_html
    from scoreline.engine.pipeline.router import Engine

    with _open(args) as log:
        rows = log.tail(args.last, model_id=args.model_id)
    rows = rows.filter(rows.column("entity_key").is_valid())
    with Engine(registry_root(args), monitor=True) as engine:
        for version in sorted(set(rows.column("model_version").to_pylist())):
            dep = engine.deployment(args.model_id, version)
            keys = rows.filter(np.asarray(rows.column("model_version")) == version).column("entity_key")
            keys = keys.cast(dep.key_type) if dep.key_type != pa.string() else keys
            engine.score_batch(args.model_id, pa.record_batch({dep.key_name: keys.combine_chunks()}),
                               version=version)
        report = engine.drift(args.model_id)
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(drift_html(report, f"Drift of {args.model_id}"))
    if args.json:
        print_json(report)
        return 0
    for v in report:
        table = []
        for c in v["columns"]:
            psi = c["psi"]
            state = "" if psi is None else "MAJOR" if psi > PSI_ALERT else "moderate" if psi > PSI_WARN else "stable"
            table.append((c["name"], c["kind"], _num(psi, 3), state, _opt(c["missing"]),
                          _opt(c["out_of_range"]), _opt(c["unseen"])))
        print_table(f"{args.model_id} v{v['version']}: {v['window_rows']:,} rows in the window, "
                    f"reference {v['reference_rows']:,} rows",
                    ["input", "kind", "PSI", "drift", "missing", "out of range", "unseen"], table)
    if not report:
        print(f"{args.model_id}: no logged key requests to replay")
    return 0


def _compare(args) -> int:
    from scoreline.commands.registry import print_json, print_table

    with _open(args) as log:
        rows = log.tail(args.last, model_id=args.model_id).to_pylist()
    result = compare(rows, args.experiment)
    if args.json:
        print_json(result)
        return 0
    if result is None:
        print(f"{args.model_id}: no experiment rows in the last {args.last} decisions")
        return 0
    table = [(str(v["version"]), v["role"], str(v["rows"]), _pct(v["agreement"]),
              _num(v["score_psi"], 3), _num(v["p50_latency_us"], 1), _num(v["p99_latency_us"], 1))
             for v in result["variants"]]
    print_table(f"experiment {result['experiment']!r} of {args.model_id}",
                ["version", "role", "rows", "agrees with champion", "score PSI", "p50 µs", "p99 µs"],
                table)
    for v in result["variants"]:
        if v["confusion"]:
            labels = v["labels"]
            print_table(f"decisions: champion (rows) x v{v['version']} {v['role']} (columns)",
                        ["champion", *labels],
                        [(a, *(str(v["confusion"][a].get(b, 0)) for b in labels)) for a in labels])
    return 0


def compare(rows: list[dict], experiment: str | None = None) -> dict | None:
    """Per variant (version, role) of one experiment in decision-log rows: rows, decision agreement
    and confusion with the champion on the same requests (shadows, paired by request id), score
    PSI against the champion's scores (bins: the champion's deciles), p50/p99 latency."""
    import numpy as np

    from scoreline.engine.monitor import psi

    rows = [r for r in rows if r.get("experiment")]
    if experiment is None and rows:
        experiment = rows[-1]["experiment"]
    rows = [r for r in rows if r["experiment"] == experiment]
    if not rows:
        return None
    champion = [r for r in rows if r["role"] == "champion"]
    by_request = {r["request_id"]: r for r in champion if r["request_id"] is not None}
    ref = np.array([r["score"] for r in champion if r["score"] is not None], dtype=np.float64)
    edges = np.unique(np.quantile(ref, np.linspace(0.1, 0.9, 9))) if len(ref) else np.array([])

    def shares(x):
        counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1)
        return counts / max(len(x), 1)

    variants = []
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model_version"], r["role"]), []).append(r)
    order = {"champion": 0, "challenger": 1, "canary": 2, "shadow": 3}
    for (version, role), group in sorted(groups.items(), key=lambda g: (order.get(g[0][1], 9), g[0][0])):
        scores = np.array([r["score"] for r in group if r["score"] is not None], dtype=np.float64)
        latency = np.array([r["latency_us"] for r in group if r["latency_us"] is not None])
        agreement, confusion, labels = None, {}, []
        if role == "shadow":
            pairs = [(by_request[r["request_id"]]["decision"], r["decision"]) for r in group
                     if r["request_id"] in by_request and r["decision"] is not None
                     and by_request[r["request_id"]]["decision"] is not None]
            if pairs:
                agreement = sum(a == b for a, b in pairs) / len(pairs)
                labels = sorted({x for pair in pairs for x in pair})
                for a, b in pairs:
                    confusion.setdefault(a, {})
                    confusion[a][b] = confusion[a].get(b, 0) + 1
                for a in labels:
                    confusion.setdefault(a, {})
        elif role == "champion":
            agreement = 1.0
        variants.append({
            "version": version, "role": role, "rows": len(group), "errors": sum(r["error"] is not None for r in group),
            "agreement": agreement, "labels": labels, "confusion": confusion,
            "score_psi": psi(shares(ref), shares(scores)) if len(ref) and len(scores) else None,
            "p50_latency_us": float(np.percentile(latency, 50)) if len(latency) else None,
            "p99_latency_us": float(np.percentile(latency, 99)) if len(latency) else None,
        })
    return {"experiment": experiment, "variants": variants}


def _pct(value) -> str:
    return "" if value is None else f"{value:.1%}"


def _opt(value) -> str:
    return "" if value is None else f"{value:,}"
