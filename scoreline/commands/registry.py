"""`scoreline registry add|list|show|promote|rollback|history|verify`: the model repository from the shell.

Output is a readable table, or JSON with --json. `add` validates the version end to end
(artifact loads, plan compiles, a sample scores) before it becomes visible, and records its golden
rows and provenance; `verify` scores every version's golden rows again (exit 1 on a difference).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_ROOT = "registry"


def register(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", help="registry folder (default: $SCORELINE_REGISTRY, else ./registry)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = subparsers.add_parser("registry", help="manage model versions, aliases and history",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = sub.add_parser("add", parents=[common], help="register a new version (validated first)")
    a.add_argument("model_id", metavar="MODEL_ID")
    a.add_argument("--manifest", required=True, help="manifest JSON file")
    a.add_argument("--artifact", default=None,
                   help="model file (LightGBM text or scoreline-linear; none for a remote model)")
    a.add_argument("-m", "--message", default="", help="why this version (kept in the history)")
    a.add_argument("--golden", metavar="ROWS", help="golden rows: a JSON list of input objects or a Parquet "
                   "file, scored now and again at every load (default: rows generated from the manifest)")
    a.add_argument("--profile-sample", metavar="PARQUET",
                   help="rows (raw inputs or keys) for the version's reference profile, which drift "
                        "is measured against (default: 5,000 entities drawn from its entity store)")
    a.set_defaults(func=_add)

    sub.add_parser("list", parents=[common], help="models, versions and aliases").set_defaults(func=_list)

    s = sub.add_parser("show", parents=[common], help="one model's versions, aliases and history")
    s.add_argument("model_id", metavar="MODEL_ID")
    s.set_defaults(func=_show)

    pr = sub.add_parser("promote", parents=[common], help="point an alias at a version")
    pr.add_argument("model_id", metavar="MODEL_ID")
    pr.add_argument("version", metavar="VERSION", help="version number (or another alias)")
    pr.add_argument("--alias", default="production", help="alias to move (default: production)")
    pr.add_argument("-m", "--message", default="")
    pr.set_defaults(func=_promote)

    rb = sub.add_parser("rollback", parents=[common],
                        help="point an alias back at the version it pointed at before")
    rb.add_argument("model_id", metavar="MODEL_ID")
    rb.add_argument("--alias", default="production", help="alias to move back (default: production)")
    rb.add_argument("-m", "--message", default="")
    rb.set_defaults(func=_rollback)

    h = sub.add_parser("history", parents=[common], help="every change to a model, oldest first")
    h.add_argument("model_id", metavar="MODEL_ID")
    h.set_defaults(func=_history)

    v = sub.add_parser("verify", parents=[common], help="score every version's golden rows again (exit 1 "
                       "if any version no longer scores as registered)")
    v.add_argument("model_id", metavar="MODEL_ID", nargs="?", help="one model (default: all)")
    v.set_defaults(func=_verify)


def registry_root(args) -> str:
    """The registry folder: --root, else $SCORELINE_REGISTRY, else ./registry."""
    return args.root or os.environ.get("SCORELINE_REGISTRY") or DEFAULT_ROOT


def _repo(args):
    from scoreline.registry.repository import Repository

    return Repository(registry_root(args))


def _add(args) -> int:
    # The engine's check (load, compile, score a sample); imported here, so `--help` stays instant
    # and registry/ itself never imports the engine.
    # ...and the reference profile of its inputs and score (engine/monitor/reference.py), and
    # the golden rows (engine/pipeline/golden.py)
    from scoreline.engine.monitor import profiling_validator
    from scoreline.engine.pipeline.golden import read_rows

    repo = _repo(args)
    rows = read_rows(args.golden) if args.golden else None
    version = repo.add(args.model_id, args.manifest, args.artifact, args.message,
                       validate=profiling_validator(args.profile_sample, golden_rows=rows))
    if args.json:
        print_json({"model_id": args.model_id, "version": version,
                    "path": str(repo.version_dir(args.model_id, version))})
    else:
        print(f"registered {args.model_id} version {version} "
              f"({repo.version_dir(args.model_id, version)})")
    return 0


def _list(args) -> int:
    models = _repo(args).list()
    if args.json:
        print_json(models)
        return 0
    rows = [(m["model_id"], ", ".join(map(str, m["versions"])) or "-", str(m["latest"] or "-"),
             _aliases(m["aliases"])) for m in models]
    print_table(f"models in {registry_root(args)}", ["model", "versions", "latest", "aliases"], rows)
    return 0


def _show(args) -> int:
    shown = _repo(args).show(args.model_id)
    if args.json:
        print_json(shown)
        return 0
    rows = [(str(v["version"]), ", ".join(v["aliases"]), v["format"], v["artifact"],
             ", ".join(v["inputs"]), v["decision"], v["registered"] or "", v["message"],
             *_provenance(v["provenance"]), _tiers(v["provenance"]))
            for v in shown["versions"]]
    print_table(f"{args.model_id}: aliases {_aliases(shown['aliases'])}",
                ["version", "aliases", "format", "artifact", "inputs", "decision", "registered",
                 "message", "artifact sha256", "registered with", "kernel tier"], rows)
    return 0


def _tiers(record: dict | None) -> str:
    """The kernel tier chosen at registration, by batch size where it differs: "simd (1-7 rows:
    generic)"; --json shows the ns per row of every candidate and why any was left out."""
    tiers = (record or {}).get("tiers")
    if not tiers:
        return "-"
    by_rows = sorted((int(rows), tier) for rows, tier in tiers["by_batch_rows"].items())
    big = tiers["tier"]
    small = []
    for i, (rows, tier) in enumerate(by_rows):
        if tier != big:
            upto = by_rows[i + 1][0] - 1 if i + 1 < len(by_rows) else None
            small.append(f"{rows}{'-' + str(upto) if upto and upto != rows else ('+' if upto is None else '')} "
                         f"rows: {tier}")
    return f"{big} ({', '.join(small)})" if small else big


