"""`scoreline experiment set|show|canary|stop MODEL`: champion/challenger splits, shadows and canaries
as registry metadata (recorded in the model's history). A server started with --reload-interval
picks a change up without a restart; POST /admin/experiment does the same through a live server."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", help="registry folder (default: $SCORELINE_REGISTRY, else ./registry)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = subparsers.add_parser("experiment", help="route a model's traffic between versions",
                              description=__doc__)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("set", parents=[common], help="start or replace the model's experiment")
    s.add_argument("model_id", metavar="MODEL")
    s.add_argument("--name", required=True, help="the experiment's name (salts the split: a new "
                                                  "name reshuffles who sees which variant)")
    s.add_argument("--champion", type=int, help="pin the champion (default: the production version)")
    s.add_argument("--challenger", action="append", default=[], metavar="VERSION:SHARE",
                   help="a version answering SHARE (0..1) of the entities; repeatable")
    s.add_argument("--shadow", action="append", default=[], type=int, metavar="VERSION",
                   help="a version scored on every row, logged, never answered; repeatable")
    s.add_argument("-m", "--message", default="", help="why (kept in the history)")
    s.set_defaults(func=_set)
    sh = sub.add_parser("show", parents=[common], help="the model's experiment")
    sh.add_argument("model_id", metavar="MODEL")
    sh.set_defaults(func=_show)
    c = sub.add_parser("canary", parents=[common],
                       help="raise a canary's share step by step, or roll it back a step")
    c.add_argument("model_id", metavar="MODEL")
    c.add_argument("version", nargs="?", type=int, metavar="VERSION",
                   help="the canary version (default: the current canary)")
    c.add_argument("--share", type=float, help="the canary's new share (0..1)")
    c.add_argument("--rollback", action="store_true", help="back to the previous share")
    c.add_argument("-m", "--message", default="")
    c.set_defaults(func=_canary)
    st = sub.add_parser("stop", parents=[common], help="end the experiment (production answers all)")
    st.add_argument("model_id", metavar="MODEL")
    st.add_argument("-m", "--message", default="")
    st.set_defaults(func=_stop)


def _repo(args):
    from scoreline.commands.registry import registry_root
    from scoreline.registry.repository import Repository

    return Repository(registry_root(args))


def _set(args) -> int:
    from scoreline.errors import SchemaError
    from scoreline.registry.experiments import set_experiment

    challengers = []
    for text in args.challenger:
        version, _, share = text.partition(":")
        try:
            challengers.append({"version": int(version), "share": float(share)})
        except ValueError:
            raise SchemaError(f"--challenger: expected VERSION:SHARE like 2:0.1, got {text!r}",
                              path="--challenger") from None
    spec = {"name": args.name, "challengers": challengers, "shadows": args.shadow}
    if args.champion is not None:
        spec["champion"] = args.champion
    repo = _repo(args)
    set_experiment(repo, args.model_id, spec, args.message)
    return _print(args, repo)


def _show(args) -> int:
    return _print(args, _repo(args))


def _canary(args) -> int:
    from scoreline.errors import SchemaError
    from scoreline.registry.experiments import set_canary

    if args.rollback == (args.share is not None):
        raise SchemaError("give --share or --rollback (one of them)", path="--share")
    repo = _repo(args)
    set_canary(repo, args.model_id, args.version, args.share, rollback=args.rollback,
               message=args.message)
    return _print(args, repo)


def _stop(args) -> int:
    from scoreline.registry.experiments import stop_experiment

    repo = _repo(args)
    stop_experiment(repo, args.model_id, args.message)
    return _print(args, repo)


def _print(args, repo) -> int:
    import msgspec

    from scoreline.commands.registry import print_json, print_table
    from scoreline.registry.experiments import load_experiment

    e = load_experiment(repo, args.model_id)
    if args.json:
        print_json(None if e is None else msgspec.to_builtins(e))
        return 0
    if e is None:
        print(f"{args.model_id}: no experiment (the production version answers every request)")
        return 0
    rows = [(str(r.version if r.version is not None else
                  f"{repo.resolve(args.model_id, None)} (production)"), r.role, f"{r.share:.2%}")
            for r in e.routes()]
    rows += [(str(v), "shadow", "scored on every row, never answered") for v in e.shadows]
    print_table(f"experiment {e.name!r} of {args.model_id}", ["version", "role", "share"], rows)
    return 0
