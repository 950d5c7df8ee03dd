"""What a POC workspace holds besides NVFlare's startup kits, and keeping it across ``nvflare poc prepare``.

``nvflare poc prepare --force`` deletes the whole workspace folder and provisions a new one. In a MedPFL
workspace that folder also holds the repository's own files (``README.md``, ``templates/``), each site's DP ledgers
(the site's spent ε: losing them restarts ε at 0), its privacy policy, its data configuration, and the results of
the jobs it ran. `inventory` names what a re-prepare would lose; `KeptAside` moves what must survive next to the
workspace and puts it back after NVFlare has provisioned the new one.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from medpfl_app.errors import MedPFLError

#: Top-level entries NVFlare's POC provisioning creates; everything else at the top is someone else's and is kept.
NVFLARE_TOP_LEVEL = frozenset({"example_project", "project.yml", "data", "jobs-storage", "snapshot-storage"})
#: Folders of a participant's workspace that NVFlare provisions; job run folders are named by job id.
_KIT_FOLDERS = frozenset({"startup", "local", "transfer", "medpfl"})
_JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class StateKind(StrEnum):
    """Things a site or the server keeps in a POC workspace that provisioning does not recreate."""

    DP_LEDGER = "DP ledger"
    PRIVACY_POLICY = "privacy policy"
    DATA_CONFIG = "data configuration"
    JOB_RESULTS = "job results"


@dataclass(frozen=True)
class WorkspaceState:
    """One thing a re-prepare would delete: what it is, whose it is, where."""

    kind: StateKind
    owner: str
    path: Path

    def describe(self, workspace: Path) -> str:
        return f"{self.owner}: {self.kind} {_relative(self.path, workspace)}"


def inventory(workspace: Path, prod_dir: Path) -> list[WorkspaceState]:
    """Everything under ``workspace`` that ``nvflare poc prepare`` would delete and not recreate."""
    found: list[WorkspaceState] = []
    participants = sorted(p for p in prod_dir.iterdir() if p.is_dir()) if prod_dir.is_dir() else []
    for folder in participants:
        found += [WorkspaceState(StateKind.DP_LEDGER, folder.name, path) for path in dp_ledger_paths(folder)]
        local = folder / "local"
        if (local / "privacy.json").is_file():
            found.append(WorkspaceState(StateKind.PRIVACY_POLICY, folder.name, local / "privacy.json"))
        if (local / "medpfl_data.json").is_file():
            found.append(WorkspaceState(StateKind.DATA_CONFIG, folder.name, local / "medpfl_data.json"))
        # job run folders, and results an admin console downloaded (into its transfer/ folder)
        runs = [*folder.iterdir(), *((folder / "transfer").iterdir() if (folder / "transfer").is_dir() else [])]
        found += [
            WorkspaceState(StateKind.JOB_RESULTS, folder.name, run)
            for run in sorted(runs)
            if run.is_dir() and run.name not in _KIT_FOLDERS and _JOB_ID.match(run.name)
        ]
    for store in ("jobs-storage", "snapshot-storage"):
        if (workspace / store).is_dir() and any((workspace / store).iterdir()):
            found.append(WorkspaceState(StateKind.JOB_RESULTS, "server", workspace / store))
    return found


def dp_ledger_paths(site_dir: Path) -> list[Path]:
    """A site's DP ledger files, their anchors and reset log: everything that carries its spent ε."""
    from medpfl_app.defenses.accountant import LEDGER_KINDS, SiteLedgers

    ledgers = SiteLedgers(site_dir)
    paths = {p for p in (site_dir / "medpfl").rglob("*") if p.is_file()} if (site_dir / "medpfl").is_dir() else set()
    if ledgers.guard_dir.is_dir():
        paths |= {p for p in ledgers.guard_dir.rglob("*") if p.is_file()}
    for kind in LEDGER_KINDS:
        try:
            anchored = ledgers.ledger_path(kind)
        except MedPFLError:
            continue  # an unreadable anchor is still kept above, with the whole guard folder
        if anchored.is_file():
            paths.add(anchored)
    return sorted(paths)


def kept_across_prepare(workspace: Path, prod_dir: Path) -> list[Path]:
    """What `prepare` always carries over: the DP ledgers and every top-level entry that is not NVFlare's."""
    if not workspace.is_dir():
        return []
    top = [p for p in sorted(workspace.iterdir()) if p.name not in NVFLARE_TOP_LEVEL]
    ledgers = [state.path for state in inventory(workspace, prod_dir) if state.kind == StateKind.DP_LEDGER]
    return top + [p for p in ledgers if _inside(p, workspace)]


def interrupted_keeps(workspace: Path) -> list[Path]:
    """Folders a `KeptAside` of an earlier, interrupted prepare left next to ``workspace``."""
    return sorted(workspace.parent.glob(f".{workspace.name}.kept-by-medpfl-*"))


class KeptAside:
    """Move paths under ``workspace`` to a sibling folder and back, keeping their place relative to ``workspace``.

    The sibling folder is on the same file system (moves are renames: a ledger keeps its inode and content). If
    a path cannot be put back because the new workspace already has something there, it stays in the sibling
    folder and `restore` names it.
    """

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.folder = workspace.parent / f".{workspace.name}.kept-by-medpfl-{os.getpid()}"
        self.moved: list[Path] = []

    def move(self, paths: list[Path]) -> None:
        self.folder.mkdir(mode=0o700)
        for path in paths:
            target = self.folder / path.relative_to(self.workspace)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            self.moved.append(path)

    def restore(self) -> list[Path]:
        """Put everything back; returns the paths that could not be (they stay in `folder`)."""
        blocked = []
        for path in self.moved:
            source = self.folder / path.relative_to(self.workspace)
            if path.exists() or path.is_symlink():
                blocked.append(source)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, path)
        if not blocked:
            shutil.rmtree(self.folder, ignore_errors=True)
        return blocked


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _relative(path: Path, workspace: Path) -> str:
    try:
        return str(path.relative_to(workspace))
    except ValueError:
        return str(path)
