"""Every ``medpfl`` command's ``--help`` states the default of every option that has one worth stating."""

from __future__ import annotations

import argparse
import re

import pytest

from medpfl_app.cli.main import build_parser, parsers_of


def _commands() -> list[tuple[str, argparse.ArgumentParser]]:
    return [(" ".join(("medpfl", *path)), parser) for path, parser in parsers_of(build_parser())]


def _option_help(help_text: str, action: argparse.Action) -> str:
    """The help column of ``action`` in a formatted ``--help``, its wrapped lines joined."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(action.option_strings[0]))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("   ") or line.strip().startswith("-"):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


def _stated_defaults() -> list:
    found = []
    for command, parser in _commands():
        help_text = parser.format_help()
        for action in parser._actions:
            default = action.default
            if not action.option_strings or default in (None, False, argparse.SUPPRESS) or default == []:
                continue
            found.append(
                pytest.param(
                    command, action, _option_help(help_text, action), id=f"{command} {action.option_strings[0]}"
                )
            )
    return found


def test_the_walk_finds_every_sub_command() -> None:
    """The tree has the nested commands (``medpfl poc run``), so the check below covers them too."""
    commands = [command for command, _ in _commands()]
    assert {"medpfl", "medpfl demo", "medpfl poc run", "medpfl data demo", "medpfl jobs export"} <= set(commands)


@pytest.mark.parametrize("command, action, shown", _stated_defaults())
def test_every_option_with_a_default_shows_it(command: str, action: argparse.Action, shown: str) -> None:
    value = re.escape(str(action.default))
    assert re.search(rf"default:?\s+['\"`]?(\./)?{value}", shown, re.IGNORECASE), (
        f"`{command} --help` does not show the default {action.default!r} of {action.option_strings[0]}: {shown!r}"
    )


def test_options_without_a_meaningful_default_state_none() -> None:
    """None, False and suppressed defaults are not shown: ``(default: None)`` would tell the reader nothing."""
    for command, parser in _commands():
        text = " ".join(parser.format_help().split())
        assert "(default: None)" not in text and "(default: False)" not in text, command
        assert "==SUPPRESS==" not in text, command
