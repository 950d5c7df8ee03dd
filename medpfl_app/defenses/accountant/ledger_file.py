"""Reading and writing ledger files safely: a lock on the ledger file itself, reads, and fsynced writes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medpfl_app.atomic_io import write_json_atomic
from medpfl_app.errors import MedPFLError


class LedgerLock:
    """An exclusive ``flock`` held on the ledger file itself (see `locked`)."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def holds_current_file(self) -> bool:
        """Whether ``path`` still names the locked file (nobody deleted or replaced it behind the lock)."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(self.fd)
        return (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino)

    def commit(self, state: dict[str, Any]) -> None:
        """Replace the ledger by ``state`` (atomic rename, fsynced), if the lock still covers the file on disk.

        Raises:
            MedPFLError: The ledger file was deleted or replaced by someone who did not hold the lock.
        """
        if not self.holds_current_file():
            raise MedPFLError(
                f"{self.path} was deleted or replaced while this process held its lock; nothing was written and "
                "the update is not released",
                fix="find what touches the site's ledger files and stop it; never delete or replace a DP ledger",
            )
        write_json_atomic(self.path, state, durable=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[LedgerLock]:
    """An exclusive lock on the file ``path`` itself: serialises every process that writes one ledger.

    There is no separate ``.lock`` file whose deletion would break mutual exclusion. Writers replace the ledger by
    an atomic rename (a new inode), so a process that obtains the lock checks that ``path`` still names the file it
    locked and otherwise retries on the current one. The file is created empty if missing (`read_state` reads an
    empty ledger as a missing one).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            lock = LedgerLock(fd, path)
            if lock.holds_current_file():
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # replaced by the previous holder's commit, or deleted: lock the file that is there now
    try:
        yield lock
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def read_state(path: Path) -> dict[str, Any] | None:
    """The JSON state of a ledger file, or None when it does not exist yet (or is empty: created by `locked`).

    Raises:
        MedPFLError: The file exists but is not readable JSON.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise _unreadable(path, error) from None
    if not text.strip():
        return None
    try:
        state: dict[str, Any] = json.loads(text)  # ledger files hold the object this module wrote
    except ValueError as error:
        raise _unreadable(path, error) from None
    return state


def _unreadable(path: Path, error: Exception) -> MedPFLError:
    return MedPFLError(
        f"cannot read the DP ledger {path}: {error}; training stops rather than restart ε at 0",
        fix="restore the ledger from a backup, or have the site admin run `medpfl privacy reset-ledger "
        "--site-workspace DIR --kind KIND --reason TEXT` (recorded); deleting it does not reset the budget",
    )


def write_new_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, which must not exist yet, and fsync it (archives of reset ledgers)."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def append_line_durable(path: Path, line: str) -> None:
    """Append one line to ``path`` (opened append-only) and fsync it; the folder is created if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as handle:
        handle.write((line.rstrip("\n") + "\n").encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
