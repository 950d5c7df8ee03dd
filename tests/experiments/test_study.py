"""The privacy–utility study: real tiny cells write sane outputs, the store resumes, the leakage shape holds."""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medpfl_app.cli.main import main
from medpfl_app.contracts.verdict import RiskLevel
from medpfl_app.errors import MedPFLError
from medpfl_app.experiments.study import (
    AuditBudget,
    CellConfig,
    CellResult,
    DefenseKind,
    DefenseSetting,
    RunConfig,
    SiteLeakage,
    StudyConfig,
    run_study,
)
from medpfl_app.experiments.study.evaluate import audit_received, evaluate_cell
from medpfl_app.experiments.study.federated import initial_network, run_federation
from medpfl_app.experiments.study.store import STORE_NAME, CellStore

#: A tiny but real federation: 2 sites, 2 rounds, 16 px, a one-stage 20-iteration audit.
TINY = RunConfig(
    image_size=16,
    num_classes=2,
    sites=2,
    rounds=2,
    train_per_site=4,
    val_images=8,
    audit=AuditBudget(iterations=20, time_limit_s=30.0, screening_iterations=0, escalations=0),
)
NONE = CellConfig("lenet_sigmoid", DefenseSetting(DefenseKind.NONE), 1, 1)
DP = CellConfig("lenet_sigmoid", DefenseSetting(DefenseKind.CLIENT_DP, 1.0), 1, 1)
DP_SGD = CellConfig("small_cnn", DefenseSetting(DefenseKind.DP_SGD, 1.0), 2, 2)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fake_result(cell: CellConfig, auc: float = 0.75) -> CellResult:
    site = SiteLeakage("site-1", 0, "low", 0.1, 9.0, 0.0, 1.0, 0.0, "stalled", True, 0.5)
    return CellResult(cell, 0.5, auc, (site,), None, None, "none", "threat", "budget", 0.1, 0.2)


class CountingCell:
    """A cell function that records every call (the resume tests prove it is not called for stored cells)."""

    def __init__(self) -> None:
        self.calls: list[CellConfig] = []

    def __call__(self, run: RunConfig, cell: CellConfig) -> CellResult:
        self.calls.append(cell)
        return _fake_result(cell)


