"""The round-samples record files: one per round, written by the training script, read by the site's scorer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medpfl_app.audit.round_samples.records import RoundSamples
from medpfl_app.audit.round_samples.round_files import (
    KEEP_ROUNDS,
    RECORD_FOLDER,
    check_owner,
    read_round_file,
    requested_round,
    rounds_in,
    write_round_file,
)
from medpfl_app.audit.round_samples.unavailable import RoundSamplesUnavailable


def record_folder(run_dir: str | os.PathLike[str]) -> Path:
    """The records' folder of one job at one site: ``<run_dir>/medpfl/round_samples``."""
    return Path(run_dir) / RECORD_FOLDER


def record_path(run_dir: str | os.PathLike[str], round_number: int) -> Path:
    """The record file of ``round_number`` in ``run_dir``."""
    return record_folder(run_dir) / f"round_{int(round_number)}.json"


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
    return write_round_file(run_dir, RECORD_FOLDER, record.round, record.to_dict(), keep)


def recorded_rounds(run_dir: str | os.PathLike[str]) -> tuple[int, ...]:
    """The rounds with a record in ``run_dir``, ascending (empty when there is none)."""
    return rounds_in(Path(run_dir) / RECORD_FOLDER)


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
    number = requested_round(round_number)
    path = record_path(run_dir, number)
    what = f"the site's record of round {number}"
    record = read_round_file(
        path, RoundSamples.from_dict, what=what, missing=lambda: _no_record(run_dir, number, keep=keep)
    )
    check_owner(record, path, what=what, job_id=job_id, site=site, number=number)
    if not record.positions:
        raise RoundSamplesUnavailable(f"{what} lists no training sample")
    return record


def _no_record(run_dir: str | os.PathLike[str], number: int, *, keep: int) -> RoundSamplesUnavailable:
    """Why round ``number`` has no record: dropped as too old, no round recorded at all, or just not this one."""
    rounds = recorded_rounds(run_dir)
    if len(rounds) >= keep and number < rounds[0]:
        return RoundSamplesUnavailable(
            f"the site no longer keeps its record of round {number} (it keeps the {keep} most recent rounds)"
        )
    if not rounds:
        return RoundSamplesUnavailable(
            f"the site has no record of its samples for round {number}: its training script recorded no round "
            "in this job (see the site's log)"
        )
    return RoundSamplesUnavailable(f"the site has no record of its samples for round {number}")
