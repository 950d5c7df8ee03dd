"""The README's set-up commands, CI, CLI help and the production provisioning template stay true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from medpfl_app.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())[:2]


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    demo, tests = _readme_commands()
    cpu_torch = "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu"
    for command in (demo, tests):
        assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && "), "a venv first (PEP 668)"
        assert cpu_torch in command and "-c constraints.txt" in command
    assert demo.endswith("medpfl demo")
    assert tests.endswith("python -m pytest") and '".[test]"' in tests


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert _readme_commands()[1] in ci.splitlines()
    assert ".ci/fresh_machine" in ci.splitlines(), "CI runs the README's demo command on a fresh copy too"
    for script in ("run", "fresh_machine"):
        assert (REPO / ".ci" / script).stat().st_mode & 0o111, f".ci/{script} must be executable"


def test_constraints_pin_the_cpu_torch_and_nvflare() -> None:
    pins = (REPO / "constraints.txt").read_text().split()
    assert "torch==2.13.0+cpu" in pins and "nvflare==2.9.0" in pins


def _all_subcommands(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _all_subcommands(sub, prefix + (name,))


@pytest.mark.parametrize("command", sorted(_all_subcommands(build_parser())))
def test_every_command_has_help(command: tuple[str, ...], capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    assert "usage: medpfl" in capsys.readouterr().out


def test_console_script_reports_bad_input_in_one_message(tmp_path: Path) -> None:
    """`medpfl data check` on a missing folder: exit 2, one message with the fix, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "medpfl_app.cli.main", "data", "check", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "nowhere" in done.stderr and "fix:" in done.stderr
    assert "Traceback" not in done.stderr


def test_production_project_template_provisions(tmp_path: Path) -> None:
    """`nvflare provision` accepts the template and makes one kit per hospital, the server and the admins."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nvflare.cli",
            "provision",
            "-p",
            str(REPO / "poc_workspace/templates/production/project.yml"),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    kits = {p.name for p in tmp_path.glob("*/prod_00/*") if (p / "startup").is_dir()}
    assert {"hospital-a", "hospital-b", "hospital-c", "study-admin@coordinating-center.org"} <= kits
