"""The training facts a site declares in its update meta (typed contract, versioned by ``medpfl_facts_version``).

The site's training script builds a `TrainingFacts` after each round's local training and writes its `to_json` into
the update meta (`medpfl_app.training.facts.TrainingFactsCallback`); the server's audit reads the meta back with
`TrainingFacts.from_json`, which holds every fact to its type and to `FactBounds` (a site may be malicious or
broken: its meta is untrusted). The wire format is the flat meta of MedPFL sites so far: the keys `FACT_KEYS`, every
one present (``None`` for a fact the site does not know), so older sites keep working.

A fact the meta leaves out is ``None`` here (the audit then assumes the worst case for it); a meta without
``medpfl_facts_version`` is read as version 1 (it has no other shape), a newer version is refused.

Pure (no NVFlare, no torch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from medpfl_app.errors import MedPFLError

#: The facts' schema version: the value of ``medpfl_facts_version`` a site writes and the audit understands.
FACTS_VERSION = 1
FACT_KEYS = (
    "medpfl_facts_version",
    "batch_size",
    "batch_sizes",
    "local_steps",
    "local_epochs",
    "learning_rate",
    "optimizer",
    "num_train_images",
    "num_images_seen",
    "bn_buffers_included",
    "bn_momentum",
    "network",
    "image_size",
    "in_channels",
    "num_classes",
    "state_dict_prefix",
    "torch_version",
    "dp_sgd",
)
#: The facts an audit record and the server's arrival record keep of each update (what a reader of the ledger needs
#: to judge the attack's setting), a subset of `FACT_KEYS`.
RECORDED_FACT_KEYS = (
    "batch_size",
    "local_steps",
    "learning_rate",
    "optimizer",
    "num_train_images",
    "bn_buffers_included",
    "dp_sgd",
)
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
_STRING_FACTS = ("optimizer", "network", "state_dict_prefix", "torch_version")


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

    def integer_caps(self) -> dict[str, int]:
        """The upper bound of every whole-number fact, in the order they are checked."""
        return {
            "batch_size": self.max_batch_size,
            "local_steps": self.max_local_steps,
            "local_epochs": self.max_local_steps,
            "num_train_images": self.max_train_images,
            "num_images_seen": self.max_train_images * 1000,
            "image_size": self.max_image_size,
            "in_channels": self.max_in_channels,
            "num_classes": self.max_num_classes,
            "medpfl_facts_version": 1000,
        }


class InvalidMeta(MedPFLError):
    """The update's meta declares a fact the audit cannot trust."""


@dataclass(frozen=True)
class TrainingFacts:
    """What one round of local training did, as the site declares it (``None``: not declared).

    Attributes:
        medpfl_facts_version: The facts' schema version (`FACTS_VERSION`).
        batch_size: The loader's configured batch size.
        batch_sizes: The distinct batch sizes the round used, sorted.
        local_steps: Optimiser steps in the round.
        local_epochs: Epochs per round.
        learning_rate: The optimiser's learning rate.
        optimizer: The update rule's name, lower case (``sgd``, ``adam`` ...).
        num_train_images: Size of the site's training set.
        num_images_seen: Images the round trained on (with repeats).
        bn_buffers_included: Whether BatchNorm running statistics travel with the update.
        bn_momentum: The BatchNorm momentum (when all layers share one).
        network, image_size, in_channels, num_classes: The model the site trained.
        state_dict_prefix: The prefix of the update's tensor names.
        torch_version: The site's torch version.
        dp_sgd: Sample-level DP-SGD parameters and ε so far (plain JSON), None when off.
    """

    medpfl_facts_version: int | None = FACTS_VERSION
    batch_size: int | None = None
    batch_sizes: tuple[int, ...] | None = None
    local_steps: int | None = None
    local_epochs: int | None = None
    learning_rate: float | None = None
    optimizer: str | None = None
    num_train_images: int | None = None
    num_images_seen: int | None = None
    bn_buffers_included: bool | None = None
    bn_momentum: float | None = None
    network: str | None = None
    image_size: int | None = None
    in_channels: int | None = None
    num_classes: int | None = None
    state_dict_prefix: str | None = None
    torch_version: str | None = None
    dp_sgd: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.batch_sizes is not None:
            object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))

    def to_json(self) -> dict[str, Any]:
        """The update meta entries: every key of `FACT_KEYS`, ``None`` where not declared (the wire format)."""
        values = {name: getattr(self, name) for name in FACT_KEYS}
        values["batch_sizes"] = None if self.batch_sizes is None else list(self.batch_sizes)
        values["dp_sgd"] = None if self.dp_sgd is None else dict(self.dp_sgd)
        return values

    def declared(self) -> dict[str, Any]:
        """The facts the site declared: `to_json` without the ``None`` entries."""
        return {key: value for key, value in self.to_json().items() if value is not None}

    @classmethod
    def from_json(cls, meta: Any, *, bounds: FactBounds = FactBounds()) -> TrainingFacts:
        """The facts of an update meta, checked and bounded (keys other than `FACT_KEYS` are ignored).

        Raises:
            InvalidMeta: Not a mapping, a facts version this audit does not understand, or a fact of the wrong
                type, non-finite, out of its bounds or inconsistent (batch size above the declared images).
        """
        if meta is None:
            meta = {}
        if not isinstance(meta, Mapping):
            raise InvalidMeta(f"the update meta is a {type(meta).__name__}, not a mapping", fix="send plain JSON meta")
        out: dict[str, Any] = {}
        for key, cap in bounds.integer_caps().items():
            if meta.get(key) is not None:
                out[key] = checked_integer(key, meta[key], 0 if key in ("local_steps", "num_images_seen") else 1, cap)
        _check_version(out.get("medpfl_facts_version"))
        if meta.get("learning_rate") is not None:
            out["learning_rate"] = checked_real(
                meta["learning_rate"], "learning_rate", 0.0, bounds.max_learning_rate, open_low=True
            )
        if meta.get("bn_momentum") is not None:
            out["bn_momentum"] = checked_real(meta["bn_momentum"], "bn_momentum", 0.0, 1.0)
        if meta.get("bn_buffers_included") is not None:
            if not isinstance(meta["bn_buffers_included"], bool):
                raise InvalidMeta(
                    f"bn_buffers_included must be true or false, got {shown(meta['bn_buffers_included'])}",
                    fix="send a boolean",
                )
            out["bn_buffers_included"] = meta["bn_buffers_included"]
        if meta.get("batch_sizes") is not None:
            sizes = meta["batch_sizes"]
            if not isinstance(sizes, (list, tuple)) or len(sizes) > bounds.max_list:
                raise InvalidMeta(
                    f"batch_sizes must be a list of at most {bounds.max_list} sizes", fix="send the distinct sizes"
                )
            out["batch_sizes"] = [checked_integer("batch_sizes", v, 1, bounds.max_batch_size) for v in sizes]
        for key in _STRING_FACTS:
            if meta.get(key) is not None:
                out[key] = checked_string(key, meta[key], bounds.max_string)
        if "optimizer" in out and out["optimizer"].lower() not in OPTIMIZERS:
            raise InvalidMeta(f"unknown optimizer {out['optimizer']!r}", fix=f"use one of {OPTIMIZERS}")
        if meta.get("dp_sgd") is not None:
            if not isinstance(meta["dp_sgd"], Mapping):
                raise InvalidMeta(
                    "dp_sgd must be a mapping of DP-SGD facts", fix="send the facts the site's trainer wrote"
                )
            out["dp_sgd"] = bounded_entry(meta["dp_sgd"], bounds)
        _check_consistency(out)
        return cls(**{field.name: out.get(field.name) for field in fields(cls)})


