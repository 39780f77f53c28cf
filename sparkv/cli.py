"""The `sparkv` command: one sub-command per module in `sparkv.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparkv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"sparkv.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"sparkv.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except UserError as exc:
        print(f"sparkv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparkv {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
