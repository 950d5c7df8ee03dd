"""The typed contracts that cross a process or a file: round trips, refusals, and the wire format of before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medpfl_app.audit.facts import validate_meta
from medpfl_app.audit.ledger import AuditLedger, read_ledger
from medpfl_app.audit.plan import AuditPlan
from medpfl_app.audit.risk import RiskPolicy
from medpfl_app.audit.worker import build_record, metric_settings
from medpfl_app.contracts import (
    AUDIT_RECORD_SCHEMA,
    FACT_KEYS,
    SCORE_KEYS,
    AuditRecord,
    RecordStatus,
    ScoreReply,
    ScoreRequest,
    ScoreStatus,
    TrainingFacts,
)
from medpfl_app.contracts.training_facts import InvalidMeta
from medpfl_app.contracts.verdict import RiskLevel, Verdict
from medpfl_app.errors import MedPFLError

DP_SGD = {
    "noise_multiplier": 1.0,
    "max_grad_norm": 1.0,
    "delta": 1e-5,
    "epsilon": 2.5,
    "guarantee": "g",
    "accountant": "rdp",
    "sample_rate": 0.25,
    "steps_total": 4,
    "poisson_sampling": True,
    "secure_mode": False,
    "epsilon_scope": "this job",
}


def _facts() -> TrainingFacts:
    return TrainingFacts(
        batch_size=4,
        batch_sizes=(2, 4),
        local_steps=3,
        local_epochs=1,
        learning_rate=0.01,
        optimizer="adam",
        num_train_images=10,
        num_images_seen=10,
        bn_buffers_included=True,
        bn_momentum=0.1,
        network="small_cnn",
        image_size=32,
        in_channels=1,
        num_classes=4,
        state_dict_prefix="net.",
        torch_version="2.4.0",
        dp_sgd=DP_SGD,
    )


def test_training_facts_wire_format_is_the_meta_of_before() -> None:
    """The meta a site sends is the flat dict the callback built by hand, every key present, None when unknown."""
    old_meta = {
        "medpfl_facts_version": 1,
        "batch_size": 4,
        "batch_sizes": [2, 4],
        "local_steps": 3,
        "local_epochs": 1,
        "learning_rate": 0.01,
        "optimizer": "adam",
        "num_train_images": 10,
        "num_images_seen": 10,
        "bn_buffers_included": True,
        "bn_momentum": 0.1,
        "network": "small_cnn",
        "image_size": 32,
        "in_channels": 1,
        "num_classes": 4,
        "state_dict_prefix": "net.",
        "torch_version": "2.4.0",
        "dp_sgd": DP_SGD,
    }
    assert _facts().to_json() == old_meta and list(_facts().to_json()) == list(FACT_KEYS)
    unknown = TrainingFacts(batch_size=4).to_json()
    assert unknown["bn_momentum"] is None and unknown["dp_sgd"] is None and set(unknown) == set(FACT_KEYS)


def test_training_facts_round_trip_and_the_audit_reads_them() -> None:
    """from_json(to_json) is the same facts (through JSON too); validate_meta keeps the declared ones."""
    facts = _facts()
    assert TrainingFacts.from_json(json.loads(json.dumps(facts.to_json()))) == facts
    checked = validate_meta({**facts.to_json(), "NUM_STEPS_CURRENT_ROUND": 3}, model=None)
    assert checked == {**facts.declared(), "NUM_STEPS_CURRENT_ROUND": 3}
    assert "bn_momentum" in checked and TrainingFacts.from_json({}) == TrainingFacts(medpfl_facts_version=None)


@pytest.mark.parametrize(
    ("meta", "named"),
    [
        pytest.param({"medpfl_facts_version": 2}, "medpfl_facts_version 2 is not understood", id="newer-version"),
        pytest.param({"batch_size": "8"}, "batch_size must be an integer", id="wrong-type"),
        pytest.param({"batch_sizes": 8}, "batch_sizes must be a list", id="wrong-container"),
        pytest.param({"bn_buffers_included": 1}, "bn_buffers_included must be true or false", id="not-a-bool"),
        pytest.param(["batch_size", 8], "not a mapping", id="not-a-mapping"),
    ],
)
def test_training_facts_reader_refuses_what_it_does_not_understand(meta, named) -> None:
    with pytest.raises(InvalidMeta, match=named) as raised:
        TrainingFacts.from_json(meta)
    assert isinstance(raised.value, MedPFLError) and raised.value.fix


def _scored() -> ScoreReply:
    return ScoreReply(
        status=ScoreStatus.SCORED,
        psnr_mean=20.0,
        psnr_max=31.5,
        ssim_mean=0.4,
        ssim_max=0.93,
        attack_success_rate=0.5,
        label_accuracy=1.0,
        identifiability=0.5,
        identifiability_chance=0.1,
        identifiability_excess=0.4,
        identifiability_p_value=0.001,
        relative_leakage=0.2,
        ssim_threshold=0.9,
        images_used=2,
        reconstructions_scored=2,
    )


def test_score_reply_wire_format_is_the_dict_of_before() -> None:
    """A scored reply carries exactly `SCORE_KEYS`; an unavailable one exactly status and reason, as before."""
    old_scored = {
        "status": "scored",
        "reason": None,
        "psnr_mean": 20.0,
        "psnr_max": 31.5,
        "ssim_mean": 0.4,
        "ssim_max": 0.93,
        "attack_success_rate": 0.5,
        "label_accuracy": 1.0,
        "identifiability": 0.5,
        "identifiability_chance": 0.1,
        "identifiability_excess": 0.4,
        "identifiability_p_value": 0.001,
        "relative_leakage": 0.2,
        "ssim_threshold": 0.9,
        "images_used": 2,
        "reconstructions_scored": 2,
    }
    assert _scored().to_json() == old_scored and tuple(_scored().to_json()) == SCORE_KEYS
    assert ScoreReply.unavailable("refused: replay").to_json() == {"status": "unavailable", "reason": "refused: replay"}
    assert isinstance(_scored().to_json()["status"], str) and not isinstance(_scored().to_json()["status"], ScoreStatus)


def test_score_reply_round_trips() -> None:
    for reply in (_scored(), ScoreReply.unavailable("no record of round 3")):
        assert ScoreReply.from_json(json.loads(json.dumps(reply.to_json()))) == reply
    partial = ScoreReply.from_json({"status": "scored", "ssim_max": 1})  # an int score is read as a float
    assert partial.ssim_max == 1.0 and isinstance(partial.ssim_max, float) and partial.psnr_max is None


@pytest.mark.parametrize(
    ("values", "named"),
    [
        pytest.param({"ssim_max": 0.5}, "no known status", id="missing-status"),
        pytest.param({"status": "leaked"}, "no known status", id="unknown-status"),
        pytest.param({"status": "scored", "ssim_max": "high"}, "'ssim_max' is a str, not a float", id="wrong-type"),
        pytest.param({"status": "scored", "images_used": 2.5}, "'images_used' is a float, not a int", id="not-count"),
        pytest.param({"status": "scored", "ssim_max": True}, "'ssim_max' is a bool", id="bool"),
        pytest.param({"status": "scored", "sample_ids": [3]}, "not allowed to leave the site", id="unknown-key"),
        pytest.param({"status": "scored", "ssim_max": [0.5]}, "not a scalar", id="array"),
        pytest.param({"status": "unavailable", "ssim_max": 0.5}, "unavailable score reply carries", id="leaky"),
        pytest.param("scored", "not a mapping", id="not-a-mapping"),
    ],
)
def test_score_reply_reader_refuses_what_it_does_not_understand(values, named) -> None:
    with pytest.raises(MedPFLError, match=named):
        ScoreReply.from_json(values)


def test_score_request_wire_format_and_round_trip() -> None:
    """The request's entries are those the server set by hand before; the site reads them back, typed."""
    recon = np.random.default_rng(0).random((2, 1, 8, 8))
    request = ScoreRequest(
        round=3,
        update_digest="sha256:ab",
        reconstructions=recon,
        labels=[1, 0],
        ssim_threshold=0.8,
        originals_wanted=True,
    )
    old = {
        "round": 3,
        "update_digest": "sha256:ab",
        "reconstructions": np.ascontiguousarray(recon, dtype=np.float32),
        "labels": np.asarray([1, 0], dtype=np.int64).reshape(-1),
        "ssim_threshold": 0.8,
        "originals_wanted": True,
    }
    wire = request.to_json()
    assert list(wire) == list(old)
    for key, value in old.items():
        if isinstance(value, np.ndarray):
            assert wire[key].dtype == value.dtype and np.array_equal(wire[key], value)
        else:
            assert wire[key] == value and type(wire[key]) is type(value)
    assert "originals_wanted" not in ScoreRequest(round=3, update_digest=None, reconstructions=recon).to_json()
    back = ScoreRequest.from_json({**wire, "__headers__": {}})  # NVFlare's own entries are not the contract's
    assert back.round == 3 and back.update_digest == "sha256:ab" and back.originals_wanted is True
    assert np.array_equal(back.reconstructions, old["reconstructions"]) and back.labels.tolist() == [1, 0]
    assert back.ssim_threshold == 0.8 and back.to_json().keys() == wire.keys()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        pytest.param({"reconstructions": None}, "not a 4-D float32 array", id="missing-reconstructions"),
        pytest.param({"reconstructions": np.zeros((1, 8, 8))}, "not a 4-D float32 array", id="wrong-shape"),
        pytest.param({"labels": [1]}, "not a 1-D integer array", id="labels-list"),
        pytest.param({"round": "3"}, "no valid round", id="round-string"),
        pytest.param({"ssim_threshold": 1.5}, "not a number in", id="threshold"),
        pytest.param({"originals_wanted": "yes"}, "not true or false", id="not-a-bool"),
        pytest.param({"sample_index": 4}, "unknown entries", id="unknown-key"),
    ],
)
def test_score_request_reader_refuses_what_it_does_not_understand(change, named) -> None:
    wire = ScoreRequest(round=1, update_digest="d", reconstructions=np.zeros((1, 1, 8, 8))).to_json()
    with pytest.raises(MedPFLError, match=named):
        ScoreRequest.from_json({**wire, **change})


