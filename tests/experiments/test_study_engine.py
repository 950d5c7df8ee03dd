"""The study's engines: the simulator cell's job spec, its ledger/metrics reading, and the engine in the cell key."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from medpfl_app.errors import MedPFLError
from medpfl_app.experiments.study import (
    AuditBudget,
    CellConfig,
    CellResult,
    DefenseKind,
    DefenseSetting,
    Engine,
    RunConfig,
    SiteLeakage,
    StudyConfig,
    WeightInit,
    cell_key,
    run_study,
)
from medpfl_app.experiments.study.config import STUDY_SCHEMA
from medpfl_app.experiments.study.evaluate import evaluate_cell
from medpfl_app.nvflare.jobs.spec import AUDIT_FILTER, AUDIT_SENT_DIGEST, AUDIT_SITE_SCORER
from medpfl_app.nvflare.study_cells import audit_plan, cell_job, simulate_cell
from medpfl_app.nvflare.study_data import write_site_pools
from medpfl_app.nvflare.study_ledger import NO_RECORD, cell_result

SIM = RunConfig(
    image_size=16,
    num_classes=2,
    sites=2,
    rounds=2,
    train_per_site=4,
    val_images=4,
    audit=AuditBudget(iterations=20, time_limit_s=30.0, screening_iterations=0, escalations=0),
    seed=3,
    engine=Engine.SIMULATOR,
)
DP = CellConfig("lenet_sigmoid", DefenseSetting(DefenseKind.CLIENT_DP, 1.5), 2, 3)


def _audit_args(job) -> dict:
    return next(entry["args"] for entry in job.server_result_filters if entry["path"] == AUDIT_FILTER["path"])


def test_cell_job_carries_training_defense_audit_plan_and_no_preflight() -> None:
    """Client DP with the run's clip norm and δ (never seeded), the in-process plan for site-1, B/S/lr, no pre-flight."""
    job = cell_job(SIM, DP)

    audit = _audit_args(job)
    assert job.preflight is None and job.num_rounds == 2 and job.min_clients == 2
    assert job.client_result_filters == (
        {
            "path": "medpfl_app.nvflare.filters.client_dp.ClientDPFilter",
            "args": {"noise_multiplier": 1.5, "clip_norm": 0.5, "delta": 1e-5},
        },
        AUDIT_SENT_DIGEST,
    )
    assert audit["plan"] == {
        **asdict(SIM.audit),
        "attack": "gradinv",
        "seed": 3,
        "sites": ["site-1"],
        "every_n_rounds": 2,
    }
    assert audit["model"] == {"network": "lenet_sigmoid", "image_size": 16, "in_channels": 1, "num_classes": 2}
    assert "store_reconstructions" not in audit and job.client_components == (AUDIT_SITE_SCORER,)
    training = job.training
    assert (training.batch_size, training.max_steps, training.local_epochs) == (2, 3, 2)  # 3 steps of 2 from 4 images
    assert (training.optimizer, training.learning_rate, training.site_overrides) == ("sgd", 0.05, ())
    assert training.dp_noise_multiplier == 0.0 and training.seed == 3


@pytest.mark.parametrize(
    ("defense", "expected"),
    [
        (DefenseSetting(DefenseKind.NONE), ()),
        (DefenseSetting(DefenseKind.DP_SGD, 0.8), ()),
        (
            DefenseSetting(DefenseKind.LAPLACE, 0.01),
            ({"path": "medpfl_app.nvflare.filters.noise.LaplaceNoiseFilter", "args": {"scale": 0.01, "seed": 3}},),
        ),
        (
            DefenseSetting(DefenseKind.QUANTIZATION, 4.0),
            (
                {
                    "path": "medpfl_app.nvflare.filters.compression.UniformQuantizationFilter",
                    "args": {"bits": 4, "seed": 3},
                },
            ),
        ),
        (
            DefenseSetting(DefenseKind.BN_LOCAL),
            ({"path": "medpfl_app.nvflare.filters.batchnorm.DropBatchNormStatsFilter", "args": {}},),
        ),
    ],
)
def test_each_defense_becomes_its_job_filter(defense: DefenseSetting, expected: tuple) -> None:
    """Every defense is the job-level client filter of the same parameters; DP-SGD is the sites' training."""
    job = cell_job(SIM, CellConfig("small_cnn", defense, 1, 1))

    assert job.client_result_filters == (*expected, AUDIT_SENT_DIGEST)
    assert job.training.dp_noise_multiplier == (0.8 if defense.kind is DefenseKind.DP_SGD else 0.0)


