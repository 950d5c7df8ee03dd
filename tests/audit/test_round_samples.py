"""The site-local round-samples record: atomic, owner-only, bounded, round-tripping, with clear reasons when absent.

Everything here runs without NVFlare: the record is a file that the training script (in the client job process or
an external process) writes and the site's scorer component reads.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from medpfl_app.audit import round_samples as rs
from medpfl_app.audit.round_samples import (
    RoundSamples,
    RoundSamplesUnavailable,
    TrainingSet,
    describe_training_set,
    find_client_run_dir,
    load_training_pool,
    read_round_samples,
    record_folder,
    recorded_rounds,
    write_round_samples,
)
from medpfl_app.data import DataConfig, build_dataloaders, generate_demo_dataset, load_site_data, resolve_site_data
from medpfl_app.errors import MedPFLError

JOB = "job-rs"
SITE = "site-1"
SIZE = 16


def _training_set(num_images: int = 8, image_size: int = SIZE) -> TrainingSet:
    return TrainingSet(
        num_images=num_images, digest="sha256:" + "0" * 64, data=DataConfig(image_size=image_size), num_classes=4
    )


def _record(round_number: int, positions=(3, 1, 3), training_set: TrainingSet | None = None) -> RoundSamples:
    return RoundSamples(
        job_id=JOB,
        site=SITE,
        round=round_number,
        positions=tuple(positions),
        training_set=training_set or _training_set(),
    )


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "workspace" / JOB
    (run_dir / f"app_{SITE}").mkdir(parents=True)
    return run_dir


def test_round_trip_keeps_distinct_positions_in_first_use_order(tmp_path: Path) -> None:
    """What the script writes is what the scorer reads; repeats are dropped, first use kept."""
    run_dir = _run_dir(tmp_path)
    written = write_round_samples(run_dir, _record(2))
    assert written == record_folder(run_dir) / "round_2.json"
    read = read_round_samples(run_dir, 2, job_id=JOB, site=SITE)
    assert read == _record(2) and read.positions == (3, 1)
    assert RoundSamples.from_dict(json.loads(written.read_text())) == read
    assert json.loads(written.read_text())["schema_version"] == rs.SCHEMA_VERSION


def test_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """0600 files; 0700 folders, even a pre-existing group-readable medpfl folder."""
    run_dir = _run_dir(tmp_path)
    (run_dir / "medpfl").mkdir(mode=0o755)
    os.chmod(run_dir / "medpfl", 0o755)
    old = os.umask(0o000)
    try:
        path = write_round_samples(run_dir, _record(0))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (run_dir / "medpfl", record_folder(run_dir)):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_a_failed_write_leaves_the_previous_record_and_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    """Atomic: the reader sees the old record or the new one, never half a file."""
    run_dir = _run_dir(tmp_path)
    write_round_samples(run_dir, _record(1, positions=(0,)))
    before = (record_folder(run_dir) / "round_1.json").read_bytes()

    def half_then_fail(self: Path, text: str, encoding: str | None = None) -> int:
        with open(self, "w", encoding=encoding) as handle:
            handle.write(text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_round_samples(run_dir, _record(1, positions=(5, 6)))
    monkeypatch.undo()
    assert (record_folder(run_dir) / "round_1.json").read_bytes() == before
    assert sorted(p.name for p in record_folder(run_dir).iterdir()) == ["round_1.json"]
    assert read_round_samples(run_dir, 1, job_id=JOB, site=SITE).positions == (0,)


def test_only_the_most_recent_rounds_are_kept(tmp_path: Path) -> None:
    """Bounded: after round n only the `keep` newest records remain; a dropped round says so."""
    run_dir = _run_dir(tmp_path)
    for number in range(7):
        write_round_samples(run_dir, _record(number), keep=3)
    assert recorded_rounds(run_dir) == (4, 5, 6)
    assert sorted(p.name for p in record_folder(run_dir).iterdir()) == ["round_4.json", "round_5.json", "round_6.json"]
    with pytest.raises(RoundSamplesUnavailable, match=r"no longer keeps its record of round 1 .*3 most recent"):
        read_round_samples(run_dir, 1, job_id=JOB, site=SITE, keep=3)
    assert rs.KEEP_ROUNDS == 16
    with pytest.raises(ValueError):
        write_round_samples(run_dir, _record(7), keep=0)


def test_a_missing_round_gives_a_clear_reason_without_a_path(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    with pytest.raises(RoundSamplesUnavailable) as nothing:
        read_round_samples(run_dir, 9, job_id=JOB, site=SITE)
    assert "no record of its samples for round 9" in nothing.value.reason
    assert "recorded no round" in nothing.value.reason  # nothing at all: the script wrote no record
    write_round_samples(run_dir, _record(0))
    with pytest.raises(RoundSamplesUnavailable) as missing:
        read_round_samples(run_dir, 9, job_id=JOB, site=SITE)
    assert missing.value.reason == "the site has no record of its samples for round 9"
    for bad in (None, "x", -1, 1.5, True):
        with pytest.raises(RoundSamplesUnavailable, match="no valid round"):
            read_round_samples(run_dir, bad, job_id=JOB, site=SITE)
    for error in (nothing.value, missing.value):
        assert str(tmp_path) not in error.reason and "/" not in error.reason


def test_records_of_another_job_or_site_or_broken_files_are_refused(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    write_round_samples(run_dir, _record(0))
    with pytest.raises(RoundSamplesUnavailable, match="another job, site or round"):
        read_round_samples(run_dir, 0, job_id="other-job", site=SITE)
    with pytest.raises(RoundSamplesUnavailable, match="another job, site or round"):
        read_round_samples(run_dir, 0, job_id=JOB, site="site-2")
    (record_folder(run_dir) / "round_1.json").write_text("{not json")
    with pytest.raises(RoundSamplesUnavailable) as broken:
        read_round_samples(run_dir, 1, job_id=JOB, site=SITE)
    assert broken.value.reason == "the site's record of round 1 is invalid"
    assert str(run_dir) in broken.value.detail  # the path only in the site-local detail
    empty = RoundSamples(job_id=JOB, site=SITE, round=2, positions=(), training_set=_training_set())
    write_round_samples(run_dir, empty)
    with pytest.raises(RoundSamplesUnavailable, match="lists no training sample"):
        read_round_samples(run_dir, 2, job_id=JOB, site=SITE)


def test_records_are_validated() -> None:
    with pytest.raises(ValueError):
        _record(0, positions=(8,))  # beyond the training list
    with pytest.raises(ValueError):
        _record(-1)
    with pytest.raises(ValueError):
        RoundSamples.from_dict({**_record(0).to_dict(), "schema_version": 99})
    with pytest.raises(ValueError):
        TrainingSet.from_dict({**_training_set().to_dict(), "data": {"image_size": 0}})


def test_both_execution_modes_find_the_same_run_folder(tmp_path: Path) -> None:
    """External process: working folder = app folder; in process: the script under app/custom, or the working
    folder = the site workspace (the client job process). The scorer uses ``Workspace.get_run_dir``, the same."""
    run_dir = _run_dir(tmp_path)
    app = run_dir / f"app_{SITE}"
    (app / "custom").mkdir()
    (app / "custom" / "medpfl_site.py").write_text("")
    external = find_client_run_dir(JOB, SITE, cwd=app, script="custom/medpfl_site.py")
    in_process = find_client_run_dir(
        JOB, SITE, cwd=tmp_path / "workspace", script=str(app / "custom" / "medpfl_site.py")
    )
    in_process_no_script = find_client_run_dir(JOB, SITE, cwd=tmp_path / "workspace")
    assert external == in_process == in_process_no_script == run_dir.resolve()
    with pytest.raises(MedPFLError, match="cannot find the run folder"):
        find_client_run_dir(JOB, "site-2", cwd=app, script="custom/medpfl_site.py")
    with pytest.raises(MedPFLError, match="cannot find the run folder"):
        find_client_run_dir("other-job", SITE, cwd=tmp_path / "workspace")


@pytest.fixture()
def demo_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tiny demo set found through ``MEDPFL_DATA_ROOT`` from an empty working folder (as in the simulator)."""
    demo = generate_demo_dataset(tmp_path / "demo", num_sites=2, train_per_site=4, val_per_site=2, image_size=SIZE)
    for name in ("MEDPFL_SITE_DATA_CONFIG", "MEDPFL_SITE_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MEDPFL_DATA_ROOT", str(demo.root))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return demo