def _check_version(version: int | None) -> None:
    if version is not None and version != FACTS_VERSION:
        raise InvalidMeta(
            f"medpfl_facts_version {version} is not understood: this audit reads version {FACTS_VERSION}",
            fix="run the same MedPFL version on the server and the sites",
        )


def _check_consistency(facts: Mapping[str, Any]) -> None:
    batch, images = facts.get("batch_size"), facts.get("num_train_images")
    if batch is not None and images is not None and batch > images:
        raise InvalidMeta(
            f"batch_size {batch} exceeds the site's declared num_train_images {images}",
            fix="a site cannot train on more images per step than it has",
        )


def shown(value: Any) -> str:
    """A site-controlled value for an error message: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def checked_integer(key: str, value: Any, low: int, high: int) -> int:
    """``value`` as a whole number within ``[low, high]`` (an integral float is accepted, a bool is not)."""
    if isinstance(value, bool):
        raise InvalidMeta(f"{key} must be an integer, got {value!r}", fix="send a whole number")
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise InvalidMeta(f"{key} must be an integer, got {shown(value)}", fix="send a whole number")
    if not low <= value <= high:
        raise InvalidMeta(f"{key} {value} is outside [{low}, {high}]", fix=f"declare a {key} within the bounds")
    return value


def checked_real(value: Any, key: str, low: float, high: float, *, open_low: bool = False) -> float:
    """``value`` as a finite float within its bounds (``(low, high]`` with ``open_low``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidMeta(f"{key} must be a finite number, got {shown(value)}", fix="send a finite number")
    number = float(value)
    if number < low or number > high or (open_low and number == low):
        raise InvalidMeta(
            f"{key} {number:g} is outside {'(' if open_low else '['}{low:g}, {high:g}]",
            fix=f"declare a {key} within the bounds",
        )
    return number


def checked_string(key: str, value: Any, limit: int) -> str:
    """``value`` as a string of at most ``limit`` characters."""
    if not isinstance(value, str):
        raise InvalidMeta(f"{key} must be a string, got {type(value).__name__}", fix="send a short string")
    if len(value) > limit:
        raise InvalidMeta(f"{key} is {len(value)} characters long (limit {limit})", fix="send a short string")
    return value


def bounded_entry(value: Any, bounds: FactBounds, depth: int = 0) -> Any:
    """A record entry as plain, finite, bounded JSON (non-finite numbers refused, long strings refused)."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMeta(f"a defense record holds the non-finite number {value!r}", fix="send finite numbers")
        return value
    if isinstance(value, str):
        return checked_string("a defense record entry", value, bounds.max_string * 5)
    if depth > 4:
        raise InvalidMeta("a defense record is nested too deeply", fix="send flat records")
    if isinstance(value, Mapping):
        if len(value) > bounds.max_list:
            raise InvalidMeta(f"a defense record has {len(value)} fields (limit {bounds.max_list})", fix="send less")
        return {
            checked_string("a record key", k, bounds.max_string): bounded_entry(v, bounds, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        if len(value) > bounds.max_list:
            raise InvalidMeta(
                f"a defense record list has {len(value)} entries (limit {bounds.max_list})", fix="send less"
            )
        return [bounded_entry(v, bounds, depth + 1) for v in value]
    raise InvalidMeta(f"a defense record holds a {type(value).__name__}", fix="send plain JSON values")
