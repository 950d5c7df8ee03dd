"""Report thumbnails: off by default; reconstructions stored owner-only; originals only from synthetic demo data.

The server's `AuditFilter` and a site's `AuditSiteScorer` are wired through a fake aux channel that calls the
scorer's handler directly, so every byte the site sends back is what the server receives.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.workspace import Workspace

from medpfl_app.audit.demo_originals import (
    ReleasedOriginals,
    accept_originals,
    demo_data_refusal,
    downsize,
    matched_originals,
)
from medpfl_app.audit.ledger import AuditLedger
from medpfl_app.audit.round_samples import (
    RoundSamples,
    SentUpdate,
    describe_training_set,
    load_training_pool,
    write_round_samples,
    write_sent_update,
)
from medpfl_app.audit.scoring import SCORE_KEYS
from medpfl_app.audit.update_audit import AuditItem
from medpfl_app.audit.update_digest import update_digest
from medpfl_app.data import DataConfig, generate_demo_dataset, load_site_data, resolve_site_data
from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.server.audit_filter import AuditFilter
from medpfl_app.nvflare.site.scorer import (
    REPLY_ORIGINALS,
    REPLY_ORIGINALS_REFUSED,
    REPLY_SCORES,
    REQUEST_ORIGINALS,
    SCORE_TOPIC,
    AuditSiteScorer,
)

JOB = "job-thumbs"
SITE = "site-1"
SIZE = 16
SERVER = "server"
#: SITE's round-3 update, as it sent it and as the server received it.
UPDATE = {"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "fc.bias": np.zeros(2, np.float32)}


def _item(round_number: int = 3) -> AuditItem:
    """The server's copy of SITE's update of ``round_number``."""
    return AuditItem(
        site=SITE,
        round=round_number,
        job_id=JOB,
        data_kind="WEIGHT_DIFF",
        update={k: v.copy() for k, v in UPDATE.items()},
        global_weights=None,
    )


class _Engine:
    """Server engine: a workspace for the run dir and an aux channel straight into one site's scorer."""

    def __init__(self, root: Path, scorer: AuditSiteScorer | None) -> None:
        self.root = root
        self.scorer = scorer
        self.requests: list[dict] = []
        self.replies: list[Shareable] = []

    def get_workspace(self) -> Workspace:
        for folder in ("startup", "local"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        return Workspace(root_dir=str(self.root), site_name="server")

    def new_context(self) -> FLContext:
        return FLContext()

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        del event_type, fl_ctx

    def send_aux_request(self, targets, topic, request, timeout, fl_ctx, optional=False, secure=False):
        self.requests.append(dict(request))
        if self.scorer is None or topic != SCORE_TOPIC:
            return {}
        # As NVFlare delivers it: from the server's job cell, with the server's identity as the peer context.
        peer = FLContext()
        peer.set_prop(ReservedKey.IDENTITY_NAME, SERVER, private=False, sticky=False)
        site_ctx = FLContext()
        site_ctx.set_peer_context(peer)
        reply = self.scorer._on_request(topic, request, site_ctx, origin=f"server.{JOB}")
        self.replies.append(reply)
        return {targets[0]: reply}


def _server(tmp_path: Path, scorer: AuditSiteScorer | None, **kwargs) -> tuple[AuditFilter, FLContext]:
    audit = AuditFilter(**kwargs)
    ctx = FLContext()
    ctx.set_prop(ReservedKey.RUN_NUM, JOB, private=False, sticky=True)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, SERVER, private=False, sticky=True)
    ctx.set_prop(ReservedKey.ENGINE, _Engine(tmp_path / "server", scorer), private=True, sticky=True)
    audit.handle_event(EventType.START_RUN, ctx)
    return audit, ctx


def _scorer(**kwargs) -> AuditSiteScorer:
    """SITE's scorer in job JOB; the working folder plays the site workspace (as for NVFlare's client job)."""
    scorer = AuditSiteScorer(**kwargs)
    scorer._bind(SITE, JOB, Path.cwd() / JOB)
    return scorer


