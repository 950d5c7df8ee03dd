"""Pure parts of the audit: site scoring (scalars only), risk policy, plan, record schema, one real audit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from medpfl_app.audit import site_record
from medpfl_app.audit.core import AuditItem, audit_update, not_auditable_reason
from medpfl_app.audit.plan import AuditPlan
from medpfl_app.audit.risk import RiskPolicy, assess_risk
from medpfl_app.audit.scoring import (
    SCORE_KEYS,
    check_scalars_only,
    score_reconstructions,
)
from medpfl_app.audit.site_scorer import (
    REPLY_SCORES,
    SCORE_TOPIC,
    AuditSiteScorer,
    score_request,
)
from medpfl_app.audit.worker import build_record
from medpfl_app.errors import MedPFLError

LEDGER_FIELDS = {
    "job_id", "site", "round", "status", "reason", "model", "versions", "threat_model", "defenses", "filter_history",
    "epsilon", "server_indicators", "site_scores", "risk", "attack_budget",
}


def _images(count: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((count, 1, size, size), generator=generator)


def _assert_scalars(scores: dict) -> None:
    assert set(scores) <= set(SCORE_KEYS)
    for key, value in scores.items():
        assert value is None or isinstance(value, (bool, int, float, str)), (key, type(value))
    assert json.loads(json.dumps(scores)) == scores


def test_scores_are_scalars_and_exact_reconstructions_score_as_leaks() -> None:
    pool = _images(6)
    used = [4, 1]
    scores = score_reconstructions(
        pool[used].numpy(), pool[used], used_positions=used, pool=pool, recovered_labels=[2, 0], true_labels=[2, 0]
    )
    _assert_scalars(scores)
    assert scores["status"] == "scored" and scores["ssim_max"] == pytest.approx(1.0)
    assert scores["attack_success_rate"] == 1.0 and scores["identifiability"] == 1.0
    assert scores["label_accuracy"] == 1.0 and scores["psnr_max"] == 100.0  # infinite PSNR capped for JSON


def test_fewer_reconstructions_than_images_are_paired_and_identifiability_is_withheld() -> None:
    pool = _images(5, seed=1)
    noise = _images(2, seed=2)
    scores = score_reconstructions(noise.numpy(), pool, used_positions=list(range(5)), pool=pool)
    _assert_scalars(scores)
    assert scores["reconstructions_scored"] == 2 and scores["images_used"] == 5
    assert scores["identifiability"] is None
    assert scores["ssim_max"] < 0.5 and scores["attack_success_rate"] == 0.0


def test_scalar_check_refuses_arrays_and_unknown_keys() -> None:
    with pytest.raises(MedPFLError):
        check_scalars_only({"ssim_max": [0.1, 0.2]})
    with pytest.raises(MedPFLError):
        check_scalars_only({"sample_ids": 3})
    with pytest.raises(MedPFLError):
        check_scalars_only({"reason": "x" * 1000})


def test_site_scorer_reply_carries_only_scalars() -> None:
    """What goes back to the server: the reply's scores, no image, no index, no path."""
    site = "site-test-scorer"
    pool = _images(4, seed=3)
    dataset = [{"image": pool[i], "label": torch.tensor(i % 2), "index": torch.tensor(i)} for i in range(4)]
    site_record.clear(site)
    site_record.register_training_data(site, dataset)
    site_record.record_round(site, 3, [2, 2])
    request = Shareable()
    request["round"] = 3
    request["reconstructions"] = pool[[2]].numpy()
    request["labels"] = np.array([0])
    scorer = AuditSiteScorer()
    scorer._site = site
    reply = scorer._on_request(SCORE_TOPIC, request, FLContext())
    scores = reply[REPLY_SCORES]
    _assert_scalars(scores)
    assert scores["ssim_max"] == pytest.approx(1.0) and scores["images_used"] == 1
    assert set(reply.keys()) - {"__headers__"} == {REPLY_SCORES}  # nothing else in the payload
    assert set(reply["__headers__"]) == {"__rc__"}  # and no header beyond the return code
    text = json.dumps(scores)
    assert "/" not in text  # no path
    missing = score_request(site, Shareable({"round": 9, "reconstructions": pool[[0]].numpy()}))
    assert missing["status"] == "unavailable" and "round 9" in missing["reason"]
    site_record.clear(site)


def test_not_auditable_reasons() -> None:
    facts = {"network": "lenet_sigmoid", "image_size": 8, "in_channels": 1, "num_classes": 4}
    good = {"w": np.zeros(3, np.float32)}
    assert not_auditable_reason("WEIGHT_DIFF", good, facts) is None
    assert "processed" in not_auditable_reason("WEIGHT_DIFF", good, {**facts, "processed_algorithm": "CKKS"})
    assert "non-numeric" in not_auditable_reason("WEIGHT_DIFF", {"w": np.array(["x"])}, facts)
    assert "no model tensors" in not_auditable_reason("WEIGHTS", {}, facts)
    assert "model facts" in not_auditable_reason("WEIGHT_DIFF", good, {})


