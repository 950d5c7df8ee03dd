"""Client-level DP accounting: a site ledger over Opacus' RDP accountant, persisted as JSON, with a budget.

Each released update is one step of the Gaussian mechanism with noise multiplier z and sample rate 1 (a site that
sends its update every round is "sampled" with probability 1). ε is Opacus' RDP → (ε, δ) conversion over the whole
history, so rounds with different z compose correctly.

Budget integrity (`SiteLedgers`): a site keeps one ledger per kind (``client_dp``, ``dp_sgd``) where the site
decides, by default ``<site workspace>/medpfl/<kind>_ledger.json``. A second record of each ledger, its *anchor*
(ledger id, path, steps recorded), lives apart from it in ``<site workspace>/local/medpfl_privacy/``. Once a site
has an anchor, a missing, unreadable, replaced or rolled-back ledger stops training with a clear error instead of
restarting ε at 0; only `SiteLedgers.reset` (``medpfl privacy reset-ledger``) starts a new ledger, and it appends the
reset to an append-only log and writes it into the new ledger. Every write locks the ledger file itself
(`locked`): there is no separate lock file whose deletion would let two jobs write at once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import getpass
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medpfl_app.atomic_io import write_json_atomic
from medpfl_app.defenses._update import is_positive_number, require
from medpfl_app.errors import MedPFLError

LEDGER_FORMAT = "medpfl-dp-ledger/1"
ANCHOR_FORMAT = "medpfl-dp-ledger-anchor/1"
RESET_FORMAT = "medpfl-dp-ledger-reset/1"
SITE_SAMPLE_RATE = 1.0
#: The site's ledgers, by kind, relative to the site workspace (the default places; see `SiteLedgers`).
LEDGER_KINDS: dict[str, Path] = {
    "client_dp": Path("medpfl") / "client_dp_ledger.json",
    "dp_sgd": Path("medpfl") / "dp_sgd_ledger.json",
}
#: Where a site keeps the anchors of its ledgers and the reset log: apart from the ledgers, beside the site's config.
GUARD_DIR = Path("local") / "medpfl_privacy"
RESET_LOG_NAME = "ledger_resets.jsonl"


def _rdp_accountant() -> Any:
    # Imported on use: opacus pulls in torch (seconds to import), which NumPy-only filter processes need not pay.
    from opacus.accountants import RDPAccountant

    return RDPAccountant()


class BudgetExceeded(MedPFLError):
    """The next release would push the site's cumulative ε above its budget: the update is not released."""


@dataclasses.dataclass(frozen=True)
class DPCost:
    """The privacy cost of one release and of everything the site released so far, for one δ."""

    epsilon_round: float
    epsilon_total: float
    delta: float
    releases: int
    mechanism: str = "rdp"
    #: Explicit resets (``medpfl privacy reset-ledger``) in this ledger's lineage: ε counts since the last one.
    ledger_resets: int = 0

    def as_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_delta(delta: object) -> float:
    ok = isinstance(delta, int | float) and not isinstance(delta, bool) and 0 < delta < 1
    require(ok, f"delta must be in (0, 1), got {delta!r}", "set delta well below 1/number-of-sites (e.g. 1e-5)")
    return float(delta)  # type: ignore[arg-type]  # a number here: `require` raised otherwise


def epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """ε for δ of a history of (noise_multiplier, sample_rate, steps), computed by Opacus' RDP accountant."""
    accountant = _rdp_accountant()
    accountant.history = [tuple(entry) for entry in history]
    return float(accountant.get_epsilon(delta=delta)) if history else 0.0


def epsilon_per_release(noise_multiplier: float, delta: float) -> float:
    """ε of a single release at noise multiplier z (sample rate 1), in isolation."""
    return epsilon_of([(float(noise_multiplier), SITE_SAMPLE_RATE, 1)], delta)


