"""Bad command-line input ends as one clear error (problem + fix), exit code 2, no traceback, nothing started or
overwritten: NaN/inf/zero/negative numbers for every numeric option of every command, attack recipe overrides,
an attack index beyond the data, and an ``--out`` that is an existing file."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medpfl_app.cli import options
from medpfl_app.cli.main import build_parser, main
from medpfl_app.errors import MedPFLError

#: Options where 0 is a meaningful value (a seed, an index, no validation images, no noise): only they take "0".
ZERO_ALLOWED = {"--seed", "--index", "--val-per-site", "--noise-b"}
NUMERIC_TYPES = {
    options.positive_int,
    options.non_negative_int,
    options.seed,
    options.positive_float,
    options.non_negative_float,
}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``main(argv)``'s exit code (argparse's ``SystemExit`` included) and what it wrote to stderr."""
    try:
        code = main(argv)
    except SystemExit as exited:
        code = int(exited.code or 0)
    return code, capsys.readouterr().err


def _assert_one_clear_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "error: " in err and "\n  fix: " in err, err
    assert "Traceback" not in err and "usage:" not in err, err
    for needle in needles:
        assert needle in err, err


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from _subcommands(sub, prefix + (name,))


def _numeric_options() -> list[tuple[tuple[str, ...], str, object]]:
    found = []
    for command, parser in _subcommands(build_parser()):
        for action in parser._actions:
            if action.type is not None and action.option_strings:
                found.append((command, action.option_strings[-1], action.type))
    return found


NUMERIC_OPTIONS = _numeric_options()


def test_every_numeric_option_is_parsed_by_a_checked_type() -> None:
    """No command parses a number with a bare ``int``/``float`` (they take NaN, inf and negatives)."""
    assert len(NUMERIC_OPTIONS) >= 25
    for command, option, kind in NUMERIC_OPTIONS:
        if kind is Path:
            continue
        assert kind in NUMERIC_TYPES or kind.__name__.startswith("int_at_least_"), (command, option, kind)


@pytest.mark.parametrize(
    ("command", "option"),
    [(command, option) for command, option, kind in NUMERIC_OPTIONS if kind is not Path],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else value,
)
def test_every_numeric_option_refuses_nan_inf_and_negative_values(command, option, capsys) -> None:
    """NaN, ±inf, a negative and (where 0 means nothing) zero are one clear error naming the option."""
    bad = ["nan", "inf", "-inf", "-1", "1e400"] + ([] if option in ZERO_ALLOWED else ["0"])
    for value in bad:
        code, err = _run([*command, f"{option}={value}"], capsys)
        _assert_one_clear_error(code, err, f"argument {option}", repr(value))


def test_demo_refuses_a_nan_timeout_before_anything_starts(tmp_path: Path, monkeypatch, capsys) -> None:
    """`medpfl demo --timeout nan` (which disabled the deadline) and other bad numbers never reach run_demo."""
    import medpfl_app.nvflare.jobs.demo as demo

    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("run_demo must not start"))
    for argv in (
        ["--timeout", "nan"],
        ["--timeout", "inf"],
        ["--timeout", "0"],
        ["--rounds", "0"],
        ["--sites", "-1"],
        ["--seed", "-1"],
    ):
        code, err = _run(["demo", "--out", str(tmp_path / "demo"), *argv], capsys)
        _assert_one_clear_error(code, err, f"argument {argv[0]}")
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_an_existing_file_as_out(tmp_path: Path, monkeypatch, capsys) -> None:
    """An --out that is a file is refused before anything starts; the file is left as it was."""
    import medpfl_app.nvflare.jobs.demo as demo

    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("run_demo must not start"))
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    code, err = _run(["demo", "--out", str(target)], capsys)
    _assert_one_clear_error(code, err, "is an existing file")
    assert target.read_text() == "keep me"


def test_console_script_prints_no_traceback_for_a_nan_timeout() -> None:
    """The installed entry point: exit 2, the problem and its fix on stderr, nothing else."""
    done = subprocess.run(
        [sys.executable, "-m", "medpfl_app.cli.main", "demo", "--timeout", "nan"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "medpfl demo: error: argument --timeout: 'nan' is not a finite number\n"
        "  fix: give a finite number (not nan or inf)\n"
    )


def test_usage_errors_escape_control_characters(capsys) -> None:
    """What was typed is quoted in the error; an escape sequence in it never reaches the terminal raw."""
    code, err = _run(["report", "x", "--bogus", "\x1b]0;pwned\x07"], capsys)
    _assert_one_clear_error(code, err, "unrecognized arguments", "\\x1b]0;pwned\\x07")
    assert "\x1b" not in err and "\x07" not in err


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("lr=nan", "--set lr=nan: 'nan' is not a finite number"),
        ("tv=nan", "--set tv=nan: 'nan' is not a finite number"),
        ("l2=inf", "--set l2=inf: 'inf' is not a finite number"),
        ("stop_loss=-inf", "'-inf' is not a finite number"),
        ("time_limit_s=nan", "'nan' is not a finite number"),
        ("top_layers=0", "top_layers must be a whole number >= 1 or None, got 0"),
        ("top_layers=-2", "top_layers must be a whole number >= 1 or None, got -2"),
        ("seed=-1", "attack seed must be a whole number in [0, 2**63 - 1], got -1"),
        ("seed=1.5", "'1.5' is not a valid int"),
        ("gradient_weight=-1", "gradient_weight must be a finite number >= 0, got -1.0"),
        ("lbfgs_max_iter=0", "attack lbfgs_max_iter must be a whole number >= 1, got 0"),
    ],
)
def test_attack_refuses_bad_recipe_overrides(tmp_path: Path, override: str, needle: str, capsys) -> None:
    """Each bad --set is one clear error (it crashed with a traceback, or NaN was accepted); nothing is written."""
    code, err = _run(["attack", "--out", str(tmp_path / "out"), "--set", override], capsys)
    _assert_one_clear_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_set_seed_seeds_the_attack(tmp_path: Path) -> None:
    """`--set seed=N` (a traceback before: seed given twice) seeds the attack's initialisation and is recorded."""
    out = tmp_path / "out"
    assert main(["attack", "--out", str(out), "--iterations", "1", "--image-size", "16", "--set", "seed=7"]) == 0
    assert json.loads((out / "result.json").read_text())["config"]["seed"] == 7


