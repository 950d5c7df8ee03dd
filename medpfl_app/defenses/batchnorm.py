"""Keep BatchNorm statistics local (FedBN style): drop running-mean/var buffers from the outgoing update."""

from __future__ import annotations

import dataclasses

from medpfl_app.defenses.base import DEFENSES, Defense, Guarantee
from medpfl_app.defenses.update_arrays import DefenseOutput, Update, copy_value, require

BN_STAT_SUFFIXES = ("running_mean", "running_var")
BN_COUNTER_SUFFIX = "num_batches_tracked"


def is_bn_buffer(key: str, *, include_num_batches_tracked: bool) -> bool:
    """True for ``...running_mean`` / ``...running_var`` (and ``...num_batches_tracked`` if asked) state-dict keys."""
    leaf = key.rsplit(".", 1)[-1]
    return leaf in BN_STAT_SUFFIXES or (include_num_batches_tracked and leaf == BN_COUNTER_SUFFIX)


@DEFENSES.register("drop_bn_stats")
@dataclasses.dataclass(frozen=True)
class DropBatchNormStats(Defense):
    """Remove BatchNorm running statistics from the update; everything else is copied unchanged.

    Args:
        include_num_batches_tracked: Also drop the integer ``num_batches_tracked`` counters.

    Notes:
        Heuristic (no formal guarantee): it closes the strongest single leak (batch statistics recovered from the
        running-stat delta, Hatamizadeh et al. 2023) but the weights still leak. The server keeps its own (stale)
        BN statistics; clients must load the global model with non-strict key matching or keep their local
        statistics (FedBN).
    """

    key = "drop_bn_stats"
    guarantee = Guarantee.HEURISTIC
    needs_difference = False
    include_num_batches_tracked: bool = False

    def __post_init__(self) -> None:
        require(
            isinstance(self.include_num_batches_tracked, bool),
            "drop_bn_stats: include_num_batches_tracked must be true or false",
            "set it to a boolean",
        )

    def _apply(self, update: Update, rng: object) -> DefenseOutput:
        del rng
        drop = [k for k in update if is_bn_buffer(k, include_num_batches_tracked=self.include_num_batches_tracked)]
        out = {k: copy_value(v) for k, v in update.items() if k not in drop}
        return DefenseOutput(out, {"dropped": sorted(drop)})


def drop_bn_stats(update: Update, *, include_num_batches_tracked: bool = False) -> DefenseOutput:
    """Functional form of `DropBatchNormStats`."""
    return DropBatchNormStats(include_num_batches_tracked=include_num_batches_tracked).apply(update)
