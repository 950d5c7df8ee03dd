"""``medpfl privacy``: the site admin's explicit, recorded reset of a site's ε ledger.

A site's DP ledgers cannot be reset by deleting them: once the site has recorded DP releases, a missing, unreadable,
replaced or rolled-back ledger stops training (`medpfl_app.defenses.accountant.SiteLedgers`). ``reset-ledger`` is
the one way to start again at ε = 0, and it leaves a trace: the old ledger is archived beside it, the reset is
appended to ``<site workspace>/local/medpfl_privacy/ledger_resets.jsonl`` and written into the new ledger, and every
later client-DP update's meta counts it (``ledger_resets``).

Kept free of heavy imports: ``medpfl --help`` loads this module.
"""

from __future__ import annotations

import argparse
from pathlib import Path

KINDS = ("client_dp", "dp_sgd")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``medpfl privacy reset-ledger`` to the top-level parser."""
    parser = subparsers.add_parser(
        "privacy",
        help="site privacy budget: recorded ledger resets",
        description="Manage a site's differential-privacy budget records (site admins only).",
    )
    actions = parser.add_subparsers(dest="privacy_command", metavar="ACTION")
    parser.set_defaults(func=lambda _args: (parser.print_help(), 2)[1])

    reset = actions.add_parser(
        "reset-ledger",
        help="start a site's ε ledger again at 0, recorded in an append-only reset log",
        description=(
            "Start a new, empty ε ledger of one kind for a site: the data owner's explicit decision, for example "
            "after the ledger was lost or corrupted (training stops until then) or when a new data release makes "
            "the old budget moot. The old ledger is archived beside it as <ledger>.<time>.<id>.reset, the reset "
            "(reason, operator, host, old ledger id, steps and last ε) is appended to "
            "<site workspace>/local/medpfl_privacy/ledger_resets.jsonl, and the new ledger starts with the same "
            "record. Resetting voids the DP guarantee over the site's whole history: ε then counts only releases "
            "after the reset. Run it while no job is running at the site."
        ),
    )
    reset.add_argument(
        "--site-workspace", type=Path, required=True, help="the site's NVFlare workspace (holds startup/ and local/)"
    )
    reset.add_argument(
        "--kind",
        choices=KINDS,
        required=True,
        help="which ledger: client_dp (ClientDPFilter) or dp_sgd (Opacus DP-SGD in training)",
    )
    reset.add_argument("--reason", required=True, help="why the budget is reset (kept in the reset log)")
    reset.add_argument(
        "--operator", default=None, help="who resets it (kept in the reset log); default: the user running the command"
    )
    reset.set_defaults(func=_reset_ledger)


def _reset_ledger(args: argparse.Namespace) -> int:
    from medpfl_app.defenses.accountant import SiteLedgers

    site = SiteLedgers(args.site_workspace)
    reset = site.reset(args.kind, reason=args.reason, operator=args.operator)
    previous = "no readable ledger" if reset.previous_steps is None else f"{reset.previous_steps} steps"
    if reset.previous_epsilon_total is not None:
        previous += f", last recorded ε {reset.previous_epsilon_total:.4g} at δ {reset.previous_delta:g}"
    print(f"reset the {reset.kind} ledger {reset.ledger_path} ({previous}); reset id {reset.reset_id}")
    if reset.archived_to:
        print(f"old ledger kept as {reset.archived_to}")
    print(f"recorded in {site.reset_log}")
    return 0
