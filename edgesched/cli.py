"""The ``edgesched`` command: one subcommand per module in :mod:`edgesched.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edgesched import __version__
from edgesched.errors import EdgeschedError

# subcommand name -> module under edgesched.commands with add_parser(subparsers) and run(args)
COMMANDS = ("serve", "demo", "infer", "status", "restore", "eval", "train", "calibrate", "fit",
            "profiles")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesched", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edgesched {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"edgesched.commands.{name.replace('-', '_')}")
        except ModuleNotFoundError as exc:
            if exc.name == f"edgesched.commands.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except EdgeschedError as exc:
        print(f"edgesched {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
