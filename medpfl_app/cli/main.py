"""Entry point of the ``medpfl`` console script.

Each sub-command lives in its own module that exposes ``register(subparsers)``; the module adds its parser and
sets ``func`` to a callable taking the parsed namespace and returning an exit code. Imports of heavy libraries
(torch, NVFlare, Lightning) happen inside those callables so that ``medpfl --help`` stays fast.

Every parser of the tree is a `medpfl_app.cli.options.MedPFLArgumentParser`: bad arguments (a NaN timeout, zero
rounds) end like every other user error, one message with its fix and exit code 2, and every ``--help`` shows the
defaults. Errors are printed with control characters escaped (`medpfl_app.reports.fields.printable`): a message
can quote a file name or a value a site wrote.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from medpfl_app import __version__
from medpfl_app.cli.options import MedPFLArgumentParser
from medpfl_app.errors import MedPFLError

COMMAND_MODULES: tuple[str, ...] = (
    "medpfl_app.cli.demo",
    "medpfl_app.cli.data",
    "medpfl_app.cli.jobs",
    "medpfl_app.cli.poc",
    "medpfl_app.cli.privacy",
    "medpfl_app.cli.attack",
    "medpfl_app.cli.report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = MedPFLArgumentParser(
        prog="medpfl",
        description="MedPFL: federated training on medical images with NVFlare, gradient-inversion audits and defenses.",
    )
    parser.add_argument("--version", action="version", version=f"medpfl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
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
        from medpfl_app.reports.fields import printable

        print(f"medpfl {args.command}: error: {printable(str(error), newlines=True)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medpfl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
