"""Pure parts of the audit: site scoring (scalars only), risk policy, plan, record schema, one real audit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from medpfl_app.audit.plan import AuditPlan
from medpfl_app.audit.risk import RiskPolicy
from medpfl_app.audit.scoring import (
    SCORE_KEYS,
    check_scalars_only,
    score_reconstructions,
)
from medpfl_app.audit.update_audit import AuditItem, audit_update, not_auditable_reason
from medpfl_app.audit.update_digest import update_digest
from medpfl_app.audit.worker import build_record
from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.site.scorer import (
    REPLY_REFUSED,
    REPLY_SCORES,
    REQUEST_DIGEST,
    SCORE_TOPIC,
    AuditSiteScorer,
    score_request,
)

LEDGER_FIELDS = {
    "job_id",
    "site",
    "round",
    "status",
    "reason",
    "model",
    "versions",
    "threat_model",
    "defenses",
    "filter_history",
    "epsilon",
    "server_indicators",
    "site_scores",
    "risk",
    "attack_budget",
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


#: site-1's update as it sent it (its digest is recorded at the site) and the server identity it trained for.
SENT_UPDATE = {"fc.weight": np.arange(4, dtype=np.float32).reshape(2, 2)}
SERVER = "server"


def _from_server(scorer: AuditSiteScorer, request: Shareable, *, origin: str = "server.job-parts") -> Shareable:
    """``request`` as NVFlare delivers a server request: from the server's job cell, naming the server."""
    from nvflare.apis.fl_constant import ReservedKey

    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, SERVER, private=False, sticky=False)
    ctx = FLContext()
    ctx.set_peer_context(peer)
    if REQUEST_DIGEST not in request:
        request[REQUEST_DIGEST] = update_digest(SENT_UPDATE)
    return scorer._on_request(SCORE_TOPIC, request, ctx, origin=origin)


def _site_with_a_record(tmp_path, monkeypatch, round_number: int, positions) -> tuple[AuditSiteScorer, torch.Tensor]:
    """A scorer of site-1 in job ``job-parts`` whose training script recorded ``positions`` for ``round_number``
    and whose last result filter recorded sending `SENT_UPDATE` in that round.

    The site's data is a tiny demo set found through ``MEDPFL_DATA_ROOT``; the working folder plays the site
    workspace (as for NVFlare's client job process). Returns the scorer and the site's training images.
    """
    from medpfl_app.audit.round_samples import (
        RoundSamples,
        SentUpdate,
        describe_training_set,
        load_training_pool,
        write_round_samples,
        write_sent_update,
    )
    from medpfl_app.data import DataConfig, generate_demo_dataset, load_site_data, resolve_site_data

    demo = generate_demo_dataset(tmp_path / "demo", num_sites=2, train_per_site=4, val_per_site=0, image_size=16)
    for name in ("MEDPFL_SITE_DATA_CONFIG", "MEDPFL_SITE_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MEDPFL_DATA_ROOT", str(demo.root))
    workspace = tmp_path / "site-1"
    workspace.mkdir()
    monkeypatch.chdir(workspace)
    items = load_site_data(resolve_site_data("site-1").datalist, site="site-1", num_classes=4).training
    training_set = describe_training_set(items, DataConfig(image_size=16), 4)
    run_dir = workspace / "job-parts"
    run_dir.mkdir()
    write_round_samples(
        run_dir,
        RoundSamples(
            job_id="job-parts", site="site-1", round=round_number, positions=tuple(positions), training_set=training_set
        ),
    )
    write_sent_update(
        run_dir,
        SentUpdate(
            job_id="job-parts",
            site="site-1",
            round=round_number,
            digest=update_digest(SENT_UPDATE),
            server_identity=SERVER,
        ),
    )
    scorer = AuditSiteScorer()
    scorer._bind("site-1", "job-parts", run_dir)
    return scorer, load_training_pool("site-1", training_set).images