def _record_round_3() -> torch.Tensor:
    """What SITE's training script records after round 3 (positions 2 and 0) on the data now on disk; returns the
    site's training images as training saw them (and as the scorer loads them)."""
    items = load_site_data(resolve_site_data(SITE).datalist, site=SITE, num_classes=4).training
    training_set = describe_training_set(items, DataConfig(image_size=SIZE), 4)
    run_dir = Path.cwd() / JOB
    run_dir.mkdir(exist_ok=True)
    write_round_samples(
        run_dir, RoundSamples(job_id=JOB, site=SITE, round=3, positions=(2, 0), training_set=training_set)
    )
    write_sent_update(
        run_dir,
        SentUpdate(
            job_id=JOB, site=SITE, round=3, digest=update_digest(UPDATE), declared_images=2, server_identity=SERVER
        ),
    )
    return load_training_pool(SITE, training_set).images


@pytest.fixture()
def site_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tiny demo set on disk for SITE and its training script's record of round 3 (pool positions 2 and 0).

    The site finds its datalist through ``MEDPFL_DATA_ROOT``, as in the simulator; the working folder (the site
    workspace) holds no stray site configuration.
    """
    demo = generate_demo_dataset(tmp_path / "demo", num_sites=2, train_per_site=4, val_per_site=0, image_size=SIZE)
    monkeypatch.delenv("MEDPFL_SITE_DATA_CONFIG", raising=False)
    monkeypatch.delenv("MEDPFL_SITE_WORKSPACE", raising=False)
    monkeypatch.setenv("MEDPFL_DATA_ROOT", str(demo.root))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return demo, _record_round_3()


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png")) if folder.exists() else []


def _thumb_dir(tmp_path: Path) -> Path:
    return tmp_path / "server" / JOB / "medpfl" / "thumbnails"


def _write_record(tmp_path: Path, scores: dict) -> None:
    """The round's ledger record, as the worker writes it once the site answered."""
    from medpfl_app.audit.plan import AuditPlan
    from medpfl_app.audit.risk import RiskPolicy
    from medpfl_app.audit.worker import build_record

    AuditLedger(tmp_path / "server" / JOB / "medpfl" / "audit_ledger.jsonl").append(
        build_record(
            job_id=JOB,
            site=SITE,
            round_number=3,
            status="audited",
            reason=None,
            meta={},
            outcome=None,
            site_scores=scores,
            policy=RiskPolicy(),
            plan=AuditPlan(),
            versions={},
        )
    )


def _assert_scalars_only(scores: dict) -> None:
    assert set(scores) <= set(SCORE_KEYS)
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in scores.values())


# --- default off ------------------------------------------------------------------------------------------------
def test_default_off_writes_no_file_and_sends_no_image(tmp_path: Path, site_data) -> None:
    """Both options default off: no originals asked for, none sent, no thumbnails folder, report without images."""
    _, pool = site_data
    scorer = _scorer()
    audit, ctx = _server(tmp_path, scorer)
    recon = pool[[2, 0]].numpy()
    scores = audit._score_at_site(_item(), recon, np.array([2, 0]))
    assert scores["status"] == "scored" and scores["ssim_max"] == pytest.approx(1.0)
    engine = ctx.get_engine()
    assert REQUEST_ORIGINALS not in engine.requests[0]
    (reply,) = engine.replies
    assert set(reply.keys()) - {"__headers__"} == {REPLY_SCORES}  # nothing but the scalars on the aux channel
    assert not _thumb_dir(tmp_path).exists() and not _pngs(tmp_path / "server")
    _write_record(tmp_path, scores)
    audit._render_report(ctx)
    html = (tmp_path / "server" / JOB / "medpfl" / "audit_report.html").read_text()
    assert "data:image" not in html and "Not shown (default)" in html


def test_the_site_default_refuses_even_when_the_server_asks(tmp_path: Path, site_data) -> None:
    """A server that stores thumbnails asks; a site whose scorer option is off sends scalars and a reason only."""
    _, pool = site_data
    audit, ctx = _server(tmp_path, _scorer(), store_reconstructions=True)
    audit._score_at_site(_item(), pool[[2, 0]].numpy(), None)
    (reply,) = ctx.get_engine().replies
    assert set(reply.keys()) - {"__headers__"} == {REPLY_SCORES, REPLY_ORIGINALS_REFUSED}
    assert "release_demo_originals is off" in reply[REPLY_ORIGINALS_REFUSED]
    names = [p.name for p in _pngs(_thumb_dir(tmp_path))]
    assert names == ["recon_0.png", "recon_1.png"]  # the server's own reconstructions only