@pytest.mark.parametrize(
    ("scores", "indicators", "epsilon", "expected"),
    [
        ({"status": "scored", "ssim_max": 0.95, "attack_success_rate": 1.0}, {}, {}, "high"),
        ({"status": "scored", "ssim_max": 0.4, "attack_success_rate": 0.0}, {}, {}, "medium"),
        ({"status": "scored", "ssim_max": 0.05, "attack_success_rate": 0.0, "relative_leakage": -0.9}, {}, {}, "low"),
        # a measured leak is never lowered by a formal ε
        ({"status": "scored", "ssim_max": 0.95, "attack_success_rate": 1.0}, {}, {"client_dp": 0.5}, "high"),
        ({"status": "unavailable"}, {"bn_statistics_exposed": True, "images_per_update": 1}, {}, "high"),
        ({"status": "unavailable"}, {"bn_statistics_exposed": True, "images_per_update": 1}, {"dp_sgd": 0.5}, "medium"),
        ({"status": "unavailable"}, {"labels_recovered": True}, {}, "medium"),
        ({"status": "unavailable"}, {}, {}, "unknown"),
    ],
)
def test_risk_policy(scores, indicators, epsilon, expected) -> None:
    assert assess_risk(status="audited", site_scores=scores, server_indicators=indicators, epsilon=epsilon) == expected


def test_risk_policy_is_configurable_and_validated() -> None:
    strict = RiskPolicy.from_dict({"ssim_high": 0.3, "ssim_medium": 0.1})
    scores = {"status": "scored", "ssim_max": 0.35, "attack_success_rate": 0.0}
    assert assess_risk(status="audited", site_scores=scores, server_indicators={}, epsilon={}, policy=strict) == "high"
    assert assess_risk(status="not_audited", site_scores=scores, server_indicators={}, epsilon={}) == "unknown"
    with pytest.raises(MedPFLError):
        RiskPolicy.from_dict({"ssim_high": 0.2, "ssim_medium": 0.5})
    with pytest.raises(MedPFLError):
        RiskPolicy.from_dict({"nonsense": 1})


def test_plan_validation_and_sampling() -> None:
    plan = AuditPlan.from_dict({"every_n_rounds": 2, "sites": ["site-1"]})
    assert plan.selects("site-1", 0) and plan.selects("site-1", 4)
    assert not plan.selects("site-1", 1) and not plan.selects("site-2", 0)
    for bad in ({"attack": "nope"}, {"iterations": 0}, {"options": {"bogus": 1}}, {"unknown": 1},
                {"time_limit_s": 0}, {"time_limit_s": True}, {"options": {"time_limit_s": 5}}):
        with pytest.raises(MedPFLError):
            AuditPlan.from_dict(bad)


def _lenet_item(batch: int = 1, steps: int = 1, lr: float = 0.1) -> tuple[AuditItem, torch.Tensor]:
    from medpfl_app.attacks import UpdateKind
    from medpfl_app.attacks.site import simulate_site_update
    from medpfl_app.models.global_model import build_seeded_network

    net = build_seeded_network("lenet_sigmoid", in_channels=1, num_classes=4, image_size=16, seed=0, dp_sgd=False)
    images = _images(batch, size=16, seed=5)
    site = simulate_site_update(net, images, torch.arange(batch) % 4, kind=UpdateKind.WEIGHT_DIFF,
                                local_steps=steps, learning_rate=lr, batch_size=batch)
    prefix = lambda d: {f"net.{k}": v.numpy() for k, v in d.items()}
    meta = {**site.meta, "network": "lenet_sigmoid", "image_size": 16, "in_channels": 1, "num_classes": 4,
            "state_dict_prefix": "net.", "medpfl_defenses": [{"defense": "laplace", "installed_by": "job"}],
            "filter_history": ["LaplaceNoiseFilter"]}
    item = AuditItem(site="site-1", round=0, job_id="j", data_kind="WEIGHT_DIFF", update=prefix(site.update),
                     global_weights=prefix(site.global_weights), meta=meta)
    return item, images


def test_audit_update_runs_the_plan_and_the_record_has_every_schema_field() -> None:
    item, images = _lenet_item()
    plan = AuditPlan(iterations=30)
    outcome = audit_update(item, plan)
    assert outcome.reconstructions is not None and outcome.reconstructions.shape == tuple(images.shape)
    assert outcome.server_indicators["labels_recovered"] is True
    assert outcome.attack_budget["iterations"] <= 30 and outcome.attack_budget["attack"] == "gradinv"
    assert outcome.model["network"] == "lenet_sigmoid" and outcome.model["config_hash"].startswith("sha256:")
    record = build_record(job_id="j", site="site-1", round_number=0, status="audited", reason=None, meta=item.meta,
                          outcome=outcome, site_scores={"status": "scored", "ssim_max": 0.1}, policy=RiskPolicy(),
                          plan=plan, versions={"torch": torch.__version__})
    assert LEDGER_FIELDS <= set(record)
    assert record["defenses"][0]["defense"] == "laplace" and record["filter_history"] == ["LaplaceNoiseFilter"]
    assert "declared" in record["threat_model"] and record["risk"] == "low"


