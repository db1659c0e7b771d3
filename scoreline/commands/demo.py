"""`scoreline demo --root DIR`: build the demo entity store and registry (see engine/demo.py)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Generate customers (date of birth, state, postcode, account balance) into DIR/store as Parquet,
train customer-segmentation v1 and v2 and credit-risk with LightGBM, and register them (each
validated end to end) in DIR/registry with their production aliases, and credit-risk-remote, which
calls credit-risk over the Open Inference Protocol v2 at the demo server's own address. With
--store redis the customers are also loaded into Redis and the models read them from there. Then:

    scoreline serve --registry DIR/registry

An earlier demo in DIR is replaced; any other non-empty DIR is refused. Needs lightgbm
(pip install 'scoreline[test]').
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="build a demo registry and entity store",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", default="demo-data", help="folder to build in (default: demo-data)")
    p.add_argument("--customers", type=int, default=1_000_000,
                   help="customers to generate (default: 1,000,000)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    p.add_argument("--store", choices=("parquet", "redis"), default="parquet",
                   help="where the models read customers: the Parquet file (default) or Redis, "
                        "loaded with them (one hash per customer)")
    p.add_argument("--redis-url", default=None, help="Redis for --store redis "
                   "(default: redis://127.0.0.1:6379/0)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    try:
        import lightgbm  # noqa: F401
    except ImportError:
        print("scoreline: error: the demo trains its models with lightgbm, which is not "
              "installed; install it with: pip install 'scoreline[test]' (or pip install "
              "lightgbm)", file=sys.stderr)
        return 1
    if args.customers < 1:
        print("scoreline: error: --customers must be at least 1", file=sys.stderr)
        return 2
    from scoreline.engine.demo import REDIS_URL, build_demo

    summary = build_demo(args.root, customers=args.customers, seed=args.seed, store=args.store,
                         redis_url=args.redis_url or REDIS_URL)
    key = summary["example-key"]
    print()
    print(f"built in {summary['seconds']:.1f}s:")
    for model_id, versions in summary["models"].items():
        print(f"  {model_id}: versions {', '.join(map(str, versions))}")
    print()
    print("try:")
    print(f"  scoreline serve --registry {summary['registry']}")
    print(f"  curl -s localhost:8000/v1/score -d '{{\"model-id\": \"customer-segmentation\", "
          f"\"customer-id\": {key}}}'")
    return 0