# --- on, synthetic demo data ------------------------------------------------------------------------------------
def test_demo_data_with_both_options_on_stores_owner_only_pngs_and_the_report_embeds_them(
    tmp_path: Path, site_data
) -> None:
    """Reconstructions and the matched originals land 0600 in 0700 folders; the report shows originals above."""
    _, pool = site_data
    audit, ctx = _server(tmp_path, _scorer(release_demo_originals=True), store_reconstructions=True)
    # Reconstruction 0 is close to pool image 0, reconstruction 1 to pool image 2 (the round used 2 and 0).
    recon = torch.stack([pool[0] * 0.9 + 0.05, pool[2]]).numpy()
    scores = audit._score_at_site(_item(), recon, np.array([0, 2]))
    _assert_scalars_only(scores)
    assert scores["status"] == "scored"
    (reply,) = ctx.get_engine().replies
    assert REPLY_ORIGINALS_REFUSED not in reply
    _assert_scalars_only(reply[REPLY_SCORES])
    folder = _thumb_dir(tmp_path) / SITE / "round_3"
    assert [p.name for p in _pngs(folder)] == ["original_0.png", "original_1.png", "recon_0.png", "recon_1.png"]
    for path in _pngs(folder):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for made in (_thumb_dir(tmp_path), _thumb_dir(tmp_path) / SITE, folder):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    from PIL import Image

    # Each original is the image its reconstruction was scored against, exactly (16 px: not downsized).
    for index, position in ((0, 0), (1, 2)):
        with Image.open(folder / f"original_{index}.png") as image:
            expected = (pool[position, 0] * 255).round().to(torch.uint8).numpy()
            np.testing.assert_array_equal(np.asarray(image), expected)
    with Image.open(folder / "recon_1.png") as image:
        np.testing.assert_array_equal(np.asarray(image), (pool[2, 0] * 255).round().to(torch.uint8).numpy())

    _write_record(tmp_path, scores)
    audit._render_report(ctx)
    html_path = tmp_path / "server" / JOB / "medpfl" / "audit_report.html"
    assert stat.S_IMODE(html_path.stat().st_mode) == 0o600  # it embeds the images
    html = html_path.read_text()
    assert html.count("data:image/png;base64,") == 4
    section = html[html.index('<section id="thumbnails">') :]
    assert section.index('alt="original original_0.png"') < section.index('alt="reconstruction recon_0.png"')
    assert "synthetic demo" in section
    assert [p.name for p in _pngs(folder)] == ["original_0.png", "original_1.png", "recon_0.png", "recon_1.png"]


