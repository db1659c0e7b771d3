"""The `scoreline` command: one sub-command per module in scoreline/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys

from scoreline.errors import ScorelineError

# Each module defines `register(subparsers)`, which adds its parser(s) and sets `func` to a
# callable taking the parsed args and returning an exit code. Modules import heavy libraries
# inside `func`, never at import time, so `scoreline --help` stays instant.
COMMAND_MODULES = ("registry", "experiment", "log", "demo", "serve", "score", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoreline", description=__doc__)
    parser.add_argument("--version", action="version", version=f"scoreline {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"scoreline.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"scoreline.commands.{name}":
                continue  # a command not built yet
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from scoreline import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ScorelineError as exc:
        where = f" (at {exc.path})" if exc.path else ""
        print(f"scoreline: error: {exc.message}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scoreline: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
