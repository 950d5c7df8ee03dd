"""``medpfl attack`` end to end on generated demo data (tiny budgets)."""

from __future__ import annotations

import json

from medpfl_app.cli.main import main


def test_attack_command_writes_metrics_and_grid_png(tmp_path, capsys) -> None:
    """One CPL run on a demo image writes result.json with metrics and threat model, and the PNG grid."""
    out = tmp_path / "out"

    code = main(["attack", "--out", str(out), "--attack", "cpl", "--iterations", "5", "--image-size", "16"])

    assert code == 0
    payload = json.loads((out / "result.json").read_text())
    assert payload["attack"] == "cpl" and payload["iterations"] <= 5
    assert 0.0 <= payload["metrics"]["summary"]["asr"] <= 1.0
    assert payload["threat_model"]["labels_known"] is False
    assert (out / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"
    assert "PSNR" in capsys.readouterr().out


def test_attack_command_rejects_unknown_attack(tmp_path, capsys) -> None:
    """An unknown attack name is one clear error listing the valid names, exit code 2."""
    code = main(["attack", "--out", str(tmp_path), "--attack", "deepleak"])

    assert code == 2
    err = capsys.readouterr().err
    assert "unknown attack 'deepleak'" in err and "idlg" in err


def test_attack_grid_quick_writes_table(tmp_path) -> None:
    """The quick grid runs every setting and writes the Markdown table and JSON rows."""
    code = main(["attack", "--grid", "--quick", "--out", str(tmp_path)])

    assert code == 0
    table = (tmp_path / "grid.md").read_text()
    assert "| seed | idlg | 0 |" in table and "B=4, S=5, BN train" in table
    rows = json.loads((tmp_path / "grid.json").read_text())["rows"]
    assert {r["attack"] for r in rows} >= {"idlg", "cpl", "dlg", "gradinv", "random_init", "fedavg", "bn_only"}


def test_attack_command_applies_recipe_overrides(tmp_path) -> None:
    """--set changes fields of the preset recipe, typed, and the result records the recipe used."""
    out = tmp_path / "out"

    code = main(
        [
            "attack",
            "--out",
            str(out),
            "--attack",
            "idlg",
            "--iterations",
            "2",
            "--image-size",
            "16",
            "--set",
            "init=randn",
            "--set",
            "line_search=strong_wolfe",
            "--set",
            "lbfgs_max_iter=3",
            "--set",
            "box=true",
            "--set",
            "time_limit_s=60",
            "--set",
            "top_layers=none",
            "--set",
            "iterations=3",
        ]
    )

    assert code == 0
    config = json.loads((out / "result.json").read_text())["config"]
    assert config["init"] == "randn" and config["line_search"] == "strong_wolfe"
    assert config["lbfgs_max_iter"] == 3 and config["box"] is True
    assert config["time_limit_s"] == 60.0 and config["top_layers"] is None
    assert config["iterations"] == 3  # --set wins over --iterations


def test_attack_command_rejects_bad_recipe_override(tmp_path, capsys) -> None:
    """A --set that names no field, or gives a value of the wrong type, is one clear error, exit code 2."""
    assert main(["attack", "--out", str(tmp_path), "--set", "inits=randn"]) == 2
    assert "unknown recipe field 'inits'" in capsys.readouterr().err
    assert main(["attack", "--out", str(tmp_path), "--set", "iterations=many"]) == 2
    assert "'many' is not a valid int" in capsys.readouterr().err
    assert main(["attack", "--out", str(tmp_path), "--set", "time_limit_s=soon"]) == 2
    assert "'soon' is not a valid float" in capsys.readouterr().err
    assert main(["attack", "--out", str(tmp_path), "--grid", "--set", "init=rand"]) == 2
    assert "does not apply to --grid" in capsys.readouterr().err


def test_attack_command_reports_iterations_losses_and_convergence(tmp_path, capsys) -> None:
    """The command prints iterations, the matching loss at start and end and the convergence status, and writes them
    into result.json."""
    out = tmp_path / "out"

    code = main(
        [
            "attack",
            "--out",
            str(out),
            "--attack",
            "idlg",
            "--iterations",
            "3",
            "--image-size",
            "16",
            "--set",
            "stop_loss=0",
        ]
    )

    assert code == 0
    printed = capsys.readouterr().out
    assert "optimisation: 3 iterations" in printed and "at start" in printed and "at end" in printed
    assert "convergence: " in printed and "no progress" not in printed
    payload = json.loads((out / "result.json").read_text())
    assert payload["convergence"]["status"] in {"matched", "stalled", "improving"}
    assert payload["convergence"]["iterations"] == payload["iterations"] == 3
    assert payload["initial_loss"] > payload["matching_loss"] and payload["moved_from_init"] > 0
    assert payload["loss_trace"][0] == payload["initial_loss"] and payload["loss_trace"][-1] == payload["matching_loss"]


def test_attack_command_says_plainly_when_the_attack_made_no_progress(tmp_path, capsys) -> None:
    """An attack that never leaves its initialisation (a vanishing step size) is reported as no progress, not as
    evidence of safety."""
    out = tmp_path / "out"

    code = main(
        [
            "attack",
            "--out",
            str(out),
            "--attack",
            "idlg",
            "--iterations",
            "2",
            "--image-size",
            "16",
            "--set",
            "lr=1e-30",
        ]
    )

    assert code == 0
    printed = capsys.readouterr().out
    assert "convergence: no_progress" in printed
    assert "made no progress" in printed and "not evidence that the update is safe" in printed
    assert json.loads((out / "result.json").read_text())["convergence"]["status"] == "no_progress"
