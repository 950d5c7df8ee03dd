"""A malicious site cannot use another site's audit scorer as an oracle.

The site scorer answers only the server (cellnet origin, then the identity the site trained for), only for an
update the site recorded sending (round and digest), once per update, and only for arrays that fit the site's own
images; everything else is refused before any image is loaded, logged in one line, counted, and answered with a
short reason. These tests run the real component, the real last result filter (`SentUpdateDigest`) and the real
server adapter, wired through NVFlare's own message and context objects instead of a network.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.workspace import Workspace
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.f3.cellnet.defs import MessageHeaderKey
from nvflare.fuel.f3.cellnet.registry import Registry
from nvflare.fuel.f3.message import Message

from medpfl_app.audit.round_samples import (
    RoundSamples,
    describe_training_set,
    load_training_pool,
    read_sent_update,
    write_round_samples,
)
from medpfl_app.audit.scoring import SCORE_KEYS
from medpfl_app.audit.update_audit import AuditItem, copy_arrays
from medpfl_app.audit.update_digest import declared_images, same_digest, update_digest
from medpfl_app.data import DataConfig, generate_demo_dataset, load_site_data, resolve_site_data
from medpfl_app.nvflare.filters.sent_digest import SentUpdateDigest
from medpfl_app.nvflare.site.scorer import (
    RELEASE_TOPIC,
    REPLY_REFUSED,
    REPLY_SCORES,
    REQUEST_DIGEST,
    REQUEST_LABELS,
    REQUEST_RECONSTRUCTIONS,
    REQUEST_ROUND,
    REQUEST_THRESHOLD,
    SCORE_TOPIC,
    AuditSiteScorer,
)

JOB = "job-access"
SITE = "site-1"
SERVER = "simulator_server"
SIZE = 16
ROUND = 1
#: The cells NVFlare's cellnet stamps as ORIGIN: the server's job cell, and the attacking site's job cell.
SERVER_CELL = f"server.{JOB}"
ATTACKER_CELL = f"site-2.{JOB}"


def _update(kind: str = "torch") -> dict:
    """SITE's round update as its last result filter sees it (PyTorch exchange: tensors; NumPy: arrays)."""
    generator = torch.Generator().manual_seed(3)
    update = {
        "conv.weight": torch.randn(2, 1, 3, 3, generator=generator),
        "fc.bias": torch.randn(4, generator=generator),
        "bn.num_batches_tracked": torch.tensor(7),
    }
    return update if kind == "torch" else {name: value.numpy().copy() for name, value in update.items()}


class _WorkspaceEngine:
    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def get_workspace(self) -> Workspace:
        return self.workspace


def _client_ctx(workspace: Path, *, peer_identity: str | None = SERVER) -> FLContext:
    """The client job's context around the ``train`` result: this site, this job, the server as task peer."""
    ctx = FLContext()
    ctx.set_prop(ReservedKey.IDENTITY_NAME, SITE, private=False, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, JOB, private=False, sticky=False)
    for folder in ("startup", "local"):
        (workspace / folder).mkdir(parents=True, exist_ok=True)
    ctx.set_prop(
        ReservedKey.ENGINE,
        _WorkspaceEngine(Workspace(root_dir=str(workspace), site_name=SITE)),
        private=True,
        sticky=False,
    )
    if peer_identity is not None:
        peer = FLContext()
        peer.set_prop(ReservedKey.IDENTITY_NAME, peer_identity, private=False, sticky=False)
        ctx.set_peer_context(peer)
    return ctx


def _result(update: dict, round_number: int = ROUND, meta: dict | None = None) -> Shareable:
    shareable = DXO(
        DataKind.WEIGHT_DIFF, data=update, meta=meta or {"batch_size": 1, "local_steps": 2, "num_train_images": 4}
    ).to_shareable()
    shareable.set_header(AppConstants.CURRENT_ROUND, round_number)
    return shareable