def test_large_updates_are_attacked_with_a_bounded_reduced_budget() -> None:
    item, _ = _lenet_item(batch=4, steps=3)
    outcome = audit_update(item, AuditPlan(iterations=5, max_images=2))
    assert outcome.reconstructions.shape[0] == 2
    assert "attacked as 2 images" in outcome.attack_budget["reduced"]
    assert outcome.server_indicators["images_per_update"] == 4


def test_the_attack_time_limit_is_applied_and_recorded() -> None:
    """A plan's wall-clock limit stops the attack (any step takes longer than 1 µs); the budget record says why."""
    item, _ = _lenet_item()
    outcome = audit_update(item, AuditPlan(iterations=40, time_limit_s=1e-6))
    assert outcome.attack_budget["time_limit_s"] == 1e-6 and outcome.attack_budget["stop_reason"] == "time_limit"
    assert outcome.attack_budget["iterations"] == 1 and outcome.server_indicators["attack_stop_reason"] == "time_limit"
    assert AuditPlan().time_limit_s == 120.0 and AuditPlan.from_dict({"time_limit_s": None}).time_limit_s is None


def test_missing_global_weights_are_refused() -> None:
    item, _ = _lenet_item()
    no_weights = AuditItem(site="s", round=1, job_id="j", data_kind="WEIGHT_DIFF", update=item.update,
                           global_weights=None, meta=item.meta)
    with pytest.raises(MedPFLError, match="no global weights"):
        audit_update(no_weights, AuditPlan(iterations=1))


def test_site_scorer_holds_the_end_until_scored_or_released() -> None:
    from nvflare.apis.fl_exception import NotReadyToEndRun

    from medpfl_app.audit.site_scorer import RELEASE_TOPIC

    site = "site-test-end"
    site_record.clear(site)
    site_record.record_round(site, 0, [1])
    scorer = AuditSiteScorer(wait_at_end_s=60)
    scorer._site = site
    with pytest.raises(NotReadyToEndRun):
        scorer._check_end(FLContext())
    scorer._on_release(RELEASE_TOPIC, Shareable(), FLContext())
    scorer._check_end(FLContext())  # released by the server: ready
    site_record.clear(site)


def test_epsilon_so_far_reads_client_dp_and_dp_sgd() -> None:
    from medpfl_app.audit.core import epsilon_so_far

    meta = {
        "medpfl_defenses": [{"defense": "laplace"}, {"defense": "client_dp", "epsilon_total": 3.5, "delta": 1e-5}],
        "dp_sgd": {"epsilon": 8.0, "delta": 1e-6},
    }
    assert epsilon_so_far(meta) == {"client_dp": 3.5, "dp_sgd": 8.0, "delta": 1e-6}
    assert epsilon_so_far({}) == {"client_dp": None, "dp_sgd": None, "delta": None}


class _AuxEngine:
    def __init__(self, replies) -> None:
        self.replies = replies
        self.requests: list = []

    def new_context(self):
        return FLContext()

    def send_aux_request(self, targets, topic, request, timeout, fl_ctx, optional=False, secure=False):
        self.requests.append((targets, topic, dict(request)))
        return self.replies


def _reply(code: str = "OK", scores=None) -> Shareable:
    from nvflare.apis.shareable import make_reply

    reply = make_reply(code)
    if scores is not None:
        reply[REPLY_SCORES] = scores
    return reply


@pytest.mark.parametrize(
    ("replies", "reason_part"),
    [
        pytest.param({}, "no reply from site-1", id="unreachable"),
        pytest.param({"site-1": _reply("EXECUTION_EXCEPTION")}, "answered EXECUTION_EXCEPTION", id="error"),
        pytest.param({"site-1": _reply()}, "sent no scores", id="empty"),
    ],
)
def test_unreachable_or_failing_sites_give_unavailable_scores(replies, reason_part) -> None:
    from medpfl_app.audit.server import AuditFilter

    audit = AuditFilter()
    audit._engine = _AuxEngine(replies)
    scores = audit._score_at_site("site-1", 2, np.zeros((1, 1, 16, 16), np.float32), np.array([0]))
    assert scores["status"] == "unavailable" and reason_part in scores["reason"]
    ((targets, topic, request),) = audit._engine.requests
    assert targets == ["site-1"] and topic == SCORE_TOPIC and request["round"] == 2


def test_a_site_reply_with_arrays_is_refused() -> None:
    """Defense in depth: the server refuses site 'scores' that are not scalars (the worker records them unavailable)."""
    from medpfl_app.audit.server import AuditFilter

    audit = AuditFilter()
    audit._engine = _AuxEngine({"site-1": _reply(scores={"status": "scored", "ssim_max": [0.5]})})
    with pytest.raises(MedPFLError):
        audit._score_at_site("site-1", 0, np.zeros((1, 1, 16, 16), np.float32), None)
