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

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from medpfl_app.errors import MedPFLError

FACT_KEYS = (
    "medpfl_facts_version", "batch_size", "batch_sizes", "local_steps", "local_epochs", "learning_rate", "optimizer",
    "num_train_images", "num_images_seen", "bn_buffers_included", "bn_momentum", "network", "image_size",
    "in_channels", "num_classes", "state_dict_prefix", "torch_version", "dp_sgd",
)
RECORD_KEYS = ("filter_history", "medpfl_defenses", "NUM_STEPS_CURRENT_ROUND", "processed_algorithm")
META_KEYS = (*FACT_KEYS, *RECORD_KEYS)
MODEL_KEYS = ("network", "image_size", "in_channels", "num_classes")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")


@dataclass(frozen=True)
class FactBounds:
    """Hard caps on declared facts (whatever the site claims); generous for real training, tiny next to abuse."""

    max_batch_size: int = 4096
    max_local_steps: int = 100_000
    max_train_images: int = 10_000_000
    max_image_size: int = 1024
    max_in_channels: int = 16
    max_num_classes: int = 10_000
    max_learning_rate: float = 100.0
    max_string: int = 200
    max_list: int = 64


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
            raise MedPFLError(f"the audit's model must name exactly {MODEL_KEYS}, got {values!r}",
                              fix='e.g. {"network": "lenet_sigmoid", "image_size": 32, "in_channels": 1, '
                                  '"num_classes": 4} (the job generator writes it)')
        spec = cls(**dict(values))
        checked = validate_meta(asdict(spec), model=None)
        return cls(**{key: checked[key] for key in MODEL_KEYS})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class InvalidMeta(MedPFLError):
    """The update's meta declares a fact the audit cannot trust."""


def validate_meta(meta: Mapping[str, Any] | None, *, model: ModelSpec | None,
                  bounds: FactBounds = FactBounds()) -> dict[str, Any]:
    """The known meta keys, checked and bounded; the job's model facts replace the site's.

    Raises:
        InvalidMeta: A fact of the wrong type, non-finite, out of its bounds, inconsistent (batch size above the
            site's declared images) or a model fact that differs from the job's model.
    """
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        raise InvalidMeta(f"the update meta is a {type(meta).__name__}, not a mapping", fix="send plain JSON meta")
    out: dict[str, Any] = {}
    b = bounds
    ints = {"batch_size": b.max_batch_size, "local_steps": b.max_local_steps, "local_epochs": b.max_local_steps,
            "num_train_images": b.max_train_images, "num_images_seen": b.max_train_images * 1000,
            "NUM_STEPS_CURRENT_ROUND": b.max_local_steps, "image_size": b.max_image_size,
            "in_channels": b.max_in_channels, "num_classes": b.max_num_classes, "medpfl_facts_version": 1000}
    for key, cap in ints.items():
        if meta.get(key) is not None:
            out[key] = _integer(key, meta[key], 1 if key not in ("local_steps", "num_images_seen") else 0, cap)
    if meta.get("learning_rate") is not None:
        out["learning_rate"] = _real(meta["learning_rate"], "learning_rate", 0.0, b.max_learning_rate, open_low=True)
    if meta.get("bn_momentum") is not None:
        out["bn_momentum"] = _real(meta["bn_momentum"], "bn_momentum", 0.0, 1.0)
    if meta.get("bn_buffers_included") is not None:
        if not isinstance(meta["bn_buffers_included"], bool):
            raise InvalidMeta(f"bn_buffers_included must be true or false, got {_shown(meta['bn_buffers_included'])}",
                              fix="send a boolean")
        out["bn_buffers_included"] = meta["bn_buffers_included"]
    if meta.get("batch_sizes") is not None:
        sizes = meta["batch_sizes"]
        if not isinstance(sizes, (list, tuple)) or len(sizes) > b.max_list:
            raise InvalidMeta(f"batch_sizes must be a list of at most {b.max_list} sizes", fix="send the distinct sizes")
        out["batch_sizes"] = [_integer("batch_sizes", v, 1, b.max_batch_size) for v in sizes]
    for key in ("optimizer", "network", "state_dict_prefix", "torch_version", "processed_algorithm"):
        if meta.get(key) is not None:
            out[key] = _string(key, meta[key], b.max_string)
    if "optimizer" in out and out["optimizer"].lower() not in OPTIMIZERS:
        raise InvalidMeta(f"unknown optimizer {out['optimizer']!r}", fix=f"use one of {OPTIMIZERS}")
    for key in ("filter_history", "medpfl_defenses"):
        if meta.get(key) is not None:
            value = meta[key]
            if not isinstance(value, (list, tuple)) or len(value) > b.max_list:
                raise InvalidMeta(f"{key} must be a list of at most {b.max_list} entries", fix="send the real chain")
            out[key] = [_bounded(entry, b) for entry in value]
    if meta.get("dp_sgd") is not None:
        if not isinstance(meta["dp_sgd"], Mapping):
            raise InvalidMeta("dp_sgd must be a mapping of DP-SGD facts", fix="send the facts the site's trainer wrote")
        out["dp_sgd"] = _bounded(meta["dp_sgd"], b)
    _check_consistency(out)
    if model is not None:
        for key in MODEL_KEYS:
            claimed = out.get(key)
            if claimed is not None and claimed != getattr(model, key):
                raise InvalidMeta(f"the site declares {key} {claimed!r}, the job's model has {getattr(model, key)!r}",
                                  fix="the site must train the job's model")
            out[key] = getattr(model, key)
    return out