@pytest.fixture()
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """SITE after round `ROUND`: demo data on disk, the training script's record (positions 2 and 0), and the
    update it sent recorded by the real `SentUpdateDigest` filter. Returns ``(scorer, pool, sent update)``."""
    demo = generate_demo_dataset(tmp_path / "demo", num_sites=2, train_per_site=4, val_per_site=0, image_size=SIZE)
    for name in ("MEDPFL_SITE_DATA_CONFIG", "MEDPFL_SITE_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MEDPFL_DATA_ROOT", str(demo.root))
    workspace = tmp_path / SITE
    run_dir = workspace / JOB
    run_dir.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    items = load_site_data(resolve_site_data(SITE).datalist, site=SITE, num_classes=4).training
    training_set = describe_training_set(items, DataConfig(image_size=SIZE), 4)
    write_round_samples(
        run_dir, RoundSamples(job_id=JOB, site=SITE, round=ROUND, positions=(2, 0), training_set=training_set)
    )
    sent = _update()
    SentUpdateDigest().process(_result(sent), _client_ctx(workspace))
    scorer = AuditSiteScorer()
    scorer._bind(SITE, JOB, run_dir)
    return scorer, load_training_pool(SITE, training_set).images, sent


def _request(pool: torch.Tensor, *, digest: str | None, round_number=ROUND, **fields) -> Shareable:
    request = Shareable()
    request[REQUEST_ROUND] = round_number
    request[REQUEST_DIGEST] = digest
    request[REQUEST_RECONSTRUCTIONS] = pool[[2, 0]].numpy()
    request[REQUEST_LABELS] = np.array([1, 0], np.int64)
    request[REQUEST_THRESHOLD] = 0.9
    request.update(fields)
    return request


def _ask(
    scorer: AuditSiteScorer, request: Shareable, *, origin: str | None = SERVER_CELL, claimed: str | None = SERVER
) -> Shareable:
    """Deliver ``request`` to the scorer's handler as NVFlare would: the sender's peer props, the cell's origin."""
    ctx = FLContext()
    if claimed is not None:
        peer = FLContext()
        peer.set_prop(ReservedKey.IDENTITY_NAME, claimed, private=False, sticky=False)
        ctx.set_peer_context(peer)
    return scorer._on_request(SCORE_TOPIC, request, ctx, origin=origin)


def _assert_refused(reply: Shareable, reason_part: str) -> None:
    assert reply.get_return_code() == ReturnCode.OK
    assert set(reply.keys()) - {"__headers__"} == {REPLY_SCORES, REPLY_REFUSED}
    assert reply[REPLY_SCORES] == {"status": "unavailable", "reason": reply[REPLY_REFUSED]}
    assert reason_part in reply[REPLY_REFUSED] and len(reply[REPLY_REFUSED]) < 200
    assert "/" not in reply[REPLY_REFUSED]  # no path


def _no_image_loading(scorer: AuditSiteScorer) -> None:
    def refuse_to_load(training_set):
        pytest.fail("the scorer loaded the site's images for a request it must refuse")

    scorer._training_pool = refuse_to_load


# --- 1. only the server -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("origin", "claimed", "reason_part"),
    [
        pytest.param(ATTACKER_CELL, "site-2", "did not come from the server", id="another-client"),
        pytest.param(ATTACKER_CELL, SERVER, "did not come from the server", id="client-claiming-the-server-name"),
        pytest.param("site-2", SERVER, "did not come from the server", id="client-parent-cell"),
        pytest.param("server.other-job", SERVER, "did not come from the server", id="another-jobs-server"),
        pytest.param("serverx.job-access", SERVER, "did not come from the server", id="look-alike-cell"),
        pytest.param(None, SERVER, "did not come from the server", id="unverified-aux-dispatch"),
        pytest.param(SERVER_CELL, "site-2", "does not name the server", id="server-cell-other-name"),
        pytest.param(SERVER_CELL, None, "does not name the server", id="server-cell-no-name"),
    ],
)
def test_requests_not_from_the_server_are_refused_without_using_up_the_update(
    site, caplog: pytest.LogCaptureFixture, origin, claimed, reason_part
) -> None:
    """Another client, even one that writes the server's name into its peer context (it can: the peer props are the
    sender's), is refused before anything is read; it cannot burn the server's one request for the update."""
    scorer, pool, sent = site
    honest_digest = update_digest(sent)
    _no_image_loading(scorer)
    with caplog.at_level(logging.WARNING):
        reply = _ask(scorer, _request(pool, digest=honest_digest), origin=origin, claimed=claimed)
    _assert_refused(reply, reason_part)
    assert scorer.refusal_counts() == {"not_server": 1}
    (line,) = [r for r in caplog.records if "refused a score request" in r.getMessage()]
    assert "\n" not in line.getMessage() and line.exc_info is None  # one line, no traceback
    del scorer._training_pool  # the honest server's request still gets its scores
    honest = _ask(scorer, _request(pool, digest=honest_digest))
    assert honest[REPLY_SCORES]["status"] == "scored" and REPLY_REFUSED not in honest


