"""Site-local record of which training samples went into each round's update: a file that never leaves the site.

The site's training script (`medpfl_app.nvflare.site.client`) writes one record per round, before its update is
sent; the site's scorer component (`medpfl_app.nvflare.site.scorer`) reads it to score the server's
reconstructions of that update. The two may run in different processes (NVFlare's ``ClientAPIExecutor`` in
``in_process`` or ``external_process`` mode), so the record is a file both derive from the job and the site, in the
client's run folder of the job::

    <site workspace>/<job id>/medpfl/round_samples/round_<n>.json

The scorer knows that folder from NVFlare (``Workspace.get_run_dir(job_id)``); the training script finds it with
`find_client_run_dir` from where NVFlare runs it (the app folder ``<run dir>/app_<site>`` is the working folder of
an external process, the script lives in ``<run dir>/app_<site>/custom/`` in both modes, and an in-process script
runs in the client job process, whose working folder is the site workspace).

A record holds the job, site and round, the distinct positions (in the site's training list) of the samples the
round trained on, and how the training set was loaded (`TrainingSet`: data settings, label count, size and a
digest of the list), so that the scorer loads exactly the pixels training saw (`load_training_pool`) or says
why it cannot. Records are written atomically, owner-only (files 0600, folders 0700), and only the `KEEP_ROUNDS`
most recent rounds are kept. Nothing here imports NVFlare.

Beside it, the site records what it actually sent in each round (`SentUpdate`, written by the job's last client
result filter, `medpfl_app.nvflare.filters.sent_digest.SentUpdateDigest`, after every other filter)::

    <site workspace>/<job id>/medpfl/sent_updates/round_<n>.json

the digest of the update as it left the site (`medpfl_app.audit.update_digest`), how many images it declared, and
the server identity that assigned the task. The scorer answers a score request only for an update recorded here
(matching round and digest), so no one can have it score anything but this site's own updates.

Reasons given by `RoundSamplesUnavailable` name no path, file or sample: the scorer may send them to the server.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medpfl_app.atomic_io import write_atomic
from medpfl_app.data.config import DataConfig
from medpfl_app.errors import MedPFLError

if TYPE_CHECKING:
    import torch

SCHEMA_VERSION = 1
#: The records' folder under the client's run folder of the job.
RECORD_FOLDER = Path("medpfl") / "round_samples"
#: The sent-update records' folder under the client's run folder of the job.
SENT_FOLDER = Path("medpfl") / "sent_updates"
#: Rounds kept per job: the audit scores recent rounds; older records are deleted when a new one is written.
KEEP_ROUNDS = 16
_RECORD_NAME = re.compile(r"^round_(\d+)\.json$")


class RoundSamplesUnavailable(Exception):
    """The site cannot tell which images a round used, or cannot load them.

    Args:
        reason: One short sentence naming no path, file or sample (safe to send to the server).
        detail: The full site-local explanation for the site's log (may name paths); None when ``reason`` says all.
    """

    def __init__(self, reason: str, *, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TrainingSet:
    """How a site loaded its training images, so that its scorer can load exactly the same pixels.

    Attributes:
        num_images: Size of the training list.
        digest: `training_set_digest` of the training list when training loaded it.
        data: The data settings training used (after the job's and the site's overrides).
        num_classes: The label count the list was checked against (None: not checked).
    """

    num_images: int
    digest: str
    data: DataConfig
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.num_images, bool) or not isinstance(self.num_images, int) or self.num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {self.num_images!r}")
        if not isinstance(self.digest, str) or not self.digest.startswith("sha256:"):
            raise ValueError(f"digest must be a 'sha256:' string, got {self.digest!r}")
        if not isinstance(self.data, DataConfig):
            raise ValueError(f"data must be a DataConfig, got {type(self.data).__name__}")
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1
        ):
            raise ValueError(f"num_classes must be a positive integer or None, got {self.num_classes!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_images": self.num_images,
            "digest": self.digest,
            "num_classes": self.num_classes,
            "data": self.data.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainingSet:
        """Raises: ValueError: a missing or invalid field."""
        try:
            data = DataConfig.from_dict(values["data"])
        except (KeyError, TypeError, MedPFLError) as error:
            raise ValueError(f"invalid data settings: {error}") from None
        return cls(
            num_images=values.get("num_images"),  # type: ignore[arg-type]  # checked in __post_init__
            digest=values.get("digest"),  # type: ignore[arg-type]
            data=data,
            num_classes=values.get("num_classes"),
        )


@dataclass(frozen=True)
class RoundSamples:
    """The distinct training positions one site used in one round of one job, in first-use order.

    Attributes:
        job_id: The NVFlare job.
        site: The site.
        round: The FedAvg round.
        positions: Positions in the site's training list (repeats are dropped, first use kept).
        training_set: How the training list was loaded.
    """

    job_id: str
    site: str
    round: int
    positions: tuple[int, ...]
    training_set: TrainingSet

    def __post_init__(self) -> None:
        for name in ("job_id", "site"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise ValueError(f"round must be a non-negative integer, got {self.round!r}")
        if not isinstance(self.training_set, TrainingSet):
            raise ValueError("training_set must be a TrainingSet")
        positions = tuple(self.positions)
        if any(isinstance(p, bool) or not isinstance(p, int) for p in positions):
            raise ValueError("positions must be integers")
        if any(not 0 <= p < self.training_set.num_images for p in positions):
            raise ValueError(f"positions must lie in [0, {self.training_set.num_images})")
        object.__setattr__(self, "positions", tuple(dict.fromkeys(positions)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "job_id": self.job_id,
            "site": self.site,
            "round": self.round,
            "positions": list(self.positions),
            "training_set": self.training_set.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RoundSamples:
        """Raises: ValueError: another schema version, or a missing or invalid field."""
        if not isinstance(values, Mapping):
            raise ValueError("a round-samples record must be a JSON object")
        if values.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {values.get('schema_version')!r} is not {SCHEMA_VERSION}")
        training_set = values.get("training_set")
        positions = values.get("positions")
        if not isinstance(training_set, Mapping) or not isinstance(positions, list):
            raise ValueError("a round-samples record needs 'positions' (list) and 'training_set' (object)")
        return cls(
            job_id=values.get("job_id"),  # type: ignore[arg-type]  # checked in __post_init__
            site=values.get("site"),  # type: ignore[arg-type]
            round=values.get("round"),  # type: ignore[arg-type]
            positions=tuple(positions),
            training_set=TrainingSet.from_dict(training_set),
        )


# --- the record files ---------------------------------------------------------------------------------------------
def record_folder(run_dir: str | os.PathLike[str]) -> Path:
    """The records' folder of one job at one site: ``<run_dir>/medpfl/round_samples``."""
    return Path(run_dir) / RECORD_FOLDER