def test_the_plan_selects_every_audited_round_and_site() -> None:
    """Rounds 0, 2, 4 of 6 → every 2nd round; round 0 of 5 → every 5th; audited sites are the first ones."""
    spread = replace(SIM, rounds=6, audited_rounds=(0, 2, 4), audited_sites=2)

    assert audit_plan(spread, DP)["every_n_rounds"] == 2
    assert audit_plan(spread, DP)["sites"] == ["site-1", "site-2"]
    assert audit_plan(replace(SIM, rounds=5), DP)["every_n_rounds"] == 5


def test_what_a_job_cannot_express_is_refused_by_name() -> None:
    """The uniform initial weights and an attack the audit does not know fail before any simulation."""
    with pytest.raises(MedPFLError, match="uniform initial weights"):
        cell_job(SIM, replace(DP, init=WeightInit.UNIFORM))
    with pytest.raises(MedPFLError, match="no_such_attack"):
        cell_job(SIM, replace(DP, attack="no_such_attack"))


def _record(site: str, rnd: int, status: str, risk: str, epsilon: float, **extra) -> dict:
    return {
        "schema": "medpfl.audit/2",
        "job_id": "job",
        "site": site,
        "round": rnd,
        "status": status,
        "risk": risk,
        "epsilon": {"client_dp": epsilon, "dp_sgd": None, "delta": 1e-5},
        **extra,
    }


SCORES = {
    "status": "scored",
    "ssim_max": 0.93,
    "ssim_mean": 0.81,
    "psnr_max": 27.5,
    "attack_success_rate": 0.5,
    "label_accuracy": 1.0,
    "identifiability_excess": 0.25,
}
VERDICT = {"schema": "medpfl.verdict/1", "level": "high", "evidence": "close reconstruction", "settle": None}


