"""Client-level DP accounting: a site ledger over Opacus' RDP accountant, persisted as JSON, with a budget.

Each released update is one step of the Gaussian mechanism with noise multiplier z and sample rate 1 (a site that
sends its update every round is "sampled" with probability 1). ε is Opacus' RDP → (ε, δ) conversion over the whole
history, so rounds with different z compose correctly (`rdp`).

Budget integrity (`SiteLedgers`, `site_ledgers`): a site keeps one ledger per kind (``client_dp``, ``dp_sgd``) where
the site decides, by default ``<site workspace>/medpfl/<kind>_ledger.json``. A second record of each ledger, its
*anchor* (`LedgerAnchor`: ledger id, path, steps recorded), lives apart from it in
``<site workspace>/local/medpfl_privacy/``. Once a site has an anchor, a missing, unreadable, replaced or rolled-back
ledger stops training with a clear error instead of restarting ε at 0; only `SiteLedgers.reset`
(``medpfl privacy reset-ledger``) starts a new ledger, and it appends the reset to an append-only log and writes it
into the new ledger (`ledger_reset`). Every write locks the ledger file itself (`locked`, `ledger_file`): there is
no separate lock file whose deletion would let two jobs write at once.

Modules: `ledger_format` (format names, default places, content checks), `ledger_file` (lock, read, durable
writes), `rdp` (ε math and the in-memory `SiteAccountant`), `anchor`, `privacy_ledger` (the budgeted client-level
ledger), `ledger_reset` and `site_ledgers`.
"""

from medpfl_app.defenses.accountant.anchor import LedgerAnchor
from medpfl_app.defenses.accountant.ledger_file import (
    LedgerLock,
    append_line_durable,
    locked,
    read_state,
    write_new_file,
)
from medpfl_app.defenses.accountant.ledger_format import (
    ANCHOR_FORMAT,
    GUARD_DIR,
    LEDGER_FORMAT,
    LEDGER_KINDS,
    RESET_FORMAT,
    RESET_LOG_NAME,
    check_format,
    ledger_identity,
    steps_of,
    validated_history,
)
from medpfl_app.defenses.accountant.ledger_reset import LedgerReset
from medpfl_app.defenses.accountant.privacy_ledger import BudgetExceeded, PrivacyLedger
from medpfl_app.defenses.accountant.rdp import (
    SITE_SAMPLE_RATE,
    DPCost,
    SiteAccountant,
    check_delta,
    epsilon_of,
    epsilon_per_release,
)
from medpfl_app.defenses.accountant.site_ledgers import SiteLedgers

__all__ = [
    "ANCHOR_FORMAT",
    "GUARD_DIR",
    "LEDGER_FORMAT",
    "LEDGER_KINDS",
    "RESET_FORMAT",
    "RESET_LOG_NAME",
    "SITE_SAMPLE_RATE",
    "BudgetExceeded",
    "DPCost",
    "LedgerAnchor",
    "LedgerLock",
    "LedgerReset",
    "PrivacyLedger",
    "SiteAccountant",
    "SiteLedgers",
    "append_line_durable",
    "check_delta",
    "check_format",
    "epsilon_of",
    "epsilon_per_release",
    "ledger_identity",
    "locked",
    "read_state",
    "steps_of",
    "validated_history",
    "write_new_file",
]