def record_path(run_dir: str | os.PathLike[str], round_number: int) -> Path:
    return record_folder(run_dir) / f"round_{int(round_number)}.json"


def _requested_round(round_number: Any) -> int:
    """The round a request names, as a non-negative int (ints and NumPy integers; anything else is refused).

    Raises:
        RoundSamplesUnavailable: Not a valid round.
    """
    try:
        number = -1 if isinstance(round_number, bool) else operator.index(round_number)
    except TypeError:
        number = -1
    if number < 0:
        raise RoundSamplesUnavailable(f"the request names no valid round ({str(round_number)[:20]!r})")
    return number


def _private_folder(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask, and an existing folder keeps its own


def write_round_samples(run_dir: str | os.PathLike[str], record: RoundSamples, *, keep: int = KEEP_ROUNDS) -> Path:
    """Write ``record`` atomically and owner-only, then delete all but the ``keep`` most recent rounds.

    Args:
        run_dir: The client's run folder of the job (must exist).
        record: The round's samples.
        keep: Rounds to keep (>= 1).

    Returns:
        The written file.

    Raises:
        ValueError: ``keep`` < 1.
        OSError: The run folder is missing or not writable.
    """
    return _write_round_file(run_dir, RECORD_FOLDER, record.round, record.to_dict(), keep)


def recorded_rounds(run_dir: str | os.PathLike[str]) -> tuple[int, ...]:
    """The rounds with a record in ``run_dir``, ascending (empty when there is none)."""
    return _rounds_in(Path(run_dir) / RECORD_FOLDER)


def _rounds_in(folder: Path) -> tuple[int, ...]:
    """The rounds of the ``round_<n>.json`` files in ``folder``, ascending (empty when there is none)."""
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.is_file()]
    except OSError:
        return ()
    return tuple(sorted(int(match.group(1)) for name in names if (match := _RECORD_NAME.match(name))))