def test_the_scorer_loads_exactly_the_pixels_training_saw(demo_site) -> None:
    """Same resolution, list and transforms as the training loader, here at another size than the site default."""
    data = DataConfig(image_size=12, batch_size=1)
    site_data = load_site_data(resolve_site_data(SITE).datalist, site=SITE, num_classes=4)
    training_set = describe_training_set(site_data.training, data, 4)
    train_loader, _ = build_dataloaders(site_data, data, site=SITE)
    seen = {int(batch["index"]): (batch["image"][0], int(batch["label"])) for batch in train_loader}
    pool = load_training_pool(SITE, training_set)
    assert pool.images.shape == (4, 1, 12, 12) and pool.training_set == training_set
    for position, (image, label) in seen.items():
        assert torch.equal(pool.images[position], image)
        assert pool.labels[position] == label


def test_the_scorer_refuses_data_that_changed_or_is_missing(demo_site, monkeypatch: pytest.MonkeyPatch) -> None:
    site_data = load_site_data(resolve_site_data(SITE).datalist, site=SITE, num_classes=4)
    training_set = describe_training_set(site_data.training, DataConfig(image_size=SIZE), 4)
    rewritten = Path(site_data.training[1]["image"])
    os.utime(rewritten, ns=(rewritten.stat().st_atime_ns, rewritten.stat().st_mtime_ns + 10**9))
    with pytest.raises(RoundSamplesUnavailable) as changed:
        load_training_pool(SITE, training_set)
    assert "not what it trained on" in changed.value.reason
    monkeypatch.delenv("MEDPFL_DATA_ROOT")
    with pytest.raises(RoundSamplesUnavailable) as missing:
        load_training_pool(SITE, training_set)
    assert missing.value.reason == "the site's training data was not found"
    for error in (changed.value, missing.value):
        assert str(demo_site.root) not in error.reason and "/" not in error.reason


