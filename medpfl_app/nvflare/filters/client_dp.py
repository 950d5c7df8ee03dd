"""Client-level DP result filter: clip + Gaussian noise, charged to the site's persistent ledger with a budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nvflare.apis.filter import FilterContextKey, FilterSource
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from medpfl_app.defenses.accountant import LEDGER_KINDS, SITE_SAMPLE_RATE, PrivacyLedger, SiteLedgers, check_delta
from medpfl_app.defenses.client_dp import ClientDP
from medpfl_app.defenses.epsilon_audit import audit_defense
from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.filters.defense_filter import DefenseFilter, _plain, seeded_rng

DEFAULT_LEDGER = str(LEDGER_KINDS["client_dp"])
#: Canary trials behind ``epsilon_empirical`` (0 turns it off) and the audit's own fixed seed: the audit runs on
#: synthetic updates, so a public seed costs no privacy and lets the server recompute the site's figure exactly.
DEFAULT_EMPIRICAL_TRIALS = 4000
MAX_EMPIRICAL_TRIALS = 200_000
EMPIRICAL_SEED = 0
EMPIRICAL_CONFIDENCE = 0.95


class ClientDPFilter(DefenseFilter):
    """DP-FedAvg-style client-level DP on the outgoing update, with per-site (ε, δ) accounting and a budget.

    Clips the update (over all float entries) to L2 norm ``clip_norm``, adds N(0, (noise_multiplier·clip_norm)²)
    per entry, then charges one Gaussian-mechanism step (sample rate 1) to the site ledger (Opacus RDP accountant)
    before the update is released. If the release would push cumulative ε above ``epsilon_max``, it raises
    (NVFlare replies ``TASK_RESULT_FILTER_ERROR``; the update is not sent). The DXO meta gets ``epsilon_round``,
    ``epsilon_total``, ``delta``, ``releases`` and ``epsilon_empirical``: an empirical lower bound ε̂ on one
    release's ε (`medpfl_app.defenses.epsilon_audit.audit_defense`: this filter's own `ClientDP` on synthetic
    canary updates, never the site's data), computed once per parameter set; ε̂ above ``epsilon_round``'s
    per-release claim means the mechanism or the accountant is wrong.

    Job config: ``{"path": "medpfl_app.nvflare.filters.client_dp.ClientDPFilter", "args": {"clip_norm": 1.0,
    "noise_multiplier": 1.0, "delta": 1e-5, "epsilon_max": 20.0}}``.

    Args:
        clip_norm: C > 0 (L2 bound of the whole update).
        noise_multiplier: z > 0 (noise std z·C).
        delta: δ in (0, 1) for which ε is reported and budgeted.
        epsilon_max: Cumulative ε budget of the site ledger; null for none (ε still reported).
        ledger_path: Site admins only, in a privacy.json scope: where the site keeps its client-level ledger
            (relative paths against the site workspace root). A job-installed filter (or one NVFlare did not
            install from privacy.json) with ``ledger_path`` set REFUSES to release the update: a job must not move
            the site's budget. Unset, the filter charges the site's ledger: where the site's anchor says it is,
            else ``<site workspace>/medpfl/client_dp_ledger.json``: one ledger per site, shared by all jobs and
            scopes, because all of them release information about the same data.
        seed: Tests only. A fixed or known seed makes the noise removable and VOIDS the guarantee.
        empirical_trials: Canary trials of the empirical ε lower bound (default 4000, about a second once per
            parameter set); 0 turns it off (``epsilon_empirical`` is then null). A failing audit refuses the release.

    Notes:
        (ε, δ)-DP at client level (add/remove of this site's update, sensitivity C). Void if any release of this
        site's data bypasses this filter or the ledger (put it in the site's privacy.json scope so jobs cannot drop
        it), if the site admin resets the ledger (``medpfl privacy reset-ledger``; ``ledger_resets`` in the meta
        counts resets), if the seed is set, or if full weights are clipped (on WEIGHTS results this filter needs
        `GlobalModelRecorder` and works on ``local − global``). Metrics sent with the update (e.g. training loss)
        are not covered. A deleted, unreadable, replaced or rolled-back ledger stops the site's releases (see
        `medpfl_app.defenses.accountant.SiteLedgers`).
    """

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        delta: float = 1e-5,
        epsilon_max: float | None = None,
        ledger_path: str | None = None,
        seed: int | None = None,
        empirical_trials: int = DEFAULT_EMPIRICAL_TRIALS,
    ) -> None:
        super().__init__()
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.epsilon_max = epsilon_max
        self.ledger_path = ledger_path
        self.seed = seed
        self.empirical_trials = empirical_trials
        self._empirical: dict[tuple[float, float, float, int], dict[str, Any]] = {}
        self._defense = ClientDP(clip_norm=clip_norm, noise_multiplier=noise_multiplier)
        check_delta(delta)
        if (
            isinstance(empirical_trials, bool)
            or not isinstance(empirical_trials, int)
            or not (empirical_trials == 0 or 4 <= empirical_trials <= MAX_EMPIRICAL_TRIALS)
        ):
            raise MedPFLError(
                f"ClientDPFilter: empirical_trials must be 0 (off) or an int in [4, {MAX_EMPIRICAL_TRIALS}], "
                f"got {empirical_trials!r}",
                fix=f"leave empirical_trials unset ({DEFAULT_EMPIRICAL_TRIALS}) or set e.g. 2000",
            )
        if ledger_path is not None and (not isinstance(ledger_path, str) or not ledger_path.strip()):
            raise MedPFLError(
                f"ClientDPFilter: ledger_path must be a non-empty string or null, got {ledger_path!r}",
                fix="leave ledger_path unset to use <site workspace>/medpfl/client_dp_ledger.json",
            )
        # a throwaway ledger validates epsilon_max now, at configuration time
        PrivacyLedger(Path(ledger_path or DEFAULT_LEDGER), delta=delta, epsilon_max=epsilon_max)
        # Whether NVFlare installed this filter from the site's privacy.json or from the job is only known once it
        # has set the source prop (after construction): a job-level ledger_path is refused in resolve_ledger_path.
        self._rng = seeded_rng(seed, type(self).__name__)
        if seed is not None:
            self.logger.warning(
                "ClientDPFilter: seed is set; the noise is reproducible and the DP guarantee is VOID (tests only)"
            )

    def installed_by_site(self) -> bool:
        """Whether NVFlare built this filter from the site's privacy.json (not from a job's config)."""
        return self.get_prop(FilterContextKey.SOURCE, None) == FilterSource.SITE

    def site_ledgers(self, fl_ctx: FLContext) -> SiteLedgers:
        try:
            root = fl_ctx.get_workspace().get_root_dir()
        except Exception:  # no engine/workspace in this context
            raise MedPFLError(
                "ClientDPFilter: the site workspace is unknown here, so the site's DP ledger cannot be located",
                fix="run inside an NVFlare site (the ledger and its anchor live in the site workspace)",
            ) from None
        return SiteLedgers(root)

    def resolve_ledger_path(self, fl_ctx: FLContext) -> Path:
        """The site's client-level ledger (see ``ledger_path``).

        Raises:
            MedPFLError: ``ledger_path`` set by a job, or no site workspace.
        """
        self._refuse_job_ledger_path()
        return self.site_ledgers(fl_ctx).ledger_path("client_dp", self.ledger_path)

    def _refuse_job_ledger_path(self) -> None:
        if self.ledger_path is not None and not self.installed_by_site():
            source = self.get_prop(FilterContextKey.SOURCE, None)
            who = "the job" if source == FilterSource.JOB else "a filter not installed from the site's privacy.json"
            raise MedPFLError(
                f"ClientDPFilter: ledger_path {self.ledger_path!r} was set by {who}; where "
                "the ε ledger lives is the site's decision, and a job cannot move it (a new file would restart ε "
                "at 0); the update is not released",
                fix="remove ledger_path from the job's filter args; the site admin may set it in a scope of the "
                "site's local/privacy.json",
            )

    def empirical_epsilon(self) -> dict[str, Any] | None:
        """``EmpiricalEpsilon.to_json()`` of this filter's configuration (cached per parameter set), None when off."""
        if self.empirical_trials == 0:
            return None
        defense = self._defense  # the very object that defends the releases
        key = (defense.clip_norm, defense.noise_multiplier, float(self.delta), self.empirical_trials)
        if key not in self._empirical:
            result = audit_defense(
                defense,
                trials=self.empirical_trials,
                seed=EMPIRICAL_SEED,
                delta=self.delta,
                confidence=EMPIRICAL_CONFIDENCE,
            )
            self._empirical[key] = result.to_json()
        return dict(self._empirical[key])

    def _account(self, shareable: Shareable, fl_ctx: FLContext) -> dict[str, Any]:
        self._refuse_job_ledger_path()
        # before the ledger is charged: a failing audit refuses the release without spending budget
        empirical = self.empirical_epsilon()
        ledger = self.site_ledgers(fl_ctx).client_dp_ledger(
            delta=self.delta, epsilon_max=self.epsilon_max, configured=self.ledger_path
        )
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
            "ledger_resets": cost.ledger_resets,
            "epsilon_max": self.epsilon_max,
            "accountant": "opacus.accountants.RDPAccountant",
            "sample_rate": SITE_SAMPLE_RATE,
            "epsilon_empirical": empirical,
        }
