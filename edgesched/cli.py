"""The edgesched command: one subcommand per module in edgesched.commands.

Help output is plain text: descriptions taken from module docstrings are rendered without their
reST markup (double backquotes, roles such as :class:, literal-block colons), and every option's
help ends with its default, added here unless the help text already names one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgesched import __version__
from edgesched.errors import EdgeschedError

# subcommand name -> module under edgesched.commands with add_parser(subparsers) and run(args)
COMMANDS = ("serve", "demo", "infer", "status", "hold", "restore", "eval", "train", "calibrate",
            "fit", "profiles")

DESCRIPTION = ("An energy-aware inference scheduler: serve TFLite models on a unix socket, queue "
               "requests by priority and deadline, and set the CPU frequency with a policy "
               "learned in a simulator. Run 'edgesched COMMAND --help' for a command's options.")

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_INTERPRETED = re.compile(r"`([^`]+)`")
_BLOCK = re.compile(r"::(?=\s*$)", re.MULTILINE)


def plain_text(text: str) -> str:
    """``text`` with its reST inline markup removed: ``x``, `x` and :role:`x` become x, a paragraph
    ending in ``::`` (a literal block follows) ends in one colon."""
    text = _ROLE.sub(lambda m: m.group(2).rpartition(".")[2] if m.group(1) else m.group(2), text)
    text = _LITERAL.sub(r"\1", text)
    text = _INTERPRETED.sub(r"\1", text)
    return _BLOCK.sub(":", text)


_NAMES_DEFAULT = re.compile(r"%\(default\)|\(default\b|\bdefault:")


def shows_default(help_text: str) -> bool:
    """Whether an option's help text already says its default ("(default ...", "default: ...")."""
    return _NAMES_DEFAULT.search(help_text) is not None


def default_suffix(action: argparse.Action) -> str:
    """The "(default: ...)" an option's help gets, or "" when the default says nothing (None:
    then the help text must say what leaving the option out means)."""
    if action.default is None or action.default is argparse.SUPPRESS:
        return ""
    if isinstance(action.default, bool) and action.nargs == 0:
        return "(default: off)" if action.default is False else "(default: on)"
    if isinstance(action.default, (list, tuple)):
        return f"(default: {', '.join(map(str, action.default)) or 'none'})"
    return "(default: %(default)s)"


class _ShowsDefaults(argparse.HelpFormatter):
    """Appends each option's default to its help unless the text already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or text == argparse.SUPPRESS
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))
                or shows_default(text)):
            return text
        suffix = default_suffix(action)
        return f"{text} {suffix}" if text and suffix else text or suffix


def _showing_defaults(cls: type[argparse.HelpFormatter]) -> type[argparse.HelpFormatter]:
    if issubclass(cls, _ShowsDefaults):
        return cls
    return type(f"ShowsDefaults{cls.__name__}", (_ShowsDefaults, cls), {})


def polish(parser: argparse.ArgumentParser) -> None:
    """Plain-text descriptions and option help, defaults shown, for ``parser`` and its
    subcommands."""
    current = parser.formatter_class
    if isinstance(current, type) and issubclass(current, argparse.HelpFormatter):
        parser.formatter_class = _showing_defaults(current)
    if parser.description:
        parser.description = plain_text(parser.description)
    if parser.epilog:
        parser.epilog = plain_text(parser.epilog)
    for action in parser._actions:
        if action.help and action.help != argparse.SUPPRESS:
            action.help = plain_text(action.help)
        elif action.help is None and action.option_strings and not action.required:
            action.help = default_suffix(action) or None  # argparse shows no help at all
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.help:
                    choice.help = plain_text(choice.help)
            for sub in {id(p): p for p in action.choices.values()}.values():
                polish(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesched", description=DESCRIPTION)
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
    polish(parser)
    return parser


def require_extra(extra: str, modules: Sequence[str], what: str) -> None:
    """Raise a clear error naming the extra to install when one of ``modules`` is missing."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise EdgeschedError(f"{what} needs the {extra} extra ({', '.join(missing)} not "
                             f"installed): pip install 'edgesched[{extra}]'")


def check_positive(option: str, value: Any, *, zero_ok: bool = False) -> None:
    """Raise a clear error when a numeric option is not positive (or negative, with
    ``zero_ok``), or not finite."""
    if not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
        raise EdgeschedError(f"{option} must be {'>= 0' if zero_ok else '> 0'}, got {value}")


def check_output_path(option: str, path: str | Path | None) -> None:
    """Raise a clear error, before any work is done, when ``path`` cannot be written: its
    folder is missing or it names a folder."""
    if path is None:
        return
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise EdgeschedError(f"{option} {path}: is a folder; give a file name")
    if not folder.is_dir():
        raise EdgeschedError(f"{option} {path}: folder {folder} does not exist; create it first "
                             f"(mkdir -p {folder})")


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
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as the shell tools do
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