class SiteAccountant:
    """In-memory RDP ledger in Opacus' `IAccountant` style (``step`` / ``get_epsilon`` / ``state_dict``).

    The state also lists each release (round, job, ε) so a site can show what it spent.
    """

    def __init__(self) -> None:
        self._rdp = _rdp_accountant()
        self.releases: list[dict[str, Any]] = []

    @staticmethod
    def mechanism() -> str:
        return "rdp"  # opacus.accountants.RDPAccountant.mechanism()

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return list(self._rdp.history)

    def step(self, *, noise_multiplier: float, sample_rate: float = SITE_SAMPLE_RATE) -> None:
        require(
            is_positive_number(noise_multiplier),
            f"noise_multiplier must be > 0, got {noise_multiplier!r}",
            "set a positive noise_multiplier",
        )
        self._rdp.step(noise_multiplier=float(noise_multiplier), sample_rate=float(sample_rate))

    def get_epsilon(self, delta: float) -> float:
        return epsilon_of(self.history, check_delta(delta))

    def epsilon_after_step(self, *, noise_multiplier: float, delta: float) -> float:
        """Cumulative ε if one more release at ``noise_multiplier`` happened; the state is not changed."""
        trial = _rdp_accountant()
        trial.history = copy.deepcopy(self._rdp.history)
        trial.step(noise_multiplier=float(noise_multiplier), sample_rate=SITE_SAMPLE_RATE)
        return epsilon_of(trial.history, check_delta(delta))

    def __len__(self) -> int:
        return sum(int(steps) for _, _, steps in self.history)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT,
            "mechanism": self.mechanism(),
            "history": [list(entry) for entry in self.history],
            "releases": copy.deepcopy(self.releases),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a state; refuse one from another format or accounting mechanism (ε would be meaningless)."""
        self._rdp.history = validated_history(state, self.mechanism())
        self.releases = list(state.get("releases", []))


def check_format(state: Any) -> None:
    """Refuse a state that is not a MedPFL ledger.

    Raises:
        MedPFLError: Not a JSON object of format `LEDGER_FORMAT`.
    """
    if not isinstance(state, dict) or state.get("format") != LEDGER_FORMAT:
        raise MedPFLError(
            f"not a MedPFL DP ledger (expected format {LEDGER_FORMAT!r})",
            fix="restore the site's ledger from a backup, or have the site admin run "
            "`medpfl privacy reset-ledger` (recorded); never point a site at another file",
        )


def validated_history(state: Any, mechanism: str) -> list[tuple[float, float, int]]:
    """The ``(noise_multiplier, sample_rate, steps)`` history of a ledger state kept with ``mechanism``.

    A ledger with no steps yet and no mechanism (a new ledger after a reset) suits every mechanism.

    Raises:
        MedPFLError: Not a MedPFL ledger, kept with another accounting mechanism, or a malformed history.
    """
    check_format(state)
    if state.get("mechanism") is None and state.get("history") == []:
        return []
    if state.get("mechanism") != mechanism:
        raise MedPFLError(
            f"the ledger was kept with mechanism {state.get('mechanism')!r}, this accountant uses "
            f"{mechanism!r}; the two cannot be combined",
            fix="keep using the original accountant, or start a new ledger file and count both budgets",
        )
    history = state.get("history")
    valid = isinstance(history, list) and all(
        isinstance(e, list | tuple)
        and len(e) == 3
        and is_positive_number(e[0])
        and 0 < float(e[1]) <= 1
        and isinstance(e[2], int)
        and e[2] > 0
        for e in history
    )
    if not valid:
        raise MedPFLError(
            "the ledger history is malformed",
            fix="restore the ledger file from a backup, or have the site admin run "
            "`medpfl privacy reset-ledger` (recorded)",
        )
    return [(float(z), float(q), int(n)) for z, q, n in history]


# --- locking ---------------------------------------------------------------------------------------------------


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


def steps_of(state: dict[str, Any] | None) -> int:
    """Mechanism steps recorded in a ledger state (releases for client-level DP, local steps for DP-SGD)."""
    history = (state or {}).get("history") or []
    try:
        return sum(int(entry[2]) for entry in history)
    except (TypeError, ValueError, IndexError):
        return 0


def ledger_identity(state: dict[str, Any] | None, kind: str | None) -> dict[str, Any]:
    """The identity fields of a ledger (kind, id, creation time, resets), new ones for a new or legacy ledger."""
    state = state or {}
    if isinstance(state.get("ledger_id"), str) and state["ledger_id"]:
        return {
            "kind": state.get("kind", kind),
            "ledger_id": state["ledger_id"],
            "created": state.get("created"),
            "resets": list(state.get("resets") or []),
        }
    return {
        "kind": kind,
        "ledger_id": uuid.uuid4().hex,
        "created": time.time(),
        "resets": list(state.get("resets") or []),
    }


# --- anchors: the site's second record of each ledger ------------------------------------------------------------


class LedgerAnchor:
    """The site's record, kept apart from a ledger, that the ledger exists: its path, id and steps so far.

    Once an anchor exists, the ledger it names must be there, be readable, carry the same id and hold at least the
    recorded steps; otherwise `check` stops training with an error instead of letting ε restart at 0. A missing
    anchor with no ledger is a fresh site; a missing anchor beside an existing ledger adopts that ledger.

    Args:
        path: The anchor JSON file (``<site workspace>/local/medpfl_privacy/<kind>.anchor.json``).
        kind: ``client_dp`` or ``dp_sgd``.
    """

    def __init__(self, path: str | os.PathLike[str], *, kind: str) -> None:
        self.path = Path(path)
        self.kind = kind

    def read(self) -> dict[str, Any] | None:
        """The anchor record, or None when the site has none yet.

        Raises:
            MedPFLError: The anchor exists but is unreadable.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._unreadable(error) from None
        if not text.strip():
            return None
        try:
            record = json.loads(text)
        except ValueError as error:
            raise self._unreadable(error) from None
        if not (
            isinstance(record, dict)
            and record.get("format") == ANCHOR_FORMAT
            and record.get("kind") == self.kind
            and isinstance(record.get("path"), str)
            and isinstance(record.get("ledger_id"), str)
            and isinstance(record.get("steps"), int)
        ):
            raise self._unreadable(ValueError(f"not a {ANCHOR_FORMAT} record of a {self.kind} ledger"))
        return record

    def _unreadable(self, error: Exception) -> MedPFLError:
        return MedPFLError(
            f"cannot read the site's {self.kind} ledger anchor {self.path}: {error}",
            fix="restore it from a backup, or have the site admin run `medpfl privacy reset-ledger` (recorded)",
        )

    def check(self, state: dict[str, Any] | None, ledger_path: Path) -> None:
        """Refuse a ledger state that would restart or lower the site's recorded ε.

        Raises:
            MedPFLError: The ledger is missing, another ledger than anchored, kept elsewhere, of another kind, or
                holds fewer steps than the site recorded.
        """
        if state is not None:
            check_format(state)
        record = self.check_location(ledger_path)
        kind = (state or {}).get("kind")
        if kind is not None and kind != self.kind:
            raise MedPFLError(
                f"{ledger_path} is a {kind} ledger, not the site's {self.kind} ledger",
                fix="restore the site's own ledger file; ledgers of different kinds are not exchangeable",
            )
        if record is None:
            return
        fix = (
            "restore the ledger file from a backup (it must hold at least the recorded steps), or have the site "
            f"admin run `medpfl privacy reset-ledger --kind {self.kind} --reason TEXT` (recorded)"
        )
        if state is None:
            raise MedPFLError(
                f"the site's {self.kind} ledger {ledger_path} is missing (or empty), but the site recorded "
                f"{record['steps']} DP steps in it (anchor {self.path}); training stops rather than restart ε at 0",
                fix=fix,
            )
        if state.get("ledger_id") != record["ledger_id"]:
            raise MedPFLError(
                f"{ledger_path} is not the ledger the site recorded (id {state.get('ledger_id')!r}, anchored "
                f"{record['ledger_id']!r}): it was replaced; training stops rather than restart ε",
                fix=fix,
            )
        if steps_of(state) < record["steps"]:
            raise MedPFLError(
                f"the site's {self.kind} ledger {ledger_path} holds {steps_of(state)} DP steps, fewer than the "
                f"{record['steps']} recorded (anchor {self.path}): it was rolled back; training stops rather than "
                "under-count ε",
                fix=fix,
            )

    def check_location(self, ledger_path: Path) -> dict[str, Any] | None:
        """The anchor record (None for none yet), if it names ``ledger_path``.

        Raises:
            MedPFLError: The site keeps this kind of ledger in another file, or the anchor is unreadable.
        """
        record = self.read()
        if record is not None and not _same_file(Path(record["path"]), ledger_path):
            raise MedPFLError(
                f"the site keeps its {self.kind} ledger at {record['path']} (anchor {self.path}), but this component "
                f"would charge {ledger_path}; two ledgers would split the site's budget",
                fix="leave ledger_path unset, or set the same ledger_path in every privacy.json scope of the site",
            )
        return record

    def advance(self, state: dict[str, Any], ledger_path: Path, *, replace: bool = False) -> None:
        """Record ``state`` (after it was committed to the ledger); the steps of one ledger id never decrease.

        Args:
            state: The ledger state just written.
            ledger_path: Where it was written.
            replace: Anchor a new ledger id even if another is anchored (only an explicit reset does this).
        """
        with locked(self.path) as lock:
            try:
                current = self.read()
            except MedPFLError:
                if not replace:
                    raise
                current = None
            if current is not None and current["ledger_id"] != state["ledger_id"] and not replace:
                raise MedPFLError(
                    f"the anchor {self.path} names ledger {current['ledger_id']!r}, not {state['ledger_id']!r}",
                    fix="have the site admin run `medpfl privacy reset-ledger` (recorded)",
                )
            steps = steps_of(state)
            if current is not None and current["ledger_id"] == state["ledger_id"]:
                steps = max(steps, int(current["steps"]))  # a concurrent writer may have anchored more already
            lock.commit(
                {
                    "format": ANCHOR_FORMAT,
                    "kind": self.kind,
                    "path": str(ledger_path.resolve()),
                    "ledger_id": state["ledger_id"],
                    "created": state.get("created"),
                    "steps": steps,
                    "resets": len(state.get("resets") or []),
                    "updated": time.time(),
                }
            )