def _write_run(server: Path, metrics: list[dict]) -> None:
    records = [
        _record(
            "site-1",
            0,
            "audited",
            "high",
            2.5,
            site_scores=SCORES,
            verdict=VERDICT,
            server_indicators={"attack_convergence": "matched"},
            attack_budget={"audit_wall_time_s": 1.25},
            ladder_complete=True,
        ),
        _record("site-2", 0, "audited", "low", 2.5, site_scores={**SCORES, "ssim_max": 0.1}),
        _record("site-1", 1, "not_audited", "not_audited", 3.25, reason="not selected by the audit plan"),
    ]
    (server / "medpfl").mkdir(parents=True)
    (server / "medpfl" / "audit_ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (server / "metrics").mkdir()
    (server / "metrics" / "round_metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def _metrics(rnd: int, accuracy: float, auroc: float | None = None) -> dict:
    values = [{"name": "accuracy", "value": accuracy}] + ([{"name": "auroc", "value": auroc}] if auroc else [])
    return {"round": rnd, "aggregated_metrics": values, "sites": []}


def test_ledger_and_metrics_become_the_cell_result(tmp_path: Path) -> None:
    """Audited (site, round): the record's verdict and scores; last round's utility; the largest formal ε."""
    _write_run(tmp_path, [_metrics(0, 0.25, 0.5), _metrics(1, 0.75, 0.875)])

    result = cell_result(SIM, DP, tmp_path, train_s=60.0)

    assert result.engine == "simulator" and (result.accuracy, result.auc) == (0.75, 0.875)
    assert (result.epsilon, result.delta) == (3.25, 1e-5)
    assert result.sites == (
        SiteLeakage("site-1", 0, "high", 0.93, 27.5, 0.5, 1.0, 0.25, "matched", True, 1.25, ssim_mean=0.81),
    )
    assert result.row()["engine"] == "simulator" and result.row()["verdict"] == "high"


def test_unaudited_and_missing_updates_say_why_and_a_missing_auc_is_none(tmp_path: Path) -> None:
    """A not-selected record keeps its reason, an absent one says so; no ε without a DP defense; AUC None."""
    _write_run(tmp_path, [_metrics(0, 0.5)])
    run = replace(SIM, audited_rounds=(0, 1), audited_sites=2, rounds=3)
    laplace = CellConfig("lenet_sigmoid", DefenseSetting(DefenseKind.LAPLACE, 0.1), 1, 1)

    result = cell_result(run, laplace, tmp_path, train_s=1.0)

    by_key = {(s.site, s.round): s for s in result.sites}
    assert list(by_key) == [("site-1", 0), ("site-2", 0), ("site-1", 1), ("site-2", 1)]
    assert by_key[("site-2", 0)].level == "low" and by_key[("site-2", 0)].ssim_max == 0.1
    assert by_key[("site-1", 1)].level == "not_audited" and "not selected" in str(by_key[("site-1", 1)].note)
    assert by_key[("site-2", 1)].note == NO_RECORD and by_key[("site-2", 1)].ssim_max is None
    assert result.auc is None and result.epsilon is None and result.delta is None


def test_a_run_without_ledger_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MedPFLError, match="no audit ledger"):
        cell_result(SIM, DP, tmp_path, train_s=1.0)


def test_site_pools_are_written_as_datalists(tmp_path: Path) -> None:
    """Each site's datalist lists its training pool (pixels as generated) and its share of the held-out set."""
    import nibabel as nib

    from medpfl_app.experiments.study.federated import site_pools

    root = write_site_pools(SIM, tmp_path, ["site-1", "site-2"])

    datalist = json.loads((root / "site-2" / "datalist.json").read_text())
    first = np.asarray(nib.load(root / "site-2" / datalist["training"][1]["image"]).dataobj)
    assert len(datalist["training"]) == 4 and len(datalist["validation"]) == 2 and len(datalist["classes"]) == 2
    assert [e["label"] for e in datalist["training"]] == site_pools(SIM)[1].labels.tolist()
    np.testing.assert_allclose(first, site_pools(SIM)[1].images[1, 0].numpy(), atol=1e-6)


def test_in_process_keys_are_unchanged_and_the_engine_separates_cells() -> None:
    """An in-process key is the hash of before (no engine field); the simulator's key differs."""
    in_process = replace(SIM, engine=Engine.IN_PROCESS)
    legacy = {k: v for k, v in asdict(in_process).items() if k != "engine"}
    payload = json.dumps({"schema": STUDY_SCHEMA, "run": legacy, "cell": asdict(DP)}, sort_keys=True)

    assert cell_key(in_process, DP) == "sha256:" + hashlib.sha256(payload.encode()).hexdigest()
    assert cell_key(SIM, DP) != cell_key(in_process, DP)


def _fake(engine: str):
    def cell(run: RunConfig, cell: CellConfig) -> CellResult:
        site = SiteLeakage("site-1", 0, "low", 0.1, 9.0, 0.0, 1.0, 0.0, "stalled", True, 0.5)
        return CellResult(cell, 0.5, None, (site,), None, None, "none", "t", "b", 0.1, 0.2, engine=engine)

    return cell


def test_a_simulator_study_never_reuses_in_process_cells_and_says_which_engine_ran(tmp_path: Path) -> None:
    """Same folder, same cell: the simulator engine computes it again; CSV and page name the engine."""
    in_process = StudyConfig("tiny", replace(SIM, engine=Engine.IN_PROCESS), (DP,))
    run_study(in_process, tmp_path, progress=False, evaluate=_fake("in_process"))

    outcome = run_study(StudyConfig("tiny", SIM, (DP,)), tmp_path, progress=False, evaluate=_fake("simulator"))

    assert outcome.computed == 1 and outcome.reused == 0
    rows = list(csv.DictReader((tmp_path / "study.csv").open()))
    assert rows[0]["engine"] == "simulator" and rows[0]["auc"] == ""
    assert "NVFlare simulator (engine simulator)" in (tmp_path / "study.html").read_text()


def test_each_engine_refuses_the_other_engines_run(tmp_path: Path) -> None:
    """No cell function can store its result under the other engine's key."""
    with pytest.raises(MedPFLError, match="needs its cell function"):
        run_study(StudyConfig("tiny", SIM, (DP,)), tmp_path, progress=False)
    with pytest.raises(MedPFLError, match="engine is simulator"):
        evaluate_cell(SIM, DP)
    with pytest.raises(MedPFLError, match="engine is in_process"):
        simulate_cell(replace(SIM, engine=Engine.IN_PROCESS), DP)
