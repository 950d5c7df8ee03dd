"""What the site sent in each round (`SentUpdate`), and its record file beside the round-samples records."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpfl_app.audit.round_samples.records import SCHEMA_VERSION
from medpfl_app.audit.round_samples.round_files import (
    KEEP_ROUNDS,
    SENT_FOLDER,
    check_owner,
    read_round_file,
    requested_round,
    rounds_in,
    write_round_file,
)
from medpfl_app.audit.round_samples.unavailable import RoundSamplesUnavailable


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
    """The sent-update record file of ``round_number`` in ``run_dir``."""
    return Path(run_dir) / SENT_FOLDER / f"round_{int(round_number)}.json"


def sent_rounds(run_dir: str | os.PathLike[str]) -> tuple[int, ...]:
    """The rounds with a sent-update record in ``run_dir``, ascending (empty when there is none)."""
    return rounds_in(Path(run_dir) / SENT_FOLDER)


def write_sent_update(run_dir: str | os.PathLike[str], record: SentUpdate, *, keep: int = KEEP_ROUNDS) -> Path:
    """Write ``record`` atomically and owner-only (0600 in 0700 folders); keep the ``keep`` most recent rounds.

    Raises:
        ValueError: ``keep`` < 1.
        OSError: The run folder is missing or not writable.
    """
    return write_round_file(run_dir, SENT_FOLDER, record.round, record.to_dict(), keep)


def read_sent_update(run_dir: str | os.PathLike[str], round_number: Any, *, job_id: str, site: str) -> SentUpdate:
    """The record of what ``site`` sent in ``round_number`` of ``job_id``.

    Raises:
        RoundSamplesUnavailable: No usable record; the reason names no path or sample.
    """
    number = requested_round(round_number)
    path = sent_path(run_dir, number)
    what = f"the site's record of its round {number} update"

    def missing() -> RoundSamplesUnavailable:
        return RoundSamplesUnavailable(f"this site sent no update in round {number} (none recorded)")

    record = read_round_file(path, SentUpdate.from_dict, what=what, missing=missing)
    check_owner(record, path, what=what, job_id=job_id, site=site, number=number)
    return record
