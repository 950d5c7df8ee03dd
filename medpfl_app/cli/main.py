"""Entry point of the ``medpfl`` console script.

Each sub-command lives in its own module that exposes ``register(subparsers)``; the module adds its parser and
sets ``func`` to a callable taking the parsed namespace and returning an exit code. Imports of heavy libraries
(torch, NVFlare, Lightning) happen inside those callables so that ``medpfl --help`` stays fast.

Every parser of the tree is a `medpfl_app.cli.options.MedPFLArgumentParser`: bad arguments (a NaN timeout, zero
rounds) end like every other user error, one message with its fix and exit code 2. Every ``--help`` shows the
default of every option that has one worth stating: `build_parser` walks the finished tree once
(`show_defaults`), whatever each command module set, so no command can forget it. Errors are printed with
control characters escaped (`medpfl_app.reports.fields.printable`): a message can quote a file name or a value a
site wrote.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Iterator, Sequence

from medpfl_app import __version__
from medpfl_app.cli.options import HelpFormatter, MedPFLArgumentParser
from medpfl_app.errors import MedPFLError

COMMAND_MODULES: tuple[str, ...] = (
    "medpfl_app.cli.demo",
    "medpfl_app.cli.data",
    "medpfl_app.cli.jobs",
    "medpfl_app.cli.poc",
    "medpfl_app.cli.privacy",
    "medpfl_app.cli.attack",
    "medpfl_app.cli.report",
    "medpfl_app.cli.preflight",
    "medpfl_app.cli.study",
)


def states_default(action: argparse.Action) -> bool:
    """Whether ``action`` has a default worth stating in ``--help`` (not None, False, empty or suppressed)."""
    default = action.default
    if default is None or default is False or default is argparse.SUPPRESS or default == argparse.SUPPRESS:
        return False
    if isinstance(default, (list, tuple, set, dict, str)) and not default:
        return False
    return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)


def _help_names_default(help_text: str, default: object) -> bool:
    """Whether the help text already gives this default (``%(default)s``, or ``default: X`` / ``default X``)."""
    if "%(default)" in help_text:
        return True
    value = re.escape(str(default))
    return re.search(rf"\bdefault:?\s+['\"`]?(\./)?{value}(?![\w.])", " ".join(help_text.split()), re.I) is not None


class DefaultsHelpFormatter(HelpFormatter):
    """Appends ``(default: …)`` to every option whose default is worth stating, unless its help already gives it.

    Stricter than a help text merely containing the word "default" (``'default' or the path of a file`` does not
    say which one is the default).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if not states_default(action) or _help_names_default(help_text, action.default):
            return help_text
        return f"{help_text} (default: %(default)s)".lstrip()


def parsers_of(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the tree under ``parser`` with its command path (``()`` for the top), depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers_of(sub, (*path, name))


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Make every ``--help`` of the tree state the defaults (`DefaultsHelpFormatter`); an option without help
    text that has a default gets one saying it (argparse prints nothing for an option without help)."""
    for _, each in parsers_of(parser):
        each.formatter_class = DefaultsHelpFormatter
        for action in each._actions:
            if action.help is None and states_default(action):
                action.help = "(default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = MedPFLArgumentParser(
        prog="medpfl",
        description="MedPFL: federated training on medical images with NVFlare, gradient-inversion audits and defenses.",
    )
    parser.add_argument("--version", action="version", version=f"medpfl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    show_defaults(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MedPFLError as error:
        from medpfl_app.text import printable

        print(f"medpfl {args.command}: error: {printable(str(error), newlines=True)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medpfl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
