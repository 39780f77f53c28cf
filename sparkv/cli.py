"""The `sparkv` command: one sub-command per module in `sparkv.commands`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from sparkv.commands.values import OneLineParser
from sparkv.core.errors import UserError

# Sub-command modules; each defines `register(subparsers) -> None` and sets `func` on its parser.
_COMMANDS = (
    "simulate",
    "traces",
    "run",
    "profile",
    "evaluate",
    "validate",
    "sweep",
    "tune",
    "plot",
    "report",
    "quality",
    "bench",
    "decode",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only`, that sub-command's module alone is imported and the others are
    bare names (a command's module imports what it runs on, torch or matplotlib: seconds at start-up)."""
    parser = OneLineParser(prog="sparkv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name)  # never parsed into: `only` is the command on the line
            continue
        try:
            module = importlib.import_module(f"sparkv.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"sparkv.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command. Exit status 2 for every refusal (a bad flag, value or file), one line on stderr;
    set SPARKV_DEBUG=1 to see the traceback of an unexpected ValueError or OSError instead."""
    words = list(sys.argv[1:] if argv is None else argv)
    first = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(first if first in _COMMANDS else None)
    try:
        args = parser.parse_args(words)
    except SystemExit as exc:  # a usage error (2), or --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        code = args.func(args)
    except UserError as exc:
        print(f"sparkv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:  # a value or a file no check caught earlier: still one line
        if os.environ.get("SPARKV_DEBUG"):
            raise
        what = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.filename else str(exc)
        first = what.splitlines()[0] if what else type(exc).__name__
        print(f"sparkv {args.command}: error: {first}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparkv {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