def test_a_non_shareable_request_is_refused() -> None:
    reply = AuditSiteScorer()._on_request(SCORE_TOPIC, {"round": 1}, FLContext(), origin=SERVER_CELL)
    _assert_refused(reply, "not a Shareable")


# --- 2. only for an update this site sent -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "reason_part"),
    [
        pytest.param({REQUEST_DIGEST: None}, "digest does not match", id="no-digest"),
        pytest.param({REQUEST_DIGEST: "sha256:" + "0" * 64}, "digest does not match", id="wrong-digest"),
        pytest.param({REQUEST_DIGEST: "sha256:" + "A" * 64}, "digest does not match", id="malformed-digest"),
        pytest.param({REQUEST_ROUND: 0}, "sent no update in round 0", id="round-not-sent"),
        pytest.param({REQUEST_ROUND: "1"}, "no valid round", id="round-string"),
        pytest.param({REQUEST_ROUND: True}, "no valid round", id="round-bool"),
    ],
)
def test_a_request_for_an_update_this_site_did_not_send_is_refused(site, change, reason_part) -> None:
    scorer, pool, sent = site
    _no_image_loading(scorer)
    request = _request(pool, digest=update_digest(sent))
    request.update(change)
    _assert_refused(_ask(scorer, request), reason_part)
    assert sum(scorer.refusal_counts().values()) == 1


def test_a_digest_of_another_update_is_refused(site) -> None:
    """The server must name what it received: a changed entry, dtype or shape is another update."""
    scorer, pool, sent = site
    _no_image_loading(scorer)
    changed = dict(sent, **{"fc.bias": sent["fc.bias"] + 1e-6})
    for other in (changed, {k: v.double() for k, v in sent.items()}, {"conv.weight": sent["conv.weight"]}):
        _assert_refused(_ask(scorer, _request(pool, digest=update_digest(other))), "digest does not match")
    assert scorer.refusal_counts() == {"wrong_update": 3}


# --- 3. once per update, bounded ----------------------------------------------------------------------------------
def test_a_second_request_for_the_same_update_is_refused(site, caplog: pytest.LogCaptureFixture) -> None:
    """Replaying the server's request (or the server asking twice) gets no second set of scores."""
    scorer, pool, sent = site
    request = _request(pool, digest=update_digest(sent))
    first = _ask(scorer, request)
    assert first[REPLY_SCORES]["status"] == "scored" and first[REPLY_SCORES]["ssim_max"] == pytest.approx(1.0)
    with caplog.at_level(logging.WARNING):
        for _ in range(20):
            _assert_refused(_ask(scorer, Shareable(request)), "already scored")
    assert scorer.refusal_counts() == {"replay": 20}
    assert sum("refused a score request" in r.getMessage() for r in caplog.records) == 20


def _bad(pool: torch.Tensor) -> dict[str, dict]:
    return {
        "too-many-images": {REQUEST_RECONSTRUCTIONS: pool[[0, 1, 2]].numpy()},
        "huge-batch": {REQUEST_RECONSTRUCTIONS: np.zeros((5000, 1, SIZE, SIZE), np.float32)},
        "empty": {REQUEST_RECONSTRUCTIONS: np.zeros((0, 1, SIZE, SIZE), np.float32)},
        "wrong-channels": {REQUEST_RECONSTRUCTIONS: np.zeros((2, 3, SIZE, SIZE), np.float32)},
        "wrong-size": {REQUEST_RECONSTRUCTIONS: np.zeros((2, 1, 4 * SIZE, 4 * SIZE), np.float32)},
        "three-dims": {REQUEST_RECONSTRUCTIONS: np.zeros((2, SIZE, SIZE), np.float32)},
        "float64": {REQUEST_RECONSTRUCTIONS: pool[[2, 0]].double().numpy()},
        "list": {REQUEST_RECONSTRUCTIONS: pool[[2, 0]].tolist()},
        "none": {REQUEST_RECONSTRUCTIONS: None},
        "labels-too-many": {REQUEST_LABELS: np.arange(1000, dtype=np.int64) % 4},
        "labels-out-of-range": {REQUEST_LABELS: np.array([0, 4], np.int64)},
        "labels-negative": {REQUEST_LABELS: np.array([0, -1], np.int64)},
        "labels-float": {REQUEST_LABELS: np.array([0.0, 1.0])},
        "labels-2d": {REQUEST_LABELS: np.zeros((2, 1), np.int64)},
        "threshold": {REQUEST_THRESHOLD: 7.0},
        "threshold-string": {REQUEST_THRESHOLD: "0.9"},
    }