def _provenance(record: dict | None) -> tuple[str, str]:
    """(the artifact's sha256, the environment in short) for the table; --json shows it all."""
    if record is None:
        return "-", "- (registered before provenance was kept)"
    env = record["environment"]
    names = ("python", "numpy", "numba", "llvmlite", "pyarrow", "lightgbm", "scoreline", "cpu")
    return record["artifact-sha256"], ", ".join(f"{n} {env[n]}" for n in names if n in env)


def _verify(args) -> int:
    from scoreline.engine.pipeline.deployment import Deployment
    from scoreline.engine.pipeline.golden import environment_fingerprint
    from scoreline.errors import ScorelineError
    from scoreline.registry.provenance import environment_changes

    repo = _repo(args)
    results = []
    for model_id in [args.model_id] if args.model_id else repo.model_ids():
        for version in repo.versions(model_id):
            result = {"model_id": model_id, "version": version}
            try:
                # the golden rows are inline inputs: the entity store is not needed (store=False)
                dep = Deployment(repo.load_manifest(model_id, version), repo.version_dir(model_id, version),
                                 version=version, store=False)
            except ScorelineError as exc:
                result.update(result="failed", detail=exc.message)
            else:
                if dep.manifest.model.format == "remote":
                    # its answers come from the remote: nothing of ours to re-score (pipeline/golden.py)
                    result.update(result="remote", detail="a remote model: no golden rows are kept")
                    results.append(result)
                    continue
                record = dep.provenance
                rows = (record or {}).get("golden-rows")
                changes = environment_changes(record["environment"], environment_fingerprint()) if record else []
                result.update(
                    result="ok" if rows is not None else "unverified",
                    detail=f"{rows} golden rows score as registered" if rows is not None
                    else "registered before golden rows were kept",
                    environment_changes=changes)
            results.append(result)
    if args.json:
        print_json(results)
    else:
        print_table(f"golden rows in {registry_root(args)}", ["model", "version", "result", "detail"],
                    [(r["model_id"], str(r["version"]), r["result"],
                      "; ".join([r["detail"], *(f"environment: {c}" for c in r.get("environment_changes", []))]))
                     for r in results])
    return 1 if any(r["result"] == "failed" for r in results) else 0


def _promote(args) -> int:
    # the same check as `add` and as the server's /admin/promote (which compiles before moving)
    from scoreline.engine.pipeline.deployment import validate_version

    repo = _repo(args)
    before = repo.aliases(args.model_id).get(args.alias)
    version = repo.promote(args.model_id, args.version, alias=args.alias, message=args.message,
                           validate=validate_version)
    _moved(args, before, version, "promoted")
    return 0


def _rollback(args) -> int:
    repo = _repo(args)
    before = repo.aliases(args.model_id).get(args.alias)
    version = repo.rollback(args.model_id, alias=args.alias, message=args.message)
    _moved(args, before, version, "rolled back")
    return 0


def _history(args) -> int:
    entries = _repo(args).history(args.model_id)
    if args.json:
        print_json(entries)
        return 0
    rows = [(e["time"], e["action"], _opt(e.get("version")), e.get("alias") or "",
             _opt(e.get("previous")), e.get("who", ""),
             " ".join(filter(None, [e.get("message", ""),
                                    f"[{e['reason']}]" if e.get("reason") else ""])))
            for e in entries]
    print_table(f"history of {args.model_id}",
                ["time (UTC)", "action", "version", "alias", "previous", "who", "message"], rows)
    return 0


def _moved(args, before, version, verb: str) -> None:
    if args.json:
        print_json({"model_id": args.model_id, "alias": args.alias, "version": version,
                    "previous": before})
    else:
        print(f"{verb} {args.model_id} {args.alias}: {_opt(before) or 'unset'} -> {version}")


def _aliases(aliases: dict) -> str:
    return ", ".join(f"{a}={v}" for a, v in sorted(aliases.items())) or "-"


def _opt(value) -> str:
    return "" if value is None else str(value)


def print_table(title: str, columns: list[str], rows: list[tuple]) -> None:
    """A rich table on stdout (plain text when stdout is not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    # Not a terminal: a wide console, so tables piped to a file or a test are not cut at 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)


def print_json(data) -> None:
    """JSON on stdout; datetimes as ISO 8601."""
    print(json.dumps(data, indent=2, default=_json_default))


def _json_default(value):
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