def _same_file(anchored: Path, path: Path) -> bool:
    return anchored.expanduser().resolve() == path.expanduser().resolve()


class PrivacyLedger:
    """A site's persistent client-level DP ledger with an optional ε budget.

    `charge` is write-ahead: the cost is saved before the update may leave the site, so a crash after charging
    over-counts (safe) but never under-counts. An exclusive lock on the ledger file itself serialises concurrent
    jobs of one site.

    Args:
        path: The ledger JSON file (created on first charge). Keep it with the site's workspace; never delete it.
        delta: δ for which ε is reported and budgeted, in (0, 1).
        epsilon_max: Cumulative ε budget for this δ; None for no budget (ε is still reported).
        anchor: The site's anchor of this ledger (`SiteLedgers.client_dp_ledger` passes it). Without one, a deleted
            ledger file silently starts again at ε = 0: only for experiments outside a site.

    Notes:
        The budget holds only if every release of this site's data is charged to the same ledger file.
    """

    kind = "client_dp"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        delta: float,
        epsilon_max: float | None = None,
        anchor: LedgerAnchor | None = None,
    ) -> None:
        self.path = Path(path)
        self.delta = check_delta(delta)
        if epsilon_max is not None:
            require(
                is_positive_number(epsilon_max),
                f"epsilon_max must be > 0, got {epsilon_max!r}",
                "set epsilon_max to a positive budget, or leave it unset for no budget",
            )
        self.epsilon_max = None if epsilon_max is None else float(epsilon_max)
        self.anchor = anchor

    def _checked_state(self) -> dict[str, Any] | None:
        state = read_state(self.path)
        if self.anchor is not None:
            self.anchor.check(state, self.path)
        return state

    def load(self) -> SiteAccountant:
        """The accountant as persisted (empty for a new site; refused if the anchor says ε would restart)."""
        accountant = SiteAccountant()
        state = self._checked_state()
        if state is not None:
            accountant.load_state_dict(state)
        return accountant

    def spent(self) -> float:
        """Cumulative ε (for this ledger's δ) of everything charged so far."""
        return self.load().get_epsilon(self.delta)

    def charge(self, *, noise_multiplier: float, context: dict[str, Any] | None = None) -> DPCost:
        """Account one release at ``noise_multiplier``, or refuse it if it would exceed the budget.

        Args:
            noise_multiplier: z of the Gaussian mechanism applied to the clipped update.
            context: Plain JSON values stored with the release (round, job id, ...).

        Raises:
            BudgetExceeded: cumulative ε after this release would exceed ``epsilon_max``; nothing is charged.
            MedPFLError: The ledger is unreadable, or missing / replaced / rolled back while the site's anchor
                records it (nothing is charged, the update is not released).
        """
        self._checked_state()  # refuse before locking, which would create the file
        with locked(self.path) as lock:
            state = self._checked_state()
            accountant = SiteAccountant()
            if state is not None:
                accountant.load_state_dict(state)
            epsilon_total = accountant.epsilon_after_step(noise_multiplier=noise_multiplier, delta=self.delta)
            if self.epsilon_max is not None and epsilon_total > self.epsilon_max:
                raise BudgetExceeded(
                    f"privacy budget exhausted: releasing this update would raise cumulative ε to "
                    f"{epsilon_total:.4g} > epsilon_max {self.epsilon_max:.4g} (δ={self.delta:g}, "
                    f"{len(accountant)} releases so far, ledger {self.path}); the update is not released",
                    fix="stop training at this site, or have the data owner approve a larger epsilon_max / a larger "
                    "noise_multiplier; never delete the ledger to reset it",
                )
            epsilon_round = epsilon_per_release(noise_multiplier, self.delta)
            accountant.step(noise_multiplier=noise_multiplier)
            accountant.releases.append(
                {
                    **(context or {}),
                    "noise_multiplier": float(noise_multiplier),
                    "epsilon_round": epsilon_round,
                    "epsilon_total": epsilon_total,
                    "delta": self.delta,
                    "time": time.time(),
                }
            )
            new_state = {"format": LEDGER_FORMAT, **ledger_identity(state, self.kind), **accountant.state_dict()}
            lock.commit(new_state)
            if self.anchor is not None:
                self.anchor.advance(new_state, self.path)
        return DPCost(
            epsilon_round=epsilon_round,
            epsilon_total=epsilon_total,
            delta=self.delta,
            releases=len(accountant),
            ledger_resets=len(new_state["resets"]),
        )