def test_site_scorer_reply_carries_only_scalars(tmp_path, monkeypatch) -> None:
    """What goes back to the server: the reply's scores, no image, no index, no path."""
    scorer, pool = _site_with_a_record(tmp_path, monkeypatch, 3, [2, 2])
    request = Shareable()
    request["round"] = 3
    request["reconstructions"] = pool[[2]].numpy()
    request["labels"] = np.array([0])
    reply = _from_server(scorer, request)
    scores = reply[REPLY_SCORES]
    _assert_scalars(scores)
    assert scores["ssim_max"] == pytest.approx(1.0) and scores["images_used"] == 1
    assert set(reply.keys()) - {"__headers__"} == {REPLY_SCORES}  # nothing else in the payload
    assert set(reply["__headers__"]) == {"__rc__"}  # and no header beyond the return code
    text = json.dumps(scores)
    assert "/" not in text  # no path
    missing = _from_server(scorer, Shareable({"round": 9, "reconstructions": pool[[0]].numpy()}))
    assert missing[REPLY_SCORES]["status"] == "unavailable" and "round 9" in missing[REPLY_REFUSED]
    assert score_request("the site has no record", Shareable())["reason"] == "the site has no record"


def test_site_scorer_says_why_it_cannot_score_naming_no_path(tmp_path, monkeypatch) -> None:
    """Data gone or changed since training: 'unavailable' with a reason, never a path or a wrong score."""
    scorer, pool = _site_with_a_record(tmp_path, monkeypatch, 0, [1])
    request = Shareable({"round": 0, "reconstructions": pool[[1]].numpy()})
    monkeypatch.delenv("MEDPFL_DATA_ROOT")
    gone = _from_server(scorer, request)[REPLY_SCORES]
    assert gone == {"status": "unavailable", "reason": "the site's training data was not found"}
    unstarted = _from_server(AuditSiteScorer(), Shareable(request), origin="server")[REPLY_SCORES]
    assert unstarted["status"] == "unavailable" and "not started" in unstarted["reason"]
    for scores in (gone, unstarted):
        assert str(tmp_path) not in json.dumps(scores)


def test_not_auditable_reasons() -> None:
    facts = {"network": "lenet_sigmoid", "image_size": 8, "in_channels": 1, "num_classes": 4}
    good = {"w": np.zeros(3, np.float32)}
    assert not_auditable_reason("WEIGHT_DIFF", good, facts) is None
    # auditability is decided from the payload: a plaintext update claiming encryption is still audited
    assert not_auditable_reason("WEIGHT_DIFF", good, {**facts, "processed_algorithm": "CKKS"}) is None
    assert "CKKS" in not_auditable_reason(
        "WEIGHT_DIFF", {"w": np.array([b"x"])}, {**facts, "processed_algorithm": "CKKS"}
    )
    assert "non-numeric" in not_auditable_reason("WEIGHT_DIFF", {"w": np.array(["x"])}, facts)
    assert "no model tensors" in not_auditable_reason("WEIGHTS", {}, facts)
    assert "model facts" in not_auditable_reason("WEIGHT_DIFF", good, {})


def test_plan_validation_and_sampling() -> None:
    plan = AuditPlan.from_dict({"every_n_rounds": 2, "sites": ["site-1"]})
    assert plan.selects("site-1", 0) and plan.selects("site-1", 4)
    assert not plan.selects("site-1", 1) and not plan.selects("site-2", 0)
    for bad in (
        {"attack": "nope"},
        {"iterations": 0},
        {"options": {"bogus": 1}},
        {"unknown": 1},
        {"time_limit_s": 0},
        {"time_limit_s": True},
        {"options": {"time_limit_s": 5}},
        {"time_limit_s": float("nan")},
        {"sites": "site-1"},
        {"escalations": -1},
        {"escalation_factor": 1},
    ):
        with pytest.raises(MedPFLError):
            AuditPlan.from_dict(bad)


def _lenet_item(batch: int = 1, steps: int = 1, lr: float = 0.1) -> tuple[AuditItem, torch.Tensor]:
    from medpfl_app.attacks import UpdateKind
    from medpfl_app.attacks.simulated_site import simulate_site_update
    from medpfl_app.models.global_model import build_seeded_network

    net = build_seeded_network("lenet_sigmoid", in_channels=1, num_classes=4, image_size=16, seed=0, dp_sgd=False)
    images = _images(batch, size=16, seed=5)
    site = simulate_site_update(
        net,
        images,
        torch.arange(batch) % 4,
        kind=UpdateKind.WEIGHT_DIFF,
        local_steps=steps,
        learning_rate=lr,
        batch_size=batch,
    )

    def prefix(tensors):
        return {f"net.{k}": v.numpy() for k, v in tensors.items()}

    meta = {
        **site.meta,
        "network": "lenet_sigmoid",
        "image_size": 16,
        "in_channels": 1,
        "num_classes": 4,
        "state_dict_prefix": "net.",
        "medpfl_defenses": [{"defense": "laplace", "installed_by": "job"}],
        "filter_history": ["LaplaceNoiseFilter"],
    }
    item = AuditItem(
        site="site-1",
        round=0,
        job_id="j",
        data_kind="WEIGHT_DIFF",
        update=prefix(site.update),
        global_weights=prefix(site.global_weights),
        meta=meta,
    )
    return item, images


