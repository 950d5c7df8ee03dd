"""Where a site's DP-SGD ledger lives: always the site's own, in its workspace, so ε adds up over jobs.

A job cannot move the ledger (a new file would restart ε at 0) and cannot turn it off inside a site workspace;
``--dp_ledger none`` is only for experiments outside any NVFlare site.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from medpfl_app.errors import MedPFLError

if TYPE_CHECKING:
    from medpfl_app.defenses.dp_sgd import SampleLevelLedger


def site_workspace(workspace_dir: str | None, start: Path) -> Path | None:
    """The site's NVFlare workspace: ``workspace_dir`` if given, else the nearest folder at or above ``start``
    holding a ``startup`` folder (NVFlare's marker of a site workspace); None when there is none."""
    if workspace_dir:
        return Path(workspace_dir).expanduser().resolve()
    here = start.resolve()
    return next((folder for folder in (here, *here.parents) if (folder / "startup").is_dir()), None)


def dp_ledger_path(value: str, *, workspace_dir: str | None, start: Path) -> Path | None:
    """Where the DP-SGD ledger lives for ``--dp_ledger value``: the site's ledger, or None for ``none``.

    Raises:
        MedPFLError: a path (a job cannot move the site's ledger), ``none`` inside a site workspace (a DP-SGD run
            at a site is always charged to the site's ledger), or ``auto`` with no site workspace found.
    """
    from medpfl_app.defenses.accountant import SiteLedgers

    root = _dp_ledger_site(value, workspace_dir=workspace_dir, start=start)
    return None if root is None else SiteLedgers(root).ledger_path("dp_sgd")


def dp_sgd_site_ledger(value: str, *, workspace_dir: str | None, start: Path) -> SampleLevelLedger | None:
    """The site's anchored DP-SGD ledger for ``--dp_ledger value`` (None for ``none`` outside a site).

    Raises:
        MedPFLError: as `dp_ledger_path`.
    """
    from medpfl_app.defenses.accountant import SiteLedgers
    from medpfl_app.defenses.dp_sgd import site_dp_sgd_ledger

    root = _dp_ledger_site(value, workspace_dir=workspace_dir, start=start)
    return None if root is None else site_dp_sgd_ledger(SiteLedgers(root))


def _dp_ledger_site(value: str, *, workspace_dir: str | None, start: Path) -> Path | None:
    if value not in ("auto", "none"):
        raise MedPFLError(
            f"--dp_ledger {value!r}: a job cannot choose where the site's DP-SGD ledger is (a new file would restart "
            "ε at 0)",
            fix="drop --dp_ledger (auto: the site's own ledger in its workspace)",
        )
    root = site_workspace(workspace_dir, start)
    if value == "none":
        if root is not None:
            raise MedPFLError(
                f"--dp_ledger none is refused at a site ({root}): every DP-SGD run on a site's data is charged to "
                "the site's ledger, or ε would restart at 0",
                fix="drop --dp_ledger; to train without a privacy claim, turn DP-SGD off (dp_noise_multiplier 0)",
            )
        return None
    if root is None:
        raise MedPFLError(
            f"cannot find this site's workspace (no 'startup' folder at or above {start}) to keep the DP-SGD ledger",
            fix="set MEDPFL_SITE_WORKSPACE to the site's workspace, or, for an experiment outside any NVFlare site, "
            "pass --dp_ledger none (ε then counts this job's steps only)",
        )
    return root