@pytest.mark.parametrize("case", sorted(_bad(torch.zeros(3, 1, SIZE, SIZE))))
def test_oversized_or_mis_shaped_requests_are_refused_before_any_computation(site, case) -> None:
    """Shapes, dtypes, counts (at most the images the update declared) and label range are checked against the
    site's own records first: no image is loaded, and the server's honest request is still answered afterwards."""
    scorer, pool, sent = site
    _no_image_loading(scorer)
    request = _request(pool, digest=update_digest(sent))
    request.update(_bad(pool)[case])
    _assert_refused(_ask(scorer, request), "refused: ")
    assert scorer.refusal_counts() == {"malformed": 1}
    del scorer._training_pool
    assert _ask(scorer, _request(pool, digest=update_digest(sent)))[REPLY_SCORES]["status"] == "scored"


def test_the_honest_server_request_is_scored_with_scalars_only(site) -> None:
    scorer, pool, sent = site
    reply = _ask(scorer, _request(pool, digest=update_digest(copy_arrays(sent))))
    assert set(reply.keys()) - {"__headers__"} == {REPLY_SCORES}
    scores = reply[REPLY_SCORES]
    assert set(scores) <= set(SCORE_KEYS) and scores["status"] == "scored"
    assert json.loads(json.dumps(scores)) == scores
    assert scorer.refusal_counts() == {}


def test_a_release_from_another_client_is_ignored(site) -> None:
    """Only the server may tell the site to stop waiting for its last round's scores."""
    from medpfl_app.nvflare.end_of_run import holds_end_of_run

    scorer, _, _ = site
    scorer.wait_at_end_s, scorer.check_wait_s = 60, 0.0
    scorer._on_release(RELEASE_TOPIC, Shareable(), FLContext(), origin=ATTACKER_CELL)
    held = FLContext()
    scorer._check_end(held)
    assert holds_end_of_run(held)
    assert scorer.refusal_counts() == {"not_server": 1}
    scorer._on_release(RELEASE_TOPIC, Shareable(), FLContext(), origin=SERVER_CELL)
    released = FLContext()
    scorer._check_end(released)
    assert not holds_end_of_run(released)


# --- the cell path: what NVFlare actually delivers ----------------------------------------------------------------
class _Engine:
    def new_context(self) -> FLContext:
        return FLContext()


def _cell_message(request: Shareable, *, origin: str, claimed: str, topic: str = SCORE_TOPIC) -> Message:
    """A request as the client job cell hands it to a request callback: ORIGIN stamped by the cellnet, the peer
    props written by the sender (``AuxRunner._send_to_cell``)."""
    request.set_peer_props({ReservedKey.IDENTITY_NAME: claimed})
    return Message(headers={MessageHeaderKey.ORIGIN: origin, MessageHeaderKey.TOPIC: topic}, payload=request)


def test_the_cell_callback_takes_the_origin_from_the_cellnet_not_from_the_payload(site) -> None:
    scorer, pool, sent = site
    scorer._engine = _Engine()
    forged = _request(pool, digest=update_digest(sent))
    forged.set_header("origin", SERVER_CELL)  # anything in the payload is the sender's to write
    answer = scorer._on_cell_request(_cell_message(forged, origin=ATTACKER_CELL, claimed=SERVER))
    assert answer.get_header(MessageHeaderKey.RETURN_CODE) == "ok"
    _assert_refused(answer.payload, "did not come from the server")
    answer = scorer._on_cell_request(
        _cell_message(_request(pool, digest=update_digest(sent)), origin=SERVER_CELL, claimed=SERVER)
    )
    assert answer.payload[REPLY_SCORES]["status"] == "scored"
    assert answer.payload.get_peer_context() is not None  # the reply carries a peer context, as NVFlare's does