def test_audit_update_runs_the_plan_and_the_record_has_every_schema_field() -> None:
    item, images = _lenet_item()
    plan = AuditPlan(iterations=30, escalations=0)
    outcome = audit_update(item, plan)
    assert outcome.reconstructions is not None and outcome.reconstructions.shape == tuple(images.shape)
    assert outcome.server_indicators["labels_recovered"] is True
    assert outcome.attack_budget["iterations"] <= plan.screening_iterations + 30
    assert outcome.attack_budget["attack"] == "gradinv" and outcome.ladder[0]["stage"] == "screening"
    assert outcome.model["network"] == "lenet_sigmoid" and outcome.model["config_hash"].startswith("sha256:")
    record = build_record(
        job_id="j",
        site="site-1",
        round_number=0,
        status="audited",
        reason=None,
        meta=item.meta,
        outcome=outcome,
        site_scores={"status": "scored", "ssim_max": 0.1},
        policy=RiskPolicy(),
        plan=plan,
        versions={"torch": torch.__version__},
    )
    assert LEDGER_FIELDS <= set(record)
    assert record["defenses"][0]["defense"] == "laplace" and record["filter_history"] == ["LaplaceNoiseFilter"]
    assert "declared" in record["threat_model"] and record["risk"] == record["verdict"]["level"]
    assert record["risk"] in ("low", "inconclusive") and record["verdict"]["evidence"]
    assert record["metric_settings"]["ssim"]["sigma"] == 1.5 and record["ladder"] == list(outcome.ladder)


def test_large_updates_are_attacked_whole_or_not_at_all() -> None:
    """A multi-step update is attacked whole (every image, every step); above the plan's caps it is not attacked."""
    item, _ = _lenet_item(batch=4, steps=3)
    outcome = audit_update(item, AuditPlan(iterations=5, escalations=0))
    assert outcome.reconstructions.shape[0] == 4 and outcome.server_indicators["images_per_update"] == 4
    assert outcome.ladder[0]["local_steps"] == 3 and outcome.ladder[0]["whole_update"] is True
    capped = audit_update(item, AuditPlan(iterations=5, max_images=2))
    assert capped.reconstructions is None and "max_images 2" in capped.attack_budget["not_attacked"]


def test_the_attack_time_limit_is_applied_and_recorded() -> None:
    """A plan's wall-clock budget stops the ladder (any step takes longer than 1 µs); the budget record says why."""
    item, _ = _lenet_item()
    outcome = audit_update(item, AuditPlan(iterations=40, time_limit_s=1e-6))
    assert outcome.attack_budget["time_budget_s"] == 1e-6 and outcome.attack_budget["stop_reason"] == "time_limit"
    assert outcome.attack_budget["stages_run"] == 1 and outcome.attack_budget["ladder_complete"] is False
    assert outcome.ladder[0]["stage"] == "screening" and outcome.ladder[0]["stop_reason"] == "time_limit"
    assert "raise time_limit_s" in outcome.attack_budget["settle"]
    assert AuditPlan().time_limit_s == 10.0 and AuditPlan.from_dict({"time_limit_s": None}).time_limit_s is None


def test_missing_global_weights_are_refused() -> None:
    item, _ = _lenet_item()
    no_weights = AuditItem(
        site="s", round=1, job_id="j", data_kind="WEIGHT_DIFF", update=item.update, global_weights=None, meta=item.meta
    )
    with pytest.raises(MedPFLError, match="no global weights"):
        audit_update(no_weights, AuditPlan(iterations=1))