# --- the site's ledgers, where the site decides ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LedgerReset:
    """One explicit reset of a site ledger, as appended to the reset log and written into the new ledger."""

    reset_id: str
    time: float
    kind: str
    ledger_path: str
    reason: str
    operator: str
    host: str
    previous_ledger_id: str | None
    previous_steps: int | None  # on file; None if the file was missing or unreadable
    anchored_steps: int | None  # what the anchor recorded; None without an anchor
    previous_epsilon_total: float | None  # the last release's ε, as recorded
    previous_delta: float | None
    archived_to: str | None  # the old ledger file's bytes, kept
    previous_sha256: str | None
    format: str = RESET_FORMAT

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SiteLedgers:
    """Where one site keeps its ε ledgers, their anchors and the reset log: the site's decision, never a job's.

    Args:
        workspace: The site's NVFlare workspace (the folder holding ``startup/`` and ``local/``).

    Notes:
        Ledgers default to ``<workspace>/medpfl/<kind>_ledger.json``. A site admin may place the client-level
        ledger elsewhere with ``ledger_path`` in a privacy.json scope (a site-installed filter); the first charge
        anchors it, and every later component of the site, job-level filters included, charges the anchored file.
        Anchors and the reset log live in ``<workspace>/local/medpfl_privacy/``. Deleting the whole site workspace
        (ledger and anchor together) is a new site: that cannot be told apart from a fresh install.
    """

    def __init__(self, workspace: str | os.PathLike[str]) -> None:
        self.workspace = Path(workspace).expanduser().resolve()

    @property
    def guard_dir(self) -> Path:
        return self.workspace / GUARD_DIR

    @property
    def reset_log(self) -> Path:
        return self.guard_dir / RESET_LOG_NAME

    def anchor(self, kind: str) -> LedgerAnchor:
        return LedgerAnchor(self.guard_dir / f"{_kind(kind)}.anchor.json", kind=kind)

    def ledger_path(self, kind: str, configured: str | os.PathLike[str] | None = None) -> Path:
        """The ledger file of ``kind``: ``configured`` (a site admin's path, relative to the workspace) if given,
        else where the site's anchor says it is, else the default place."""
        if configured is not None:
            path = Path(configured).expanduser()
            return path if path.is_absolute() else self.workspace / path
        record = self.anchor(kind).read()
        return Path(record["path"]) if record is not None else self.workspace / LEDGER_KINDS[_kind(kind)]

    def client_dp_ledger(
        self, *, delta: float, epsilon_max: float | None = None, configured: str | os.PathLike[str] | None = None
    ) -> PrivacyLedger:
        """The site's anchored client-level ledger."""
        return PrivacyLedger(
            self.ledger_path("client_dp", configured),
            delta=delta,
            epsilon_max=epsilon_max,
            anchor=self.anchor("client_dp"),
        )

    def resets(self) -> list[dict[str, Any]]:
        """Every reset recorded in the site's reset log, oldest first.

        Raises:
            MedPFLError: A line of the log is not a JSON object.
        """
        return self._logged_resets(strict=True)

    def _logged_resets(self, *, strict: bool = False) -> list[dict[str, Any]]:
        try:
            lines = self.reset_log.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                record = "unreadable"
            if isinstance(record, dict):
                records.append(record)
            elif record is not None and strict:
                raise MedPFLError(
                    f"line {number} of the reset log {self.reset_log} is not a JSON record",
                    fix="restore the reset log from a backup; it is append-only",
                )
        return records

    def reset(self, kind: str, *, reason: str, operator: str | None = None) -> LedgerReset:
        """Start a new, empty ledger of ``kind``: the site admin's explicit, recorded ε reset.

        Under the ledger's lock: the old ledger's bytes are archived beside it, the reset is appended (fsynced)
        to ``local/medpfl_privacy/ledger_resets.jsonl``, then a new ledger whose ``resets`` list carries this
        record is written and anchored. Works on a missing or corrupt ledger (what the error tells a site to run).

        Raises:
            MedPFLError: Empty reason, unknown kind, or not a site workspace.
        """
        kind = _kind(kind)
        if not isinstance(reason, str) or not reason.strip():
            raise MedPFLError("a ledger reset needs a reason", fix="pass --reason TEXT (it is kept in the reset log)")
        if not (self.workspace / "startup").is_dir():
            raise MedPFLError(
                f"{self.workspace} is not an NVFlare site workspace (no startup/ folder)",
                fix="pass the site's workspace, e.g. <poc workspace>/example_project/prod_00/site-1",
            )
        anchor = self.anchor(kind)
        try:
            record = anchor.read()
        except MedPFLError:
            record = None  # an unreadable anchor is replaced below
        path = Path(record["path"]) if record is not None else self.workspace / LEDGER_KINDS[kind]
        with locked(path) as lock:
            raw = path.read_bytes()
            try:
                old = json.loads(raw) if raw.strip() else None
                old = old if isinstance(old, dict) else None
            except ValueError:
                old = None
            reset_id = uuid.uuid4().hex
            archived = None
            if raw.strip():
                archived = path.with_name(
                    f"{path.name}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.{reset_id[:8]}.reset"
                )
                write_new_file(archived, raw)
            last = ((old or {}).get("releases") or [{}])[-1]
            last = last if isinstance(last, dict) else {}
            reset = LedgerReset(
                reset_id=reset_id,
                time=time.time(),
                kind=kind,
                ledger_path=str(path),
                reason=reason.strip(),
                operator=operator or _operator(),
                host=socket.gethostname(),
                previous_ledger_id=(old or {}).get("ledger_id"),
                previous_steps=steps_of(old) if old is not None else None,
                anchored_steps=None if record is None else int(record["steps"]),
                previous_epsilon_total=_number(last.get("epsilon_total")),
                previous_delta=_number(last.get("delta")),
                archived_to=None if archived is None else str(archived),
                previous_sha256=hashlib.sha256(raw).hexdigest() if raw.strip() else None,
            )
            earlier = (old or {}).get("resets")
            if not isinstance(earlier, list):  # the old ledger is gone: its lineage is in the reset log
                earlier = [r for r in self._logged_resets() if r.get("kind") == kind]
            append_line_durable(self.reset_log, json.dumps(reset.to_json(), sort_keys=True))
            state = {
                "format": LEDGER_FORMAT,
                "kind": kind,
                "ledger_id": uuid.uuid4().hex,
                "created": reset.time,
                "resets": [*earlier, reset.to_json()],
                "mechanism": "rdp" if kind == "client_dp" else None,
                "history": [],
                "releases": [],
            }
            lock.commit(state)
            anchor.advance(state, path, replace=True)
        return reset


def _kind(kind: str) -> str:
    if kind not in LEDGER_KINDS:
        raise MedPFLError(f"unknown ledger kind {kind!r}", fix=f"use one of {sorted(LEDGER_KINDS)}")
    return kind


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _operator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (e.g. a container without passwd entry)
        return f"uid {os.getuid()}"


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