# --- what the site sent (read by the scorer to answer only for its own updates) ----------------------------------
def _sent(round_number: int, digest: str = "sha256:" + "ab" * 32, **changes) -> rs.SentUpdate:
    return rs.SentUpdate(
        **{
            "job_id": JOB,
            "site": SITE,
            "round": round_number,
            "digest": digest,
            "declared_images": 4,
            "server_identity": "simulator_server",
            **changes,
        }
    )


def test_sent_update_records_round_trip_owner_only_and_bounded(tmp_path: Path) -> None:
    """The scorer reads exactly what the site's last result filter wrote, 0600 in 0700 folders, newest kept."""
    run_dir = _run_dir(tmp_path)
    old = os.umask(0o000)
    try:
        for number in range(5):
            path = rs.write_sent_update(run_dir, _sent(number), keep=2)
    finally:
        os.umask(old)
    assert rs.sent_rounds(run_dir) == (3, 4)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (run_dir / "medpfl", run_dir / rs.SENT_FOLDER):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert rs.read_sent_update(run_dir, 4, job_id=JOB, site=SITE) == _sent(4)
    assert json.loads(path.read_text())["schema_version"] == rs.SCHEMA_VERSION


@pytest.mark.parametrize(
    ("round_number", "reason"),
    [
        pytest.param(9, "sent no update in round 9", id="not-sent"),
        pytest.param(-1, "no valid round", id="negative"),
        pytest.param("1", "no valid round", id="string"),
        pytest.param(True, "no valid round", id="bool"),
    ],
)
def test_a_round_the_site_did_not_send_gives_a_reason_without_a_path(tmp_path: Path, round_number, reason) -> None:
    run_dir = _run_dir(tmp_path)
    rs.write_sent_update(run_dir, _sent(1))
    with pytest.raises(RoundSamplesUnavailable, match=reason) as refused:
        rs.read_sent_update(run_dir, round_number, job_id=JOB, site=SITE)
    assert str(tmp_path) not in refused.value.reason


def test_a_sent_record_of_another_job_or_site_or_a_tampered_one_is_refused(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    rs.write_sent_update(run_dir, _sent(1))
    with pytest.raises(RoundSamplesUnavailable, match="another job, site or round"):
        rs.read_sent_update(run_dir, 1, job_id=JOB, site="site-2")
    rs.sent_path(run_dir, 2).write_text(json.dumps({**_sent(2).to_dict(), "digest": "md5:1"}))
    with pytest.raises(RoundSamplesUnavailable, match="invalid") as bad:
        rs.read_sent_update(run_dir, 2, job_id=JOB, site=SITE)
    assert str(tmp_path) not in bad.value.reason and str(tmp_path) in bad.value.detail  # the path stays in the log
    for bad_fields in ({"digest": "sha256:xyz"}, {"declared_images": 0}, {"round": -1}, {"server_identity": ""}):
        with pytest.raises(ValueError):
            _sent(1, **bad_fields)