def _record(**changes) -> dict:
    return build_record(
        job_id="job",
        site="site-1",
        round_number=2,
        status=changes.pop("status", "not_audited"),
        reason="audit queue full",
        meta={"network": "small_cnn", "num_classes": 4, "batch_size": 4, "medpfl_defenses": [{"defense": "laplace"}]},
        outcome=None,
        site_scores=None,
        policy=RiskPolicy(),
        plan=AuditPlan(),
        versions={"torch": "2.4.0"},
        settings=metric_settings(0.9),
    )


def test_audit_record_is_the_dict_of_before() -> None:
    """`build_record` returns the same record the worker wrote by hand, now with its schema."""
    record = _record()
    verdict = Verdict.from_json(record["verdict"])
    old = {
        "job_id": "job",
        "site": "site-1",
        "round": 2,
        "status": "not_audited",
        "reason": "audit queue full",
        "model": {"network": "small_cnn", "num_classes": 4, "config_hash": None, "num_parameters": None},
        "versions": {"torch": "2.4.0"},
        "threat_model": record["threat_model"],
        "defenses": [{"defense": "laplace"}],
        "filter_history": [],
        "epsilon": record["epsilon"],
        "server_indicators": {},
        "site_scores": {"status": "unavailable", "reason": "audit queue full"},
        "risk": "not_audited",
        "verdict": verdict.to_json(),
        "risk_policy": RiskPolicy().to_dict(),
        "attack_budget": {"attack": AuditPlan().attack, "iterations": 0},
        "ladder": [],
        "ladder_complete": False,
        "metric_settings": metric_settings(0.9),
        "training_facts": {
            "batch_size": 4,
            "local_steps": None,
            "learning_rate": None,
            "optimizer": None,
            "num_train_images": None,
            "bn_buffers_included": None,
            "dp_sgd": None,
        },
        "policy_action": None,
    }
    assert record == {"schema": AUDIT_RECORD_SCHEMA, **old}
    assert verdict.level is RiskLevel.NOT_AUDITED


