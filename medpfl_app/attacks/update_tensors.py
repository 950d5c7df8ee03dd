"""The received update's tensors under the bare network's names: prefixes stripped, arrays made tensors, BN buffers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from medpfl_app.attacks.shared_update import UpdateKind
from medpfl_app.errors import MedPFLError


def as_tensor(name: str, value: Any) -> torch.Tensor:
    """A detached CPU copy of one received array, or a `MedPFLError` naming the entry that is not numeric."""
    try:
        tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError) as error:
        raise MedPFLError(f"update entry {name!r} is not an array ({error})", fix="send numeric arrays") from None
    return tensor.detach().cpu().clone()


def strip_prefix(
    state: Mapping[str, Any], model_keys: set[str], prefix: str | None = "auto"
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Rename ``state``'s keys to the bare network's names and set aside keys that belong to no network tensor.

    Args:
        state: Arrays keyed as sent, e.g. ``net.features.0.weight`` from a Lightning module's state_dict.
        model_keys: The bare network's state_dict keys.
        prefix: The prefix to strip; "auto" finds the one under which the most keys match; None or "" strips none.

    Returns:
        The renamed entries and the keys that were ignored.
    """
    if prefix == "auto":
        votes: dict[str, int] = {}
        for key in state:
            for model_key in model_keys:
                if key.endswith(model_key) and (len(key) == len(model_key) or key[-len(model_key) - 1] == "."):
                    candidate = key[: len(key) - len(model_key)]
                    votes[candidate] = votes.get(candidate, 0) + 1
        prefix = max(votes, key=lambda p: (votes[p], -len(p))) if votes else ""
    prefix = prefix or ""
    renamed: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in state.items():
        bare = key[len(prefix) :] if key.startswith(prefix) else None
        if bare is None or (bare not in model_keys and not prefix):
            ignored.append(key)
        elif bare not in model_keys:
            raise MedPFLError(
                f"update key {key!r} (prefix {prefix!r} stripped: {bare!r}) is not a tensor of the model",
                fix="attack with the architecture the site trained, or pass the right prefix",
            )
        else:
            renamed[bare] = value
    return renamed, tuple(ignored)


def bn_running_stats_after(
    buffer_update: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    kind: UpdateKind,
) -> dict[str, torch.Tensor]:
    """BatchNorm running statistics after the update: ``old + Δ`` for a weight difference, else as sent.

    Args:
        buffer_update: The update's entries that are buffers, not parameters.
        weights: The weights before the update (``old`` where they hold the buffer).
        state: The bare network's state_dict (shapes, and ``old`` where the weights lack the buffer).
        kind: Gradient or weight difference.
    """
    bn_stats: dict[str, torch.Tensor] = {}
    for name, value in buffer_update.items():
        if name.endswith(("running_mean", "running_var")):
            if tuple(value.shape) != tuple(state[name].shape):
                raise MedPFLError(
                    f"update buffer {name!r} has shape {tuple(value.shape)}, the model expects {tuple(state[name].shape)}",
                    fix="attack with the architecture the site trained",
                )
            old = weights.get(name, state[name]).float()
            bn_stats[name] = old + value.float() if kind is UpdateKind.WEIGHT_DIFF else value.float()
    return bn_stats