def test_the_scorer_registers_its_exact_topics_on_the_client_job_cell() -> None:
    """NVFlare's command agent takes the aux channel with topic "*"; an exact topic wins (``Registry.find``), so
    score and release requests reach the scorer's cell callback, which sees the origin."""
    from nvflare.private.defs import CellChannel

    registered: list[tuple] = []

    class _Cell:
        def register_request_cb(self, channel, topic, cb):
            registered.append((channel, topic, cb))

    class _CellEngine(_Engine):
        def get_cell(self):
            return _Cell()

    scorer = AuditSiteScorer()
    scorer._register_on_cell(_CellEngine(), FLContext())
    assert [(channel, topic) for channel, topic, _ in registered] == [
        (CellChannel.AUX_COMMUNICATION, SCORE_TOPIC),
        (CellChannel.AUX_COMMUNICATION, RELEASE_TOPIC),
    ]
    registry = Registry()
    registry.set(CellChannel.AUX_COMMUNICATION, "*", "command agent")
    registry.set(CellChannel.AUX_COMMUNICATION, SCORE_TOPIC, "scorer")
    assert registry.find(CellChannel.AUX_COMMUNICATION, SCORE_TOPIC) == "scorer"
    assert registry.find(CellChannel.AUX_COMMUNICATION, "other") == "command agent"


# --- the server's side and the digest -----------------------------------------------------------------------------
def test_the_server_sends_the_digest_of_what_it_received_and_records_a_refusal(site) -> None:
    """The audit's request names the update it received (here: the site's tensors as NumPy copies, as the audit
    filter keeps them); the site scores it once; a second request is recorded unavailable with the site's reason."""
    from medpfl_app.nvflare.server.audit_filter import AuditFilter

    scorer, pool, sent = site
    scorer._engine = _Engine()

    class _ServerEngine:
        def new_context(self) -> FLContext:
            ctx = FLContext()
            ctx.set_prop(ReservedKey.IDENTITY_NAME, SERVER, private=False, sticky=False)
            return ctx

        def send_aux_request(self, targets, topic, request, timeout, fl_ctx, optional=False, secure=False):
            # FOBS across the wire: the site gets a copy, with the server's public props as peer props
            message = _cell_message(Shareable(request), origin=SERVER_CELL, claimed=fl_ctx.get_identity_name())
            return {targets[0]: scorer._on_cell_request(message).payload}

    audit = AuditFilter(isolate=False)
    audit._engine = _ServerEngine()
    item = AuditItem(
        site=SITE, round=ROUND, job_id=JOB, data_kind="WEIGHT_DIFF", update=copy_arrays(sent), global_weights=None
    )
    scores = audit._score_at_site(item, pool[[2, 0]].numpy(), np.array([1, 0]))
    assert scores["status"] == "scored" and scores["ssim_max"] == pytest.approx(1.0)
    again = audit._score_at_site(item, pool[[2, 0]].numpy(), np.array([1, 0]))
    assert again == {
        "status": "unavailable",
        "reason": f"{SITE} refused the score request: refused: the round {ROUND} update was already "
        "scored (the site answers once per update)",
    }
    other = AuditItem(
        site=SITE,
        round=ROUND,
        job_id=JOB,
        data_kind="WEIGHT_DIFF",
        update={k: v + 1 for k, v in copy_arrays(sent).items()},
        global_weights=None,
    )
    assert "digest does not match" in audit._score_at_site(other, pool[[2, 0]].numpy(), None)["reason"]


