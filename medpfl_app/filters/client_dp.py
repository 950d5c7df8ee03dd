"""Client-level DP result filter: clip + Gaussian noise, charged to the site's persistent ledger with a budget."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from medpfl_app.defenses.accountant import SITE_SAMPLE_RATE, PrivacyLedger, check_delta
from medpfl_app.defenses.client_dp import ClientDP
from medpfl_app.errors import MedPFLError
from medpfl_app.filters._base import DefenseFilter, _plain, seeded_rng

DEFAULT_LEDGER = os.path.join("medpfl", "client_dp_ledger.json")


class ClientDPFilter(DefenseFilter):
    """DP-FedAvg-style client-level DP on the outgoing update, with per-site (ε, δ) accounting and a budget.

    Clips the update (over all float entries) to L2 norm ``clip_norm``, adds N(0, (noise_multiplier·clip_norm)²)
    per entry, then charges one Gaussian-mechanism step (sample rate 1) to the site ledger (Opacus RDP accountant)
    before the update is released. If the release would push cumulative ε above ``epsilon_max``, it raises
    (NVFlare replies ``TASK_RESULT_FILTER_ERROR``; the update is not sent). The DXO meta gets ``epsilon_round``,
    ``epsilon_total``, ``delta`` and ``releases``.

    Job config: ``{"path": "medpfl_app.filters.client_dp.ClientDPFilter", "args": {"clip_norm": 1.0,
    "noise_multiplier": 1.0, "delta": 1e-5, "epsilon_max": 20.0}}``.

    Args:
        clip_norm: C > 0 (L2 bound of the whole update).
        noise_multiplier: z > 0 (noise std z·C).
        delta: δ in (0, 1) for which ε is reported and budgeted.
        epsilon_max: Cumulative ε budget of the site ledger; null for none (ε still reported).
        ledger_path: Ledger JSON file; relative paths are resolved against the site workspace root
            (``fl_ctx.get_workspace().get_root_dir()``). Default ``medpfl/client_dp_ledger.json`` there: one ledger
            per site, shared by all jobs, because all of them release information about the same data.
        seed: Tests only. A fixed or known seed makes the noise removable and VOIDS the guarantee.

    Notes:
        (ε, δ)-DP at client level (add/remove of this site's update, sensitivity C). Void if any release of this
        site's data bypasses this filter or the ledger (put it in the site's privacy.json scope so jobs cannot drop
        it), if the ledger file is deleted or reset, if the seed is set, or if full weights are clipped (on WEIGHTS
        results this filter needs `GlobalModelRecorder` and works on ``local − global``). Metrics sent with the
        update (e.g. training loss) are not covered.
    """

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        delta: float = 1e-5,
        epsilon_max: float | None = None,
        ledger_path: str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.epsilon_max = epsilon_max
        self.ledger_path = ledger_path
        self.seed = seed
        self._defense = ClientDP(clip_norm=clip_norm, noise_multiplier=noise_multiplier)
        check_delta(delta)
        if ledger_path is not None and (not isinstance(ledger_path, str) or not ledger_path.strip()):
            raise MedPFLError(f"ClientDPFilter: ledger_path must be a non-empty string or null, got {ledger_path!r}",
                              fix="leave ledger_path unset to use <site workspace>/medpfl/client_dp_ledger.json")
        # a throwaway ledger validates epsilon_max now, at configuration time
        PrivacyLedger(Path(ledger_path or DEFAULT_LEDGER), delta=delta, epsilon_max=epsilon_max)
        self._rng = seeded_rng(seed, type(self).__name__)
        if seed is not None:
            self.logger.warning("ClientDPFilter: seed is set; the noise is reproducible and the DP guarantee is VOID "
                                "(tests only)")

    def resolve_ledger_path(self, fl_ctx: FLContext) -> Path:
        path = Path(self.ledger_path or DEFAULT_LEDGER)
        if path.is_absolute():
            return path
        try:
            root = fl_ctx.get_workspace().get_root_dir()
        except Exception:  # no engine/workspace in this context
            raise MedPFLError(
                "ClientDPFilter: the site workspace is unknown here, so the DP ledger cannot be located",
                fix="run inside an NVFlare site, or set ledger_path to an absolute file path",
            ) from None
        return Path(root) / path

    def _account(self, shareable: Shareable, fl_ctx: FLContext) -> dict[str, Any]:
        ledger = PrivacyLedger(self.resolve_ledger_path(fl_ctx), delta=self.delta, epsilon_max=self.epsilon_max)
        cost = ledger.charge(
            noise_multiplier=self.noise_multiplier,
            context={
                "round": _plain(shareable.get_header(AppConstants.CURRENT_ROUND)),
                "job_id": fl_ctx.get_job_id(),
                "site": fl_ctx.get_identity_name() or None,
            },
        )
        return {
            "epsilon_round": cost.epsilon_round,
            "epsilon_total": cost.epsilon_total,
            "delta": cost.delta,
            "releases": cost.releases,
            "epsilon_max": self.epsilon_max,
            "accountant": "opacus.accountants.RDPAccountant",
            "sample_rate": SITE_SAMPLE_RATE,
        }