def test_site_scorer_holds_the_end_until_released(tmp_path, monkeypatch) -> None:
    """A site that trained holds the end until the server releases it (its audit is done), even once its own last
    round is scored: in the simulator the first site to end ends every site. It says so through NVFlare's "not
    ready" property, never by raising (a raise is logged as an ERROR traceback at every check)."""
    from medpfl_app.nvflare.end_of_run import holds_end_of_run
    from medpfl_app.nvflare.site.scorer import RELEASE_TOPIC

    def holds(scorer: AuditSiteScorer) -> bool:
        ctx = FLContext()
        scorer._check_end(ctx)
        return holds_end_of_run(ctx)

    scorer, _ = _site_with_a_record(tmp_path, monkeypatch, 0, [1])
    scorer.wait_at_end_s, scorer.check_wait_s = 60, 0.0
    assert holds(scorer)
    scorer._on_release(RELEASE_TOPIC, Shareable(), FLContext(), origin="site-2.job-parts")
    assert holds(scorer)  # another site cannot release it
    scorer._on_release(RELEASE_TOPIC, Shareable(), FLContext(), origin="server.job-parts")
    assert not holds(scorer)  # released by the server: ready

    scored, pool = _site_with_a_record(tmp_path / "again", monkeypatch, 0, [1])
    scored.wait_at_end_s, scored.check_wait_s = 60, 0.0
    _from_server(scored, Shareable({"round": 0, "reconstructions": pool[[1]].numpy()}))
    assert holds(scored)  # scored, but other sites' audits may still need this run
    never = _site_with_a_record(tmp_path / "never", monkeypatch, 0, [1])[0]
    never.wait_at_end_s = 0.0
    assert not holds(never)  # no waiting configured: ready
    untrained = AuditSiteScorer()
    untrained._bind("site-1", "job-none", tmp_path / "no-rounds")
    assert not holds(untrained)  # trained no round: nothing to wait for


def test_epsilon_so_far_reads_client_dp_and_dp_sgd() -> None:
    from medpfl_app.audit.update_audit import epsilon_so_far

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


def _reply(code: str = "OK", scores=None, refused: str | None = None) -> Shareable:
    from nvflare.apis.shareable import make_reply

    reply = make_reply(code)
    if scores is not None:
        reply[REPLY_SCORES] = scores
    if refused is not None:
        reply[REPLY_REFUSED] = refused
    return reply


def _received(round_number: int = 2) -> AuditItem:
    """The server's copy of site-1's update (`SENT_UPDATE`) of ``round_number``."""
    return AuditItem(
        site="site-1",
        round=round_number,
        job_id="job-parts",
        data_kind="WEIGHT_DIFF",
        update={k: v.copy() for k, v in SENT_UPDATE.items()},
        global_weights=None,
    )


@pytest.mark.parametrize(
    ("replies", "reason_part"),
    [
        pytest.param({}, "no reply from site-1", id="unreachable"),
        pytest.param({"site-1": _reply("EXECUTION_EXCEPTION")}, "answered EXECUTION_EXCEPTION", id="error"),
        pytest.param({"site-1": _reply()}, "sent no scores", id="empty"),
        pytest.param(
            {
                "site-1": _reply(
                    scores={"status": "unavailable", "reason": "refused: replay"}, refused="refused: replay"
                )
            },
            "site-1 refused the score request: refused: replay",
            id="refused",
        ),
    ],
)
def test_unreachable_or_failing_sites_give_unavailable_scores(replies, reason_part) -> None:
    from medpfl_app.nvflare.server.audit_filter import AuditFilter

    audit = AuditFilter()
    audit._engine = _AuxEngine(replies)
    scores = audit._score_at_site(_received(), np.zeros((1, 1, 16, 16), np.float32), np.array([0]))
    assert scores["status"] == "unavailable" and reason_part in scores["reason"]
    ((targets, topic, request),) = audit._engine.requests
    assert targets == ["site-1"] and topic == SCORE_TOPIC and request["round"] == 2
    assert request[REQUEST_DIGEST] == update_digest(SENT_UPDATE)  # names the update as received


def test_a_site_reply_with_arrays_is_refused() -> None:
    """Defense in depth: the server refuses site 'scores' that are not scalars (the worker records them unavailable)."""
    from medpfl_app.nvflare.server.audit_filter import AuditFilter

    audit = AuditFilter()
    audit._engine = _AuxEngine({"site-1": _reply(scores={"status": "scored", "ssim_max": [0.5]})})
    with pytest.raises(MedPFLError):
        audit._score_at_site(_received(0), np.zeros((1, 1, 16, 16), np.float32), None)
