"""The `scoreline` command: one sub-command per module in scoreline/commands/."""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

# Imports happen inside main()'s try, so that a Ctrl-C while they run is answered like any other
# (exit 130, "interrupted"), not with a traceback.

# Each module defines `register(subparsers)`, which adds its parser(s) and sets `func` to a
# callable taking the parsed args and returning an exit code. Modules import heavy libraries
# inside `func`, never at import time, so `scoreline --help` stays instant.
COMMAND_MODULES = ("registry", "experiment", "log", "demo", "serve", "score", "bench")


def build_parser() -> argparse.ArgumentParser:
    import argparse
    import importlib

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
    try:  # from the start: a Ctrl-C while the command modules import is an interruption too
        parser = build_parser()
        args = parser.parse_args(argv)
        args.process = argv is None  # run as the `scoreline` program, not called from Python
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except Exception as exc:
        from scoreline.errors import ScorelineError

        if not isinstance(exc, ScorelineError):
            raise
        where = f" (at {exc.path})" if exc.path else ""
        print(f"scoreline: error: {exc.message}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if argv is None:  # the program's outcome is settled: a second Ctrl-C must not cut it short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("scoreline: interrupted", file=sys.stderr)
        if argv is None:
            # The job cleaned up on its way here; end now rather than in interpreter shutdown,
            # where a reader or scoring thread still inside Arrow or a kernel made the C++ runtime
            # abort the process now and then (exit -6 instead of 130).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130


if __name__ == "__main__":
    sys.exit(main())