def test_attack_index_beyond_the_demo_data_is_refused_at_once(tmp_path: Path, capsys) -> None:
    """`--index 100000` hung while 100 001 demo images were generated; now it is refused, naming the valid range."""
    started = time.monotonic()
    code, err = _run(["attack", "--out", str(tmp_path / "out"), "--index", "100000"], capsys)
    _assert_one_clear_error(code, err, "--index 100000", "the generated demo data has 64", "valid --index is 0 to 63")
    code, err = _run(["attack", "--out", str(tmp_path / "out"), "--index", "60", "--batch-size", "8"], capsys)
    _assert_one_clear_error(code, err, "needs training images 60 to 67", "valid --index is 0 to 56")
    code, err = _run(["attack", "--out", str(tmp_path / "out"), "--batch-size", "65"], capsys)
    _assert_one_clear_error(code, err, "--batch-size 65 exceeds the 64 training images")
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out").exists()


def test_attack_index_beyond_a_datalist_names_its_size(tmp_path: Path, capsys) -> None:
    """With --datalist the range is the datalist's training images."""
    from medpfl_app.data import generate_demo_dataset

    data = generate_demo_dataset(tmp_path / "data", num_sites=1, train_per_site=3, val_per_site=0, image_size=16)
    datalist = str(next(iter(data.site_datalists.values())))
    code, err = _run(["attack", "--out", str(tmp_path / "out"), "--datalist", datalist, "--index", "3"], capsys)
    _assert_one_clear_error(code, err, "needs training image 3", "has 3 (images 0 to 2)", "valid --index is 0 to 2")


def test_attack_refuses_an_existing_file_as_out(tmp_path: Path, capsys) -> None:
    """The results folder is never an existing file (it would be overwritten or crash)."""
    target = tmp_path / "result.txt"
    target.write_text("keep me")
    code, err = _run(["attack", "--out", str(target)], capsys)
    _assert_one_clear_error(code, err, "is an existing file")
    assert target.read_text() == "keep me"


def test_report_refuses_an_existing_file_as_out(tmp_path: Path, capsys) -> None:
    """`medpfl report --out FILE` crashed; it is refused and the file is not touched (nor a path under it)."""
    ledger = tmp_path / "audit_ledger.jsonl"
    ledger.write_text(
        json.dumps({"schema": "medpfl.audit/1", "site": "site-1", "round": 0, "status": "audited", "risk": "low"})
        + "\n"
    )
    target = tmp_path / "summary.txt"
    target.write_text("keep me")
    code, err = _run(["report", str(ledger), "--out", str(target)], capsys)
    _assert_one_clear_error(code, err, "is not a folder", "never overwrites a file")
    code, err = _run(["report", str(ledger), "--out", str(target / "sub")], capsys)
    _assert_one_clear_error(code, err, "is an existing file")
    assert target.read_text() == "keep me"
    (tmp_path / "blocked" / "audit_report.html").mkdir(parents=True)
    code, err = _run(["report", str(ledger), "--out", str(tmp_path / "blocked")], capsys)
    _assert_one_clear_error(code, err, "audit_report.html that is not a file")


def test_matching_config_refuses_non_finite_and_mistyped_fields() -> None:
    """The engine's config is the last line of defence for callers other than the CLI."""
    from medpfl_app.attacks.engine import MatchingConfig

    for bad in (
        {"tv": float("nan")},
        {"l2": float("inf")},
        {"bn": -1.0},
        {"stop_loss": float("nan")},
        {"lr": float("nan")},
        {"time_limit_s": float("inf")},
        {"top_layers": 0},
        {"top_layers": True},
        {"seed": -1},
        {"seed": 2**63},
        {"seed": 1.0},
        {"seed": True},
        {"iterations": 2.5},
        {"restarts": 0},
    ):
        with pytest.raises(MedPFLError):
            MatchingConfig(**bad)
    assert MatchingConfig(top_layers=1, seed=2**32, tv=0.0).top_layers == 1


def test_parse_overrides_refuses_non_finite_floats() -> None:
    """`--set` values are typed and finite before the config sees them."""
    from medpfl_app.attacks.recipes import parse_overrides

    assert parse_overrides(["lr=0.5", "top_layers=none", "seed=3"]) == {"lr": 0.5, "top_layers": None, "seed": 3}
    for pair in ("lr=nan", "tv=inf", "time_limit_s=-inf", "stop_loss=NaN"):
        with pytest.raises(MedPFLError, match="is not a finite number"):
            parse_overrides([pair])


def test_help_shows_defaults(capsys) -> None:
    """Every touched command states its defaults in --help."""
    for command, needle in (
        (["demo"], "(default: 1800.0)"),
        (["attack"], "(default: 32)"),
        (["data", "demo"], "(default: 0.5)"),
        (["poc", "start"], "(default: 300.0)"),
        (["report"], "(default: the ledger's folder)"),
    ):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert needle in " ".join(capsys.readouterr().out.split()), command
