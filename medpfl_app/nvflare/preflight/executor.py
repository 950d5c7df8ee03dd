"""The site side of the pre-flight: answer the server's `PREFLIGHT_TASK` with this site's coarse facts.

The reply is a METRICS DXO holding `medpfl_app.contracts.preflight.SiteRiskFacts` (counts and settings, never data),
so every defense filter of the site's privacy scope lets it pass untouched. A site that cannot compute its facts
replies with the problem (one line, no path) instead: the server's pre-flight then marks it inconclusive.
"""

from __future__ import annotations

import os
import shlex

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FilterKey, FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from medpfl_app.contracts.preflight import FACTS_KEY, DeclaredDefense
from medpfl_app.errors import MedPFLError

PROBLEM_KEY = "medpfl_preflight_problem"


class PreflightExecutor(Executor):
    """Site executor of the pre-flight task (register it for the task ``medpfl_preflight`` only).

    Args:
        task_script_args: The site script's arguments, exactly as the job's training executor gets them.
    """

    def __init__(self, task_script_args: str = "") -> None:
        super().__init__()
        self.task_script_args = task_script_args

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        site = fl_ctx.get_identity_name()
        try:
            facts = self._facts(site, fl_ctx)
        except MedPFLError as error:
            self.log_warning(fl_ctx, f"MedPFL pre-flight: no facts for {site}: {error.problem}")
            return DXO(DataKind.METRICS, data={PROBLEM_KEY: error.problem[:300]}).to_shareable()
        self.log_info(fl_ctx, f"MedPFL pre-flight: sent coarse facts of {site} (counts and settings only)")
        return DXO(DataKind.METRICS, data={FACTS_KEY: facts.to_json()}).to_shareable()

    def _facts(self, site: str, fl_ctx: FLContext):
        from medpfl_app.data.site_config import resolve_site_data
        from medpfl_app.nvflare.preflight.site_plan import plan_site
        from medpfl_app.nvflare.site.client import build_arg_parser, parse_site_overrides

        training, _ = build_arg_parser().parse_known_args(shlex.split(self.task_script_args))
        own = parse_site_overrides(training.site_override).get(site, {})
        for key, value in own.items():
            setattr(training, key, value)
        workspace = os.environ.get("MEDPFL_SITE_WORKSPACE") or fl_ctx.get_engine().get_workspace().get_root_dir()
        data = resolve_site_data(site, workspace_dir=workspace)
        scope = scope_defenses(fl_ctx)
        return plan_site(site, training, data, scope_defenses=scope).facts


def scope_defenses(fl_ctx: FLContext) -> tuple[DeclaredDefense, ...]:
    """The defenses of this job's privacy scope at this site, in chain order (other filters by class name)."""
    from nvflare.private.privacy_manager import PrivacyService

    from medpfl_app.nvflare.filters.defense_filter import DefenseFilter

    scope = PrivacyService.get_scope(fl_ctx.get_prop(FLContextKey.EFFECTIVE_JOB_SCOPE_NAME))
    if scope is None:
        return ()
    declared = []
    for chain_filter in scope.task_result_filters.get(FilterKey.OUT, []):
        if isinstance(chain_filter, DefenseFilter):
            defense = chain_filter.defense
            params = {
                name: value
                for name, value in defense.params().items()
                if value is None or isinstance(value, (bool, int, float))
            }
            declared.append(DeclaredDefense(defense.key, params))
        elif not type(chain_filter).__module__.startswith("medpfl_app."):
            declared.append(DeclaredDefense(f"other:{type(chain_filter).__name__}"[:64], {}))
    return tuple(declared)
