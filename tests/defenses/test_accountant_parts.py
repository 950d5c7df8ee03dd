"""The accountant package's parts: the import paths other code uses, and the pieces a ledger reset is built from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import medpfl_app.defenses.accountant as accountant
from medpfl_app.defenses.accountant import anchor, ledger_file, ledger_format, privacy_ledger, rdp, site_ledgers
from medpfl_app.defenses.accountant.ledger_reset import (
    archive_old_ledger,
    fresh_ledger_state,
    read_old_ledger,
    reset_record,
)

#: Names other packages and tests import from ``medpfl_app.defenses.accountant``, with the module that defines them.
IMPORTED_ELSEWHERE = {
    "LEDGER_FORMAT": ledger_format,
    "LEDGER_KINDS": ledger_format,
    "SITE_SAMPLE_RATE": rdp,
    "BudgetExceeded": privacy_ledger,
    "DPCost": rdp,
    "LedgerAnchor": anchor,
    "PrivacyLedger": privacy_ledger,
    "SiteAccountant": rdp,
    "SiteLedgers": site_ledgers,
    "check_delta": rdp,
    "epsilon_of": rdp,
    "epsilon_per_release": rdp,
    "ledger_identity": ledger_format,
    "locked": ledger_file,
    "read_state": ledger_file,
    "validated_history": ledger_format,
}


@pytest.mark.parametrize("name", sorted(IMPORTED_ELSEWHERE))
def test_the_package_re_exports_what_other_code_imports(name: str) -> None:
    """``from medpfl_app.defenses.accountant import X`` gives the object its own module defines."""
    assert getattr(accountant, name) is getattr(IMPORTED_ELSEWHERE[name], name)
    assert name in accountant.__all__


def test_dp_sgd_keeps_exporting_its_ledger() -> None:
    """`SampleLevelLedger` and `site_dp_sgd_ledger` moved to their own module; the old import path still works."""
    from medpfl_app.defenses import dp_sgd, dp_sgd_ledger

    assert dp_sgd.SampleLevelLedger is dp_sgd_ledger.SampleLevelLedger
    assert dp_sgd.site_dp_sgd_ledger is dp_sgd_ledger.site_dp_sgd_ledger


def _old_ledger(path: Path) -> bytes:
    state = {
        "format": ledger_format.LEDGER_FORMAT,
        "ledger_id": "old-id",
        "mechanism": "rdp",
        "history": [[1.0, 1.0, 3]],
        "releases": [{"epsilon_total": 1.5, "delta": 1e-5}, {"epsilon_total": 2.5, "delta": True}],
    }
    path.write_text(json.dumps(state), encoding="utf-8")
    return path.read_bytes()


def test_a_reset_record_describes_the_ledger_it_replaces(tmp_path: Path) -> None:
    """Steps, id and hash come from the old file, ε from its last release; a non-number δ is recorded as None."""
    path = tmp_path / "client_dp_ledger.json"
    raw = _old_ledger(path)
    read_raw, old = read_old_ledger(path)
    assert read_raw == raw and old is not None and old["ledger_id"] == "old-id"
    archived = archive_old_ledger(path, raw, "0123456789abcdef")
    assert archived is not None and archived.read_bytes() == raw and archived.name.endswith(".01234567.reset")

    reset = reset_record(
        reset_id="0123456789abcdef",
        kind="client_dp",
        path=path,
        reason="  new study  ",
        operator="admin",
        raw=raw,
        old=old,
        anchored={"steps": 2},
        archived=archived,
    )
    assert (reset.previous_ledger_id, reset.previous_steps, reset.anchored_steps) == ("old-id", 3, 2)
    assert (reset.previous_epsilon_total, reset.previous_delta) == (2.5, None)
    assert reset.previous_sha256 == hashlib.sha256(raw).hexdigest()
    assert (reset.reason, reset.operator, reset.archived_to) == ("new study", "admin", str(archived))


def test_an_empty_ledger_is_neither_archived_nor_hashed(tmp_path: Path) -> None:
    """A blank file (what `locked` creates) has nothing to keep: no archive, no hash, no previous steps."""
    path = tmp_path / "dp_sgd_ledger.json"
    path.write_bytes(b"  \n")
    raw, old = read_old_ledger(path)
    assert old is None
    assert archive_old_ledger(path, raw, "feedbeef") is None
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    reset = reset_record(
        reset_id="feedbeef",
        kind="dp_sgd",
        path=path,
        reason="x",
        operator=None,
        raw=raw,
        old=old,
        anchored=None,
        archived=None,
    )
    assert reset.previous_sha256 is None and reset.previous_steps is None and reset.anchored_steps is None
    assert reset.operator  # the user running the reset, or "uid N" without a user name


@pytest.mark.parametrize("kind, mechanism", [("client_dp", "rdp"), ("dp_sgd", None)])
def test_the_new_ledger_carries_the_lineage(tmp_path: Path, kind: str, mechanism: str | None) -> None:
    """Earlier resets first, this one last; a DP-SGD ledger leaves the mechanism to its first accountant."""
    path = tmp_path / "ledger.json"
    path.write_bytes(b"")
    raw, old = read_old_ledger(path)
    reset = reset_record(
        reset_id="r2",
        kind=kind,
        path=path,
        reason="why",
        operator="me",
        raw=raw,
        old=old,
        anchored=None,
        archived=None,
    )
    state = fresh_ledger_state(kind, reset, [{"reset_id": "r1"}])
    assert [r["reset_id"] for r in state["resets"]] == ["r1", "r2"]
    assert state["mechanism"] == mechanism and state["history"] == [] and state["created"] == reset.time
    assert ledger_format.validated_history(state, "rdp") == []