# --- on, other data ---------------------------------------------------------------------------------------------
def _break_manifest(demo, change: str) -> None:
    manifest_path = demo.root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if change == "no-manifest":
        manifest_path.unlink()
        return
    if change == "not-synthetic":
        manifest.pop("synthetic")
    elif change == "other-dataset":
        manifest["dataset"] = "hospital-x/2024"
    elif change == "datalist-changed":
        datalist = demo.root / SITE / "datalist.json"
        entries = json.loads(datalist.read_text())
        patient = demo.root / SITE / "patients" / "p001.nii.gz"  # a file the demo generator does not write
        patient.parent.mkdir()
        patient.write_bytes((demo.root / SITE / entries["training"][0]["image"]).read_bytes())
        entries["training"].append({"image": "patients/p001.nii.gz", "label": 0})
        datalist.write_text(json.dumps(entries))
    elif change == "labels-changed":
        datalist = demo.root / SITE / "datalist.json"
        entries = json.loads(datalist.read_text())
        entries["training"][0]["label"] = (entries["training"][0]["label"] + 1) % 4
        datalist.write_text(json.dumps(entries))
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "change", ["no-manifest", "not-synthetic", "other-dataset", "datalist-changed", "labels-changed"]
)
def test_other_data_is_refused_with_a_logged_reason_and_scalars_only(
    tmp_path: Path, site_data, change: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Option on at both ends, but the data is not recognisably the demo set: no original leaves the site."""
    demo, _ = site_data
    _break_manifest(demo, change)
    pool = _record_round_3()  # the site trained on the data as it now is
    audit, ctx = _server(tmp_path, _scorer(release_demo_originals=True), store_reconstructions=True)
    with caplog.at_level("INFO"):
        scores = audit._score_at_site(_item(), pool[[2, 0]].numpy(), None)
    _assert_scalars_only(scores)
    assert scores["status"] == "scored"
    (reply,) = ctx.get_engine().replies
    assert set(reply.keys()) - {"__headers__"} == {REPLY_SCORES, REPLY_ORIGINALS_REFUSED}
    reason = reply[REPLY_ORIGINALS_REFUSED]
    assert isinstance(reason, str) and str(tmp_path) not in reason and "datalist.json" not in reason  # no path
    assert any("not released" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    assert [p.name for p in _pngs(_thumb_dir(tmp_path))] == ["recon_0.png", "recon_1.png"]


def test_demo_recognition(tmp_path: Path) -> None:
    """The generator's datalists are recognised; a plain datalist without a demo manifest is not."""
    demo = generate_demo_dataset(tmp_path / "demo", num_sites=2, train_per_site=4, val_per_site=1, image_size=SIZE)
    manifest = json.loads((demo.root / "manifest.json").read_text())
    assert manifest["synthetic"] is True and manifest["dataset"] == "medpfl.demo-phantoms/1"
    for site, datalist in demo.site_datalists.items():
        assert demo_data_refusal(datalist, site) is None
    # Another site's datalist copied into a folder of its own is not listed by any manifest.
    other = tmp_path / "real" / "site-9"
    other.mkdir(parents=True)
    (other / "datalist.json").write_text(demo.site_datalists["site-1"].read_text())
    assert "no demo manifest.json" in demo_data_refusal(other / "datalist.json", "site-9")
    assert "folder" in demo_data_refusal(other, "site-9")


# --- pieces -----------------------------------------------------------------------------------------------------
def test_matched_originals_follow_the_scoring_pairing_and_are_downsized() -> None:
    pool = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    released = matched_originals(pool[[2, 0]].numpy(), pool[[0, 2]], max_size=32)
    assert released.reconstruction_indices == (0, 1)
    assert released.images.dtype == np.uint8 and released.images.shape == (2, 1, 32, 32)
    expected = torch.nn.functional.avg_pool2d(pool[[2, 0]], 2)
    np.testing.assert_allclose(released.images / 255.0, expected.numpy(), atol=1 / 255 + 1e-6)
    assert downsize(torch.ones(1, 3, 8, 20), 10).shape == (1, 3, 4, 10)
    with pytest.raises(MedPFLError):
        downsize(torch.ones(1, 1, 8, 8), 2)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(None, id="none"),
        pytest.param({"images": np.zeros((1, 1, 8, 8), np.float32), "reconstruction_indices": [0]}, id="float"),
        pytest.param({"images": np.zeros((1, 1, 128, 128), np.uint8), "reconstruction_indices": [0]}, id="large"),
        pytest.param({"images": np.zeros((2, 1, 8, 8), np.uint8), "reconstruction_indices": [0, 0]}, id="repeat"),
        pytest.param({"images": np.zeros((1, 1, 8, 8), np.uint8), "reconstruction_indices": [5]}, id="range"),
        pytest.param({"images": np.zeros((1, 1, 8, 8), np.uint8), "reconstruction_indices": "0"}, id="no-list"),
    ],
)
def test_the_server_refuses_malformed_originals(payload) -> None:
    with pytest.raises(MedPFLError):
        accept_originals(payload, 2)


def test_a_site_cannot_push_originals_the_server_did_not_ask_for(tmp_path: Path) -> None:
    """With storing off, originals in a reply are dropped unread: no file, scores still count."""
    audit, ctx = _server(tmp_path, None)
    reply = make_reply("OK")
    reply[REPLY_SCORES] = {"status": "scored", "ssim_max": 0.5}
    reply[REPLY_ORIGINALS] = ReleasedOriginals((0,), np.zeros((1, 1, 8, 8), np.uint8)).to_payload()
    ctx.get_engine().send_aux_request = lambda **kwargs: {SITE: reply}
    assert audit._score_at_site(_item(0), np.zeros((1, 1, 8, 8), np.float32), None)["ssim_max"] == 0.5
    assert not _pngs(tmp_path / "server")


def test_store_reconstructions_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="store_reconstructions"):
        AuditFilter(store_reconstructions="yes")
    with pytest.raises(ValueError, match="original_max_size"):
        AuditSiteScorer(original_max_size=1000)