def test_torch_and_numpy_forms_of_an_update_have_one_digest() -> None:
    """PyTorch exchange: the site's filter sees tensors, the server keeps NumPy copies; NumPy exchange: both
    see arrays. Order does not matter; dtype, shape, names and every byte do."""
    tensors, arrays = _update("torch"), _update("numpy")
    digest = update_digest(tensors)
    assert digest == update_digest(arrays) == update_digest(copy_arrays(tensors)) == update_digest(copy_arrays(arrays))
    assert digest == update_digest(dict(reversed(list(arrays.items()))))
    assert same_digest(digest, update_digest(arrays)) and not same_digest(digest, "sha256:" + "0" * 64)
    for other in (
        {**arrays, "fc.bias": arrays["fc.bias"].astype(np.float64)},
        {**arrays, "fc.bias": arrays["fc.bias"].reshape(2, 2)},
        {("fc.bias2" if k == "fc.bias" else k): v for k, v in arrays.items()},
        {**arrays, "conv.weight": np.asfortranarray(arrays["conv.weight"]) + 0.5},
    ):
        assert update_digest(other) != digest
    non_contiguous = {**arrays, "conv.weight": np.asfortranarray(arrays["conv.weight"])}
    assert update_digest(non_contiguous) == digest  # C-order bytes, whatever the memory layout
    with pytest.raises(ValueError):
        update_digest({"w": np.array([object()])})


def test_declared_images_bound_what_the_audit_reconstructs() -> None:
    assert declared_images({"batch_size": 1, "local_steps": 1, "num_train_images": 16}) == 1
    assert declared_images({"batch_size": 8, "NUM_STEPS_CURRENT_ROUND": 3, "num_train_images": 16}) == 16
    assert declared_images({"batch_size": 8, "num_train_images": 16}) == 16
    assert declared_images({"batch_size": 8}) == 8
    assert declared_images({"batch_size": True, "num_train_images": "9"}) is None


# --- the last result filter -----------------------------------------------------------------------------------
def test_the_sent_digest_filter_records_what_leaves_and_never_changes_it(tmp_path: Path) -> None:
    workspace = tmp_path / SITE
    (workspace / JOB).mkdir(parents=True)
    update = _update()
    shareable = _result(update, round_number=4)
    before = {k: v.clone() for k, v in update.items()}
    headers = dict(shareable["__headers__"])
    out = SentUpdateDigest().process(shareable, _client_ctx(workspace))
    assert out is shareable and dict(out["__headers__"]) == headers
    dxo = from_shareable(out)
    assert "filter_history" not in dxo.meta  # not even NVFlare's own bookkeeping
    assert all(torch.equal(dxo.data[k], before[k]) for k in before)
    record = read_sent_update(workspace / JOB, 4, job_id=JOB, site=SITE)
    assert record.digest == update_digest(update) and record.declared_images == 2
    assert record.server_identity == SERVER


def test_the_sent_digest_filter_never_raises_and_skips_failed_results(tmp_path: Path) -> None:
    workspace = tmp_path / SITE
    (workspace / JOB).mkdir(parents=True)
    ctx = _client_ctx(workspace)
    failed = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    failed.set_header(AppConstants.CURRENT_ROUND, 0)
    assert SentUpdateDigest().process(failed, ctx) is failed
    not_a_dxo = Shareable({"x": 1})
    not_a_dxo.set_header(AppConstants.CURRENT_ROUND, 0)
    assert SentUpdateDigest().process(not_a_dxo, ctx) is not_a_dxo
    no_round = _result(_update())
    no_round.set_header(AppConstants.CURRENT_ROUND, None)
    assert SentUpdateDigest().process(no_round, ctx) is no_round
    no_run_dir = _client_ctx(tmp_path / "nowhere")
    assert SentUpdateDigest().process(_result(_update()), no_run_dir) is not None
    assert not (workspace / JOB / "medpfl").exists()


def test_audited_jobs_put_the_digest_filter_last() -> None:
    from medpfl_app.nvflare.jobs import JOB_CATALOG
    from medpfl_app.nvflare.jobs.spec import AUDIT_SENT_DIGEST, AUDIT_SITE_SCORER

    audited = [
        spec
        for spec in JOB_CATALOG.values()
        if AUDIT_SITE_SCORER["path"] in {c["path"] for c in spec.client_components}
    ]
    assert {spec.name for spec in audited} >= {"fedavg_audit", "fedavg_audit_laplace", "fedavg_audit_client_dp"}
    for spec in audited:
        assert spec.client_result_filters[-1] == AUDIT_SENT_DIGEST, spec.name
        assert sum(f == AUDIT_SENT_DIGEST for f in spec.client_result_filters) == 1
