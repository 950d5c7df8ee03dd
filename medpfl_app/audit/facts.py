"""The training facts a site declares in its update meta, validated before the audit spends anything on them.

A site may be malicious or broken: everything in its meta is untrusted. `validate_meta` turns the meta into a
plain, bounded dict of known keys (unknown keys are dropped) or raises `InvalidMeta` naming the first bad fact, so
the audit records ``not_audited: invalid meta (...)`` instead of allocating what the meta asks for
(``batch_size = 1e9``, ``image_size = 1e6`` ...). The model's shape (network, image size, channels, classes) comes
from the job's own configuration (`ModelSpec`) when the audit filter knows it; the site's claims are then only
compared with it, never used.

Pure (no NVFlare, no torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from medpfl_app.contracts.training_facts import (
    FACT_KEYS,
    OPTIMIZERS,
    FactBounds,
    InvalidMeta,
    TrainingFacts,
    bounded_entry,
    checked_integer,
    checked_string,
)
from medpfl_app.errors import MedPFLError

__all__ = [
    "FACT_KEYS",
    "META_KEYS",
    "MODEL_KEYS",
    "OPTIMIZERS",
    "RECORD_KEYS",
    "FactBounds",
    "InvalidMeta",
    "ModelSpec",
    "validate_meta",
]

RECORD_KEYS = ("filter_history", "medpfl_defenses", "NUM_STEPS_CURRENT_ROUND", "processed_algorithm")
META_KEYS = (*FACT_KEYS, *RECORD_KEYS)
MODEL_KEYS = ("network", "image_size", "in_channels", "num_classes")


@dataclass(frozen=True)
class ModelSpec:
    """The job's model, from the job configuration (the server's own knowledge, not the site's claim)."""

    network: str
    image_size: int
    in_channels: int
    num_classes: int

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ModelSpec | None:
        """A spec from a filter argument (None stays None); refuses missing or extra keys."""
        if values is None:
            return None
        if not isinstance(values, Mapping) or set(values) != set(MODEL_KEYS):
            raise MedPFLError(
                f"the audit's model must name exactly {MODEL_KEYS}, got {values!r}",
                fix='e.g. {"network": "lenet_sigmoid", "image_size": 32, "in_channels": 1, '
                '"num_classes": 4} (the job generator writes it)',
            )
        spec = cls(**dict(values))
        checked = validate_meta(asdict(spec), model=None)
        return cls(**{key: checked[key] for key in MODEL_KEYS})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_meta(
    meta: Mapping[str, Any] | None, *, model: ModelSpec | None, bounds: FactBounds = FactBounds()
) -> dict[str, Any]:
    """The known meta keys, checked and bounded; the job's model facts replace the site's.

    The training facts are read through their contract (`TrainingFacts.from_json`); the entries NVFlare and the
    defense filters add (`RECORD_KEYS`) are bounded here.

    Raises:
        InvalidMeta: A fact of the wrong type, non-finite, out of its bounds, inconsistent (batch size above the
            site's declared images), a facts version this audit does not understand, or a model fact that differs
            from the job's model.
    """
    out = TrainingFacts.from_json(meta, bounds=bounds).declared()
    meta = meta or {}
    if meta.get("NUM_STEPS_CURRENT_ROUND") is not None:
        out["NUM_STEPS_CURRENT_ROUND"] = checked_integer(
            "NUM_STEPS_CURRENT_ROUND", meta["NUM_STEPS_CURRENT_ROUND"], 1, bounds.max_local_steps
        )
    if meta.get("processed_algorithm") is not None:
        out["processed_algorithm"] = checked_string(
            "processed_algorithm", meta["processed_algorithm"], bounds.max_string
        )
    for key in ("filter_history", "medpfl_defenses"):
        if meta.get(key) is not None:
            value = meta[key]
            if not isinstance(value, (list, tuple)) or len(value) > bounds.max_list:
                raise InvalidMeta(
                    f"{key} must be a list of at most {bounds.max_list} entries", fix="send the real chain"
                )
            out[key] = [bounded_entry(entry, bounds) for entry in value]
    if model is not None:
        for key in MODEL_KEYS:
            claimed = out.get(key)
            if claimed is not None and claimed != getattr(model, key):
                raise InvalidMeta(
                    f"the site declares {key} {claimed!r}, the job's model has {getattr(model, key)!r}",
                    fix="the site must train the job's model",
                )
            out[key] = getattr(model, key)
    return out