def test_real_cells_write_table_plot_and_page(tmp_path: Path) -> None:
    """Three real cells (no defense, client DP, DP-SGD): every output is written and the numbers are plausible."""
    outcome = run_study(StudyConfig("tiny", TINY, (NONE, DP, DP_SGD)), tmp_path, progress=False)

    assert outcome.computed == 3 and outcome.reused == 0
    with open(tmp_path / "study.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["defense"] for r in rows] == ["none", "client_dp", "dp_sgd"]
    for row in rows:
        assert 0.0 <= float(row["accuracy"]) <= 1.0 and 0.0 <= float(row["auc"]) <= 1.0
        assert -1.0 <= float(row["ssim_max"]) <= 1.0
        assert row["verdict"] in {level.value for level in RiskLevel}
        assert (
            row["attack"] == "gradinv"
            and "20 it" in row["attack_budget"]
            and "honest-but-curious" in row["threat_model"]
        )
    assert rows[0]["epsilon"] == "" and math.isfinite(float(rows[1]["epsilon"])) and float(rows[1]["epsilon"]) > 0
    assert rows[1]["guarantee"] == "(ε, δ)-DP at client level"
    assert rows[2]["guarantee"] == "(ε, δ)-DP at sample level" and float(rows[2]["epsilon"]) > 0
    payload = json.loads((tmp_path / "study.json").read_text())
    assert payload["run"]["rounds"] == 2 and len(payload["rows"]) == 3
    assert "not NVFlare's transport" in payload["transport"]
    svg = ET.fromstring((tmp_path / "frontier.svg").read_text())
    assert len(svg.findall("{http://www.w3.org/2000/svg}circle")) == 2  # the DP points, labelled with ε
    assert "ε=" in (tmp_path / "frontier.svg").read_text()
    page = (tmp_path / "study.html").read_text()
    assert page.count("<tr>") == 4 and "<svg" in page and "formal guarantee" in page


def test_resume_skips_done_cells_and_recomputes_changed_config(tmp_path: Path) -> None:
    """A rerun calls the cell function for no stored cell; a changed run config or a new cell is recomputed."""
    study = StudyConfig("tiny", TINY, (NONE, DP))
    first, second, third = CountingCell(), CountingCell(), CountingCell()

    run_study(study, tmp_path, progress=False, evaluate=first)
    again = run_study(study, tmp_path, progress=False, evaluate=second)
    changed = StudyConfig("tiny", replace(TINY, rounds=3), (NONE, replace(DP, batch_size=2)))
    recomputed = run_study(changed, tmp_path, progress=False, evaluate=third)

    assert len(first.calls) == 2
    assert second.calls == [] and again.reused == 2 and again.computed == 0
    assert len(third.calls) == 2 and recomputed.reused == 0
    assert len(CellStore(tmp_path / STORE_NAME)) == 4  # stale cells are kept, never reused


def test_no_resume_and_limit(tmp_path: Path) -> None:
    """--no-resume recomputes stored cells; a limit runs only the first cells."""
    study = StudyConfig("tiny", TINY, (NONE, DP))
    run_study(study, tmp_path, progress=False, evaluate=CountingCell(), limit=1)
    again = CountingCell()

    outcome = run_study(study, tmp_path, progress=False, evaluate=again, resume=False)

    assert len(again.calls) == 2 and outcome.reused == 0


def test_a_corrupt_store_is_refused_with_the_fix(tmp_path: Path) -> None:
    """A store line that is not a cell stops the study with one clear error naming the file."""
    (tmp_path / STORE_NAME).write_text("{not json\n")

    with pytest.raises(MedPFLError, match="cells.jsonl line 1") as error:
        run_study(StudyConfig("tiny", TINY, (NONE,)), tmp_path, progress=False, evaluate=CountingCell())
    assert "--no-resume" in error.value.fix


def test_cell_result_round_trips_through_json() -> None:
    """What the store writes is what it reads back."""
    result = _fake_result(DP)

    assert CellResult.from_json(json.loads(json.dumps(result.to_json()))) == result


def test_defense_setting_refuses_a_missing_strength() -> None:
    """A noise defense without a scale is refused at construction, not deep inside a cell."""
    with pytest.raises(MedPFLError, match="takes a strength"):
        DefenseSetting(DefenseKind.LAPLACE)


def test_received_updates_carry_the_filter_defense_and_its_meta() -> None:
    """The server receives the defended update (same keys, different values) with the filter's meta entry."""
    keep_all = {"keep": lambda site, rnd: rnd == 0}
    plain = run_federation(TINY, NONE, **keep_all).received[0]
    noised = run_federation(TINY, replace(NONE, defense=DefenseSetting(DefenseKind.LAPLACE, 0.1)), **keep_all)

    received = noised.received[0]
    assert set(received.update) == set(plain.update)
    assert not np.allclose(received.update["net.classifier.weight"], plain.update["net.classifier.weight"])
    assert received.meta["medpfl_defenses"][0]["defense"] == "laplace_noise"
    assert plain.meta["medpfl_defenses"] == []


def test_dp_sgd_sites_train_the_groupnorm_network_and_declare_their_facts() -> None:
    """DP-SGD: the federation trains the DP-compatible network; updates carry the dp_sgd facts and drawn images."""
    fed = run_federation(TINY, DP_SGD, keep=lambda site, rnd: True)

    assert not any("running_mean" in key for key in fed.global_state)
    for item in fed.received:
        assert item.meta["dp_sgd"]["sample_rate"] == 0.5 and item.meta["dp_sgd"]["noise_multiplier"] == 1.0
        assert set(item.used_positions) <= set(range(TINY.train_per_site))
        assert item.meta["medpfl_defenses"] == []


def test_bn_local_keeps_batchnorm_statistics_at_the_sites() -> None:
    """drop_bn_stats: the global model never receives BN statistics; each site keeps and trains its own."""
    cell = CellConfig("small_cnn", DefenseSetting(DefenseKind.BN_LOCAL), 2, 1)
    initial = initial_network(TINY, cell).state_dict()

    fed = run_federation(TINY, cell, keep=lambda site, rnd: True)

    key = "features.1.running_mean"
    assert torch.equal(fed.global_state[key], initial[key])
    assert all(not torch.equal(local[key], initial[key]) for local in fed.local_states)
    assert all("net." + key not in item.update for item in fed.received)
    assert not torch.equal(fed.global_state["features.0.weight"], initial["features.0.weight"])


def test_an_attack_the_defense_made_inapplicable_is_recorded_not_audited() -> None:
    """BN-prior on an update whose BN statistics stayed local: not audited, with the audit's reason (as the server)."""
    cell = CellConfig("small_cnn", DefenseSetting(DefenseKind.BN_LOCAL), 2, 1, attack="bn_prior")
    received = run_federation(TINY, cell, keep=lambda site, rnd: site == 0 and rnd == 0).received[0]

    leakage = audit_received(TINY, cell, received)

    assert leakage.level == RiskLevel.NOT_AUDITED and leakage.ssim_max is None
    assert leakage.note is not None and "BatchNorm running statistics" in leakage.note


@pytest.mark.slow
def test_leakage_shape_batch_1_high_batch_16_not() -> None:
    """The NVFlare leakage-study shape on one site's round-0 update: batch 1 is reconstructed, batch 16 is not."""
    run = RunConfig(
        image_size=32, sites=1, rounds=1, train_per_site=16, val_images=8, audit=AuditBudget(time_limit_s=60.0)
    )

    batch_1 = evaluate_cell(run, NONE)
    batch_16 = evaluate_cell(replace(run, audit=AuditBudget(time_limit_s=10.0)), replace(NONE, batch_size=16))

    assert batch_1.worst_level == RiskLevel.HIGH and (batch_1.worst_ssim or 0) >= 0.9
    assert batch_16.worst_level != RiskLevel.HIGH and (batch_16.worst_ssim or 0) < 0.6


def test_cli_refuses_an_unknown_preset(tmp_path: Path, capsys) -> None:
    """An unknown preset ends with exit code 2 and one message with its fix; nothing is written."""
    assert main(["study", "--preset", "huge", "--out", str(tmp_path / "out")]) == 2

    err = capsys.readouterr().err
    assert "unknown study preset 'huge'" in err and "fix: use --preset small | seed | full" in err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_zero_cells(tmp_path: Path, capsys) -> None:
    """--cells 0 is a usage error (exit 2) naming the option."""
    with pytest.raises(SystemExit) as stop:
        main(["study", "--cells", "0", "--out", str(tmp_path / "out")])

    assert stop.value.code == 2 and "--cells" in capsys.readouterr().err


def test_cli_refuses_an_output_file(tmp_path: Path, capsys) -> None:
    """--out naming a file is refused before any cell runs."""
    target = tmp_path / "file.txt"
    target.write_text("x")

    assert main(["study", "--out", str(target), "--cells", "1"]) == 2
    assert "is a file" in capsys.readouterr().err