def _check_consistency(facts: Mapping[str, Any]) -> None:
    batch, images = facts.get("batch_size"), facts.get("num_train_images")
    if batch is not None and images is not None and batch > images:
        raise InvalidMeta(f"batch_size {batch} exceeds the site's declared num_train_images {images}",
                          fix="a site cannot train on more images per step than it has")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise InvalidMeta(f"{key} must be an integer, got {value!r}", fix="send a whole number")
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise InvalidMeta(f"{key} must be an integer, got {_shown(value)}", fix="send a whole number")
    if not low <= value <= high:
        raise InvalidMeta(f"{key} {value} is outside [{low}, {high}]", fix=f"declare a {key} within the bounds")
    return value


def _real(value: Any, key: str, low: float, high: float, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidMeta(f"{key} must be a finite number, got {_shown(value)}", fix="send a finite number")
    value = float(value)
    if value < low or value > high or (open_low and value == low):
        raise InvalidMeta(f"{key} {value:g} is outside {'(' if open_low else '['}{low:g}, {high:g}]",
                          fix=f"declare a {key} within the bounds")
    return value


def _string(key: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidMeta(f"{key} must be a string, got {type(value).__name__}", fix="send a short string")
    if len(value) > limit:
        raise InvalidMeta(f"{key} is {len(value)} characters long (limit {limit})", fix="send a short string")
    return value


def _bounded(value: Any, bounds: FactBounds, depth: int = 0) -> Any:
    """A record entry as plain, finite, bounded JSON (non-finite numbers refused, long strings refused)."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMeta(f"a defense record holds the non-finite number {value!r}", fix="send finite numbers")
        return value
    if isinstance(value, str):
        return _string("a defense record entry", value, bounds.max_string * 5)
    if depth > 4:
        raise InvalidMeta("a defense record is nested too deeply", fix="send flat records")
    if isinstance(value, Mapping):
        if len(value) > bounds.max_list:
            raise InvalidMeta(f"a defense record has {len(value)} fields (limit {bounds.max_list})", fix="send less")
        return {_string("a record key", k, bounds.max_string): _bounded(v, bounds, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) > bounds.max_list:
            raise InvalidMeta(f"a defense record list has {len(value)} entries (limit {bounds.max_list})",
                              fix="send less")
        return [_bounded(v, bounds, depth + 1) for v in value]
    raise InvalidMeta(f"a defense record holds a {type(value).__name__}", fix="send plain JSON values")