def test_audit_record_round_trips_through_the_ledger(tmp_path: Path) -> None:
    """The ledger line reads back to the same record; only the ledger's time stamp is added."""
    record = _record()
    assert AuditRecord.from_json(record).to_json() == record
    ledger = AuditLedger(tmp_path / "audit_ledger.jsonl")
    written = ledger.append(record)
    (line,) = read_ledger(ledger.path).records
    parsed = AuditRecord.from_json(line)
    assert line == written and parsed.to_json() == written and parsed.time == written["time"]
    assert parsed.status is RecordStatus.NOT_AUDITED and parsed.verdict.level is RiskLevel.NOT_AUDITED
    assert {k: v for k, v in written.items() if k != "time"} == record


def test_schema_1_records_stay_readable() -> None:
    legacy = {"schema": "medpfl.audit/1", "status": "audited", "risk": "unknown", "site": "site-1", "round": 0}
    parsed = AuditRecord.from_json(legacy)
    assert parsed.verdict is None and parsed.risk == "unknown" and parsed.schema == "medpfl.audit/1"
    # schema 1 ran one attack, no ladder: "not recorded" (None), never an empty or incomplete ladder
    assert parsed.ladder is None and parsed.ladder_complete is None
    assert parsed.to_json()["ladder"] is None and parsed.to_json()["ladder_complete"] is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        pytest.param({"schema": "medpfl.audit/3"}, "schema 'medpfl.audit/3' is not one of", id="newer-schema"),
        pytest.param({"schema": None}, "schema None is not one of", id="missing-schema"),
        pytest.param({"status": None}, "status None is not one of", id="missing-status"),
        pytest.param({"risk": "unknown"}, "risk 'unknown' is unknown", id="schema-1-risk-in-schema-2"),
        pytest.param({"round": "2"}, "'round' is a str, not a int", id="wrong-type"),
        pytest.param({"round": True}, "'round' is a bool", id="bool-round"),
        pytest.param({"site_scores": [0.5]}, "'site_scores' is a list, not a Mapping", id="wrong-section"),
        pytest.param({"verdict": {"level": "low"}}, "not a medpfl.verdict/1 verdict", id="bad-verdict"),
        pytest.param({"ladder": [3]}, "not a stage", id="bad-ladder"),
    ],
)
def test_audit_record_reader_refuses_what_it_does_not_understand(change, named) -> None:
    with pytest.raises(MedPFLError, match=named):
        AuditRecord.from_json({**_record(), **change})


def test_the_ledger_skips_a_record_the_contract_refuses(tmp_path: Path) -> None:
    """A line of another schema or with a mistyped field is reported by number, the others are read."""
    ledger = AuditLedger(tmp_path / "audit_ledger.jsonl")
    ledger.append(_record())
    with open(ledger.path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({**_record(), "schema": "medpfl.audit/9"}) + "\n")
        handle.write(json.dumps({**_record(), "round": "two"}) + "\n")
    ledger.append(_record())
    contents = read_ledger(ledger.path)
    assert len(contents.records) == 2 and contents.skipped_lines == (2, 3)
    with pytest.raises(MedPFLError, match="schema 'medpfl.audit/1' is not medpfl.audit/2"):
        ledger.append({**_record(), "schema": "medpfl.audit/1"})
