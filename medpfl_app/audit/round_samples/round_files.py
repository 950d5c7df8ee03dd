"""The files of the site-local round records: one ``round_<n>.json`` per round, written owner-only, read safely.

Both records (round samples and sent updates) live in folders of the client's run folder of the job; writing keeps
the `KEEP_ROUNDS` most recent rounds, and reading turns every failure into a `RoundSamplesUnavailable` whose reason
names no path.
"""

from __future__ import annotations

import json
import operator
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from medpfl_app.atomic_io import write_atomic
from medpfl_app.audit.round_samples.unavailable import RoundSamplesUnavailable

#: The records' folder under the client's run folder of the job.
RECORD_FOLDER = Path("medpfl") / "round_samples"
#: The sent-update records' folder under the client's run folder of the job.
SENT_FOLDER = Path("medpfl") / "sent_updates"
#: Rounds kept per job: the audit scores recent rounds; older records are deleted when a new one is written.
KEEP_ROUNDS = 16
_RECORD_NAME = re.compile(r"^round_(\d+)\.json$")

R = TypeVar("R", bound="OwnedRecord")


class OwnedRecord(Protocol):
    """A record that names the job, site and round it belongs to."""

    @property
    def job_id(self) -> str: ...

    @property
    def site(self) -> str: ...

    @property
    def round(self) -> int: ...


def requested_round(round_number: Any) -> int:
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


def rounds_in(folder: Path) -> tuple[int, ...]:
    """The rounds of the ``round_<n>.json`` files in ``folder``, ascending (empty when there is none)."""
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.is_file()]
    except OSError:
        return ()
    return tuple(sorted(int(match.group(1)) for name in names if (match := _RECORD_NAME.match(name))))


def _private_folder(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask, and an existing folder keeps its own


def write_round_file(
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
    for old in rounds_in(folder)[:-keep]:
        (folder / f"round_{old}.json").unlink(missing_ok=True)
    return written


def read_round_file(
    path: Path, parse: Callable[[Any], R], *, what: str, missing: Callable[[], RoundSamplesUnavailable]
) -> R:
    """Read and parse one record file; every failure becomes a path-free `RoundSamplesUnavailable`.

    Args:
        path: The record file.
        parse: Builds the record from the file's JSON (raises ``ValueError`` when it is invalid).
        what: The record as the reasons name it, e.g. ``"the site's record of round 3"``.
        missing: The error to raise when the file does not exist.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise missing() from None
    except (OSError, UnicodeDecodeError) as error:
        raise RoundSamplesUnavailable(f"{what} is unreadable", detail=f"{path}: {error}") from None
    try:
        return parse(json.loads(text))
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise RoundSamplesUnavailable(f"{what} is invalid", detail=f"{path}: {error}") from None


def check_owner(record: OwnedRecord, path: Path, *, what: str, job_id: str, site: str, number: int) -> None:
    """Refuse a record of another job, site or round than the one asked for."""
    if (record.job_id, record.site, record.round) != (job_id, site, number):
        raise RoundSamplesUnavailable(
            f"{what} belongs to another job, site or round",
            detail=f"{path}: job {record.job_id!r}, site {record.site!r}, round {record.round}",
        )