def _write_round_file(
    run_dir: str | os.PathLike[str], relative: Path, round_number: int, content: dict[str, Any], keep: int
) -> Path:
    """Write ``<run_dir>/<relative>/round_<n>.json`` atomically, owner-only (0600 in 0700 folders); keep the
    ``keep`` most recent rounds."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be a positive integer, got {keep!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    folder = run_dir / relative
    for path in (folder.parent, folder):
        _private_folder(path)
    text = json.dumps(content, indent=1) + "\n"

    def write(temp: Path) -> None:
        os.chmod(temp, 0o600)  # before any byte is written
        temp.write_text(text, encoding="utf-8")

    written = write_atomic(folder / f"round_{int(round_number)}.json", write)
    for old in _rounds_in(folder)[:-keep]:
        (folder / f"round_{old}.json").unlink(missing_ok=True)
    return written


def read_round_samples(
    run_dir: str | os.PathLike[str],
    round_number: Any,
    *,
    job_id: str,
    site: str,
    keep: int = KEEP_ROUNDS,
) -> RoundSamples:
    """The record of ``round_number`` for ``job_id`` at ``site``.

    Args:
        run_dir: The client's run folder of the job.
        round_number: The round asked for (from a request: anything; only non-negative integers are found).
        job_id: The job the record must belong to.
        site: The site the record must belong to.
        keep: The writer's ``keep`` (to say when a round's record was dropped as too old).

    Raises:
        RoundSamplesUnavailable: No usable record; the reason names no path or sample.
    """
    number = _requested_round(round_number)
    path = record_path(run_dir, number)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        rounds = recorded_rounds(run_dir)
        if len(rounds) >= keep and number < rounds[0]:
            raise RoundSamplesUnavailable(
                f"the site no longer keeps its record of round {number} (it keeps the {keep} most recent rounds)"
            ) from None
        if not rounds:
            raise RoundSamplesUnavailable(
                f"the site has no record of its samples for round {number}: its training script recorded no round "
                "in this job (see the site's log)"
            ) from None
        raise RoundSamplesUnavailable(f"the site has no record of its samples for round {number}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RoundSamplesUnavailable(
            f"the site's record of round {number} is unreadable", detail=f"{path}: {error}"
        ) from None
    try:
        record = RoundSamples.from_dict(json.loads(text))
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise RoundSamplesUnavailable(
            f"the site's record of round {number} is invalid", detail=f"{path}: {error}"
        ) from None
    if (record.job_id, record.site, record.round) != (job_id, site, number):
        raise RoundSamplesUnavailable(
            f"the site's record of round {number} belongs to another job, site or round",
            detail=f"{path}: job {record.job_id!r}, site {record.site!r}, round {record.round}",
        )
    if not record.positions:
        raise RoundSamplesUnavailable(f"the site's record of round {number} lists no training sample")
    return record


# --- what the site sent ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SentUpdate:
    """What one site sent to the server in one round of one job, as it left the site (after all its filters).

    Attributes:
        job_id: The NVFlare job.
        site: The site.
        round: The FedAvg round (the result's round header).
        digest: `medpfl_app.audit.update_digest.update_digest` of the update's entries as sent.
        declared_images: The most images the update declared (`medpfl_app.audit.update_digest.declared_images`);
            None when its meta declared none.
        server_identity: The identity name of the server that assigned the task (NVFlare's peer context of the
            task, received over this site's own connection); None when NVFlare gave none.
    """

    job_id: str
    site: str
    round: int
    digest: str
    declared_images: int | None = None
    server_identity: str | None = None

    def __post_init__(self) -> None:
        from medpfl_app.audit.update_digest import is_digest

        for name in ("job_id", "site"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise ValueError(f"round must be a non-negative integer, got {self.round!r}")
        if not is_digest(self.digest):
            raise ValueError("digest must be a 'sha256:' digest of 64 hex digits")
        if self.declared_images is not None and (
            isinstance(self.declared_images, bool)
            or not isinstance(self.declared_images, int)
            or self.declared_images < 1
        ):
            raise ValueError(f"declared_images must be a positive integer or None, got {self.declared_images!r}")
        if self.server_identity is not None and (
            not isinstance(self.server_identity, str) or not self.server_identity or len(self.server_identity) > 200
        ):
            raise ValueError("server_identity must be a short non-empty string or None")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "job_id": self.job_id,
            "site": self.site,
            "round": self.round,
            "digest": self.digest,
            "declared_images": self.declared_images,
            "server_identity": self.server_identity,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SentUpdate:
        """Raises: ValueError: another schema version, or a missing or invalid field."""
        if not isinstance(values, Mapping):
            raise ValueError("a sent-update record must be a JSON object")
        if values.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {values.get('schema_version')!r} is not {SCHEMA_VERSION}")
        return cls(
            job_id=values.get("job_id"),  # type: ignore[arg-type]  # checked in __post_init__
            site=values.get("site"),  # type: ignore[arg-type]
            round=values.get("round"),  # type: ignore[arg-type]
            digest=values.get("digest"),  # type: ignore[arg-type]
            declared_images=values.get("declared_images"),
            server_identity=values.get("server_identity"),
        )


def sent_path(run_dir: str | os.PathLike[str], round_number: int) -> Path:
    return Path(run_dir) / SENT_FOLDER / f"round_{int(round_number)}.json"


def sent_rounds(run_dir: str | os.PathLike[str]) -> tuple[int, ...]:
    """The rounds with a sent-update record in ``run_dir``, ascending (empty when there is none)."""
    return _rounds_in(Path(run_dir) / SENT_FOLDER)


def write_sent_update(run_dir: str | os.PathLike[str], record: SentUpdate, *, keep: int = KEEP_ROUNDS) -> Path:
    """Write ``record`` atomically and owner-only (0600 in 0700 folders); keep the ``keep`` most recent rounds.

    Raises:
        ValueError: ``keep`` < 1.
        OSError: The run folder is missing or not writable.
    """
    return _write_round_file(run_dir, SENT_FOLDER, record.round, record.to_dict(), keep)


def read_sent_update(run_dir: str | os.PathLike[str], round_number: Any, *, job_id: str, site: str) -> SentUpdate:
    """The record of what ``site`` sent in ``round_number`` of ``job_id``.

    Raises:
        RoundSamplesUnavailable: No usable record; the reason names no path or sample.
    """
    number = _requested_round(round_number)
    path = sent_path(run_dir, number)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RoundSamplesUnavailable(f"this site sent no update in round {number} (none recorded)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RoundSamplesUnavailable(
            f"the site's record of its round {number} update is unreadable", detail=f"{path}: {error}"
        ) from None
    try:
        record = SentUpdate.from_dict(json.loads(text))
    except ValueError as error:
        raise RoundSamplesUnavailable(
            f"the site's record of its round {number} update is invalid", detail=f"{path}: {error}"
        ) from None
    if (record.job_id, record.site, record.round) != (job_id, site, number):
        raise RoundSamplesUnavailable(
            f"the site's record of its round {number} update belongs to another job, site or round",
            detail=f"{path}: job {record.job_id!r}, site {record.site!r}, round {record.round}",
        )
    return record


# --- where the training script finds the run folder ---------------------------------------------------------------
def find_client_run_dir(
    job_id: str, site: str, *, cwd: str | os.PathLike[str], script: str | os.PathLike[str] | None = None
) -> Path:
    """The client's run folder of ``job_id`` at ``site`` (``<site workspace>/<job_id>``), as the training script
    can see it in either NVFlare execution mode.

    NVFlare runs the script from the app folder ``<run dir>/app_<site>``: an external process has it as its
    working folder, and the script itself sits in its ``custom/`` folder in both modes (``sys.argv[0]``, made
    absolute against ``cwd``); an in-process script runs in the client job process, whose working folder is the
    site workspace. The first of these that is an existing ``<job_id>/app_<site>`` folder wins.

    Args:
        job_id: ``flare.get_job_id()``.
        site: ``flare.get_site_name()``.
        cwd: The working folder.
        script: The script's path (``sys.argv[0]``), or None.

    Raises:
        MedPFLError: No candidate is the job's app folder of this site.
    """
    if not job_id or not site:
        raise MedPFLError(
            "the training script knows no job id or site name", fix="run it through NVFlare's Client API (flare.init())"
        )
    app = f"app_{site}"
    here = Path(cwd).resolve()
    starts: list[Path] = []
    if script:
        path = Path(script)
        starts.append((path if path.is_absolute() else here / path).resolve().parent)
    starts += [here, here / job_id / app]
    looked_at: list[str] = []
    for start in starts:
        for folder in (start, *start.parents):
            if folder.name == app and folder.parent.name == job_id and folder.is_dir():
                return folder.parent
        looked_at.append(str(start))
    raise MedPFLError(
        f"cannot find the run folder of job {job_id} for site {site} (no {job_id}/{app} folder at or above "
        f"{', '.join(looked_at)})",
        fix="run the site script through NVFlare's ClientAPIExecutor (in_process or external_process mode)",
        site=site,
    )


# --- the training set ---------------------------------------------------------------------------------------------
def training_set_digest(items: Iterable[Mapping[str, Any]]) -> str:
    """``sha256:`` of the training list as loaded: each item's image path, label, file size and modification time.

    Two loads of the same, unchanged files give the same digest; a reordered, edited or rewritten list or image
    file gives another.
    """
    entries = []
    for item in items:
        image = str(item["image"])
        try:
            status = os.stat(image)
            stamp: list[int] | None = [int(status.st_size), int(status.st_mtime_ns)]
        except OSError:
            stamp = None
        frame = item.get("frame")  # frames of one multi-frame file are separate samples
        entries.append([image, int(item["label"]), stamp] + ([int(frame)] if frame is not None else []))
    payload = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def describe_training_set(items: Sequence[Mapping[str, Any]], data: DataConfig, num_classes: int | None) -> TrainingSet:
    """The `TrainingSet` of ``items`` loaded with ``data`` (what the training script records)."""
    return TrainingSet(num_images=len(items), digest=training_set_digest(items), data=data, num_classes=num_classes)


@dataclass(frozen=True)
class TrainingPool:
    """All of a site's training images, as training saw them.

    Attributes:
        images: ``(P, C, H, W)`` float32, position ``i`` = item ``i`` of the training list.
        labels: The label of each image.
        training_set: What was loaded.
    """

    images: torch.Tensor
    labels: tuple[int, ...]
    training_set: TrainingSet


def load_training_pool(
    site: str,
    training_set: TrainingSet,
    *,
    workspace_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> TrainingPool:
    """Load the site's training images through the training script's own data resolution and transforms.

    The site's data is found by `medpfl_app.data.resolve_site_data` (as the training script does, with the same
    ``workspace_dir``), the list is read by `medpfl_app.data.load_site_data`, and each image goes through
    `medpfl_app.data.build_dataset` with the data settings training used (the transforms are deterministic; only
    caching and loader workers differ, which do not change pixels).

    Raises:
        RoundSamplesUnavailable: The data is not found, cannot be read, or is not the list training used.
    """
    import torch

    from medpfl_app.data import build_dataset, load_site_data, resolve_site_data

    try:
        settings = resolve_site_data(site, workspace_dir=workspace_dir, environ=environ)
    except MedPFLError as error:
        raise RoundSamplesUnavailable("the site's training data was not found", detail=str(error)) from None
    try:
        site_data = load_site_data(settings.datalist, site=site, num_classes=training_set.num_classes)
    except MedPFLError as error:
        raise RoundSamplesUnavailable("the site's training list could not be read", detail=str(error)) from None
    if (len(site_data.training), training_set_digest(site_data.training)) != (
        training_set.num_images,
        training_set.digest,
    ):
        raise RoundSamplesUnavailable(
            "the site's training data is not what it trained on (the list or its files changed since)",
            detail=f"{settings.datalist}: {len(site_data.training)} training items now, "
            f"{training_set.num_images} when trained",
        )
    config = replace(training_set.data, cache_rate=0.0, num_workers=0)
    try:
        dataset = build_dataset(site_data.training, config, train=True, site=site, validate=False)
        items = [dataset[i] for i in range(len(dataset))]
        images = torch.stack([torch.as_tensor(item["image"]).float() for item in items])
        labels = tuple(int(torch.as_tensor(item["label"]).reshape(-1)[0]) for item in items)
    except Exception as error:  # noqa: BLE001 - any loader failure becomes one path-free reason
        raise RoundSamplesUnavailable(
            f"the site's training images could not be loaded ({type(error).__name__})", detail=str(error)
        ) from None
    return TrainingPool(images=images, labels=labels, training_set=training_set)
