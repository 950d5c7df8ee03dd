"""Keep BatchNorm statistics at the site: drop running-mean/var buffers from the outgoing update."""

from __future__ import annotations

from medpfl_app.defenses.batchnorm import DropBatchNormStats
from medpfl_app.nvflare.filters.defense_filter import DefenseFilter


class DropBatchNormStatsFilter(DefenseFilter):
    """Remove ``*.running_mean`` / ``*.running_var`` (and optionally ``*.num_batches_tracked``) from the result.

    Equivalent to NVFlare's ``ExcludeVars(exclude_vars=[...])`` with the BN names listed, but found by suffix, so it
    needs no per-model list, and it records what it dropped in the DXO meta.

    Args:
        include_num_batches_tracked: Also drop the integer counters.

    Notes:
        Heuristic (no formal guarantee): closes the batch-statistics leak only; weights still leak.
    """

    def __init__(self, include_num_batches_tracked: bool = False) -> None:
        super().__init__()
        self.include_num_batches_tracked = include_num_batches_tracked
        self._defense = DropBatchNormStats(include_num_batches_tracked=include_num_batches_tracked)
