"""Argument parsing shared by every ``medpfl`` command: numeric option types and one error format.

Every numeric option is parsed by one of the types below, so that NaN, infinities, zero or negative counts never
reach a command (a NaN deadline would disable it; a negative site count would start nothing useful). A bad value
ends as one message in the project's `medpfl_app.errors.MedPFLError` format, the problem and its fix, with exit
code 2 and no usage dump or traceback: ``medpfl demo: error: argument --timeout: 'nan' is not a finite number``
then ``  fix: …``.

Kept free of heavy imports: ``medpfl --help`` loads this module.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

#: The line `MedPFLError` puts between the problem and its fix.
FIX = "\n  fix: "
#: Seeds are accepted in NumPy's classic range, which every seeded component (NumPy, torch, MONAI) takes.
MAX_SEED = 2**32 - 1


class MedPFLArgumentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose usage errors read like a `MedPFLError`: problem, then fix, exit code 2.

    Sub-command parsers made with ``add_subparsers().add_parser`` inherit the class, so every command of the
    ``medpfl`` tree reports bad input this way. Defaults are shown in every ``--help`` (see `HelpFormatter`).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: problem`` and its fix (the type's own, or a pointer to ``--help``), exit 2."""
        from medpfl_app.text import printable  # the message may quote what was typed

        problem, _, fix = message.partition(FIX)
        fix = fix or f"see `{self.prog} --help` for the valid arguments and their defaults"
        self.exit(2, f"{self.prog}: error: {printable(problem)}{FIX}{printable(fix)}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: …)`` after every option that has a default worth stating (not None, not False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        unstated = (
            action.default is None
            or action.default is False
            or action.default == []
            or (action.default == argparse.SUPPRESS)
        )
        if "default" in help_text.lower() or unstated:
            return help_text
        return super()._get_help_string(action)


def _refuse(text: str, problem: str, fix: str) -> NoReturn:
    raise argparse.ArgumentTypeError(f"{text!r} {problem}{FIX}{fix}")


def _whole(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        _refuse(text, "is not a whole number", "give a whole number such as 3 (no decimal point, no exponent)")


def _finite(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        _refuse(text, "is not a number", "give a number such as 0.5 or 1e-3")
    if not math.isfinite(value):
        _refuse(text, "is not a finite number", "give a finite number (not nan or inf)")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (counts of sites, rounds, images, iterations, threads; sizes in pixels)."""
    value = _whole(text)
    if value < 1:
        _refuse(text, "must be at least 1", "give a whole number >= 1")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (an index; a count that may be zero)."""
    value = _whole(text)
    if value < 0:
        _refuse(text, "must not be negative", "give a whole number >= 0")
    return value


def seed(text: str) -> int:
    """A seed: a whole number in [0, `MAX_SEED`]."""
    value = _whole(text)
    if not 0 <= value <= MAX_SEED:
        _refuse(text, f"is not a seed in [0, {MAX_SEED}]", "give a whole number such as 0 or 42")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (seconds, learning rates, concentrations); NaN and infinities are refused."""
    value = _finite(text)
    if value <= 0:
        _refuse(text, "must be greater than 0", "give a finite number > 0")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a noise scale, where 0 means none); NaN and infinities are refused."""
    value = _finite(text)
    if value < 0:
        _refuse(text, "must not be negative", "give a finite number >= 0")
    return value


def at_least(minimum: int) -> Callable[[str], int]:
    """A whole number >= ``minimum`` (e.g. at least two classes)."""

    def parse(text: str) -> int:
        value = _whole(text)
        if value < minimum:
            _refuse(text, f"must be at least {minimum}", f"give a whole number >= {minimum}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse
