"""Shared plumbing for defenses: checking an update, NumPy/torch round trips, seeded generators.

An *update* is a mapping from parameter name to a NumPy array or a torch tensor (NVFlare's NUMPY and PYTORCH
exchange formats). Defenses compute in float64 NumPy and convert back to the caller's type, dtype and device, so the
same seed gives the same result for both array types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeAlias

import numpy as np

from medpfl_app.errors import MedPFLError

# torch is imported lazily: NVFlare filters on NumPy payloads must not pay torch's import time, and a value can only
# be a tensor if torch is already imported by whoever built it.
Array: TypeAlias = Any  # numpy.ndarray | torch.Tensor
Update: TypeAlias = Mapping[str, Array]
Seed: TypeAlias = int | np.random.Generator | None


class DefenseOutput(NamedTuple):
    """What every defense returns: a new update and a JSON-able record of what was done."""

    update: dict[str, Array]
    record: dict[str, Any]


def _torch() -> Any:
    import torch  # only reached with a tensor in hand, so torch is already fully imported

    return torch


def is_tensor(value: object) -> bool:
    # Judged by type, not through sys.modules["torch"]: inside an NVFlare site the Client API script may be
    # importing torch in another thread, and a half-initialised module has no `Tensor` yet.
    return any(cls.__name__ == "Tensor" and cls.__module__ == "torch" for cls in type(value).__mro__)


def is_float(value: Array) -> bool:
    """True for floating-point arrays/tensors, the only ones a defense changes."""
    if is_tensor(value):
        return bool(value.is_floating_point())
    return bool(np.issubdtype(value.dtype, np.floating))


def make_rng(seed: Seed) -> np.random.Generator:
    """A NumPy generator from a seed, an existing generator (used as is) or None (fresh OS entropy)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0):
        raise MedPFLError(
            f"seed must be a non-negative integer or None, got {seed!r}", fix="pass seed=None or an int >= 0"
        )
    return np.random.default_rng(seed)


def check_update(update: object, *, defense: str) -> None:
    """Refuse anything a defense cannot process safely.

    Raises:
        MedPFLError: the update is not a mapping of names to numeric arrays/tensors, or a float entry holds NaN/Inf.
    """
    if not isinstance(update, Mapping):
        raise MedPFLError(
            f"{defense}: the update must be a dict of parameter name -> array, got {type(update).__name__}",
            fix="send model parameters (FLModel.params) as a dict of NumPy arrays or torch tensors",
        )
    for key, value in update.items():
        if not isinstance(key, str):
            raise MedPFLError(f"{defense}: parameter names must be str, got {key!r}", fix="use state_dict() keys")
        if is_tensor(value):
            if value.is_complex() or value.is_sparse:
                raise MedPFLError(
                    f"{defense}: {key!r} is a complex or sparse tensor", fix="send dense real-valued parameters only"
                )
            floating = bool(value.is_floating_point())
            finite = bool(value.isfinite().all()) if floating else True
        elif isinstance(value, np.ndarray):
            if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_) or np.issubdtype(
                value.dtype, np.complexfloating
            ):
                raise MedPFLError(
                    f"{defense}: {key!r} has non-numeric dtype {value.dtype}",
                    fix="send only real numeric parameters; strip strings/objects from the update",
                )
            floating = bool(np.issubdtype(value.dtype, np.floating))
            finite = bool(np.isfinite(value).all()) if floating else True
        else:
            raise MedPFLError(
                f"{defense}: {key!r} is a {type(value).__name__}, not a NumPy array or torch tensor",
                fix="send model parameters as NumPy arrays (NVFlare's default) or torch tensors",
            )
        if not finite:
            raise MedPFLError(
                f"{defense}: {key!r} contains NaN or Inf; refusing to process (the update is not released)",
                fix="fix the divergent local training (lower the learning rate, check the data) and rerun the round",
            )


def to_float64(value: Array) -> np.ndarray:
    """A float64 NumPy copy of a float array/tensor (bfloat16 has no NumPy type, hence the float32 hop)."""
    if is_tensor(value):
        torch = _torch()
        copied: np.ndarray = value.detach().to("cpu", dtype=torch.float64).numpy().copy()
        return copied
    return np.array(value, dtype=np.float64, copy=True)


def like(result: np.ndarray, template: Array) -> Array:
    """``result`` converted to ``template``'s array type, dtype and device."""
    if is_tensor(template):
        torch = _torch()
        return torch.from_numpy(np.ascontiguousarray(result)).to(device=template.device, dtype=template.dtype)
    return np.asarray(result).astype(template.dtype, copy=False)


def copy_value(value: Array) -> Array:
    return value.detach().clone() if is_tensor(value) else np.array(value, copy=True)


def float_keys(update: Update) -> list[str]:
    return [key for key, value in update.items() if is_float(value)]


def map_floats(update: Update, transform: Callable[[str, np.ndarray], np.ndarray]) -> dict[str, Array]:
    """Apply ``transform`` to the float64 copy of every float entry; copy the other entries unchanged."""
    out: dict[str, Array] = {}
    for key, value in update.items():
        out[key] = like(transform(key, to_float64(value)), value) if is_float(value) else copy_value(value)
    return out


def global_l2_norm(update: Update) -> float:
    """L2 norm over all float entries of the update taken together."""
    return float(np.sqrt(sum(float(np.sum(to_float64(update[k]) ** 2)) for k in float_keys(update))))


def require(condition: bool, problem: str, fix: str) -> None:
    """Raise a `MedPFLError` unless ``condition``: used for parameter checks at configuration time."""
    if not condition:
        raise MedPFLError(problem, fix=fix)


def is_positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value) and value > 0
