"""What a site tells the server before round 1: coarse risk facts, never data (a typed contract).

The server's pre-flight (`medpfl_app.audit.preflight`) asks every site for its `SiteRiskFacts` on the task
`PREFLIGHT_TASK` and judges them with a probe attack on synthetic data. The facts are counts and settings only: how
many training images, the smallest class's size, how many classes one image holds, the batch size and local steps
the site will train with, and the defenses its own privacy scope applies. No image, label list or file name.

The reply comes from a site that may be malicious or broken: `SiteRiskFacts.from_json` accepts only the keys below,
with bounded integers and short printable names, and raises one `MedPFLError` otherwise.

Pure (no NVFlare, no torch).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medpfl_app.errors import MedPFLError
from medpfl_app.text import printable

PREFLIGHT_SCHEMA = "medpfl.preflight_facts/1"
#: The NVFlare task the pre-flight controller broadcasts before the first training round.
PREFLIGHT_TASK = "medpfl_preflight"
#: Reply key holding `SiteRiskFacts.to_json` (inside a METRICS DXO, which every defense filter passes untouched).
FACTS_KEY = "medpfl_preflight_facts"

_MAX_COUNT = 10_000_000
_MAX_NAME = 64
_MAX_DEFENSES = 16
_MAX_PARAMS = 8


@dataclass(frozen=True)
class DeclaredDefense:
    """One defense a site's privacy scope applies to every update it sends.

    Attributes:
        key: The defense's registry key (``medpfl_app.defenses.DEFENSES``), or ``other:<ClassName>`` for a filter
            MedPFL does not know (it is named, not modelled).
        params: Its numeric and boolean settings (e.g. ``{"clip_norm": 1.0, "noise_multiplier": 1.0}``).
    """

    key: str
    params: Mapping[str, float | int | bool | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "params": dict(self.params)}

    @classmethod
    def from_json(cls, values: Any) -> DeclaredDefense:
        if not isinstance(values, Mapping) or set(values) - {"key", "params"}:
            raise _bad("a declared defense must be {'key': ..., 'params': {...}}", values)
        key = _name(values.get("key"), "defense key")
        params = values.get("params", {})
        if not isinstance(params, Mapping) or len(params) > _MAX_PARAMS:
            raise _bad(f"the params of defense {key!r} must be a mapping of at most {_MAX_PARAMS} settings", params)
        checked: dict[str, float | int | bool | None] = {}
        for name, value in params.items():
            name = _name(name, f"a parameter name of defense {key!r}")
            if value is None or isinstance(value, bool):
                checked[name] = value
            elif isinstance(value, numbers.Integral):
                checked[name] = int(value)
            elif isinstance(value, numbers.Real) and math.isfinite(float(value)):
                checked[name] = float(value)
            else:
                raise _bad(f"defense {key!r} parameter {name!r} must be a finite number, a boolean or null", value)
        return cls(key=key, params=checked)


@dataclass(frozen=True)
class SiteRiskFacts:
    """A site's coarse risk facts for the pre-flight check.

    Attributes:
        site: The site's name.
        num_train_images: Training images it holds.
        smallest_class: Images in its smallest non-empty class.
        single_image_classes: Classes held by exactly one training image.
        batch_size: Images per local step it will train with.
        local_steps: Local optimizer steps per round (epochs × batches, capped by ``max_steps``).
        dp_sgd_noise_multiplier: Sample-level DP-SGD noise multiplier (0: off).
        scope_defenses: Defenses of the site's own privacy scope, in chain order (job-level ones the server knows).
    """

    site: str
    num_train_images: int
    smallest_class: int
    single_image_classes: int
    batch_size: int
    local_steps: int
    dp_sgd_noise_multiplier: float = 0.0
    scope_defenses: tuple[DeclaredDefense, ...] = ()

    def __post_init__(self) -> None:
        for label in ("num_train_images", "smallest_class", "single_image_classes", "batch_size", "local_steps"):
            _count(getattr(self, label), label)
        if self.batch_size < 1 or self.local_steps < 1:
            raise _bad("batch_size and local_steps must be at least 1", (self.batch_size, self.local_steps))
        if not (math.isfinite(self.dp_sgd_noise_multiplier) and self.dp_sgd_noise_multiplier >= 0):
            raise _bad("dp_sgd_noise_multiplier must be a finite number >= 0", self.dp_sgd_noise_multiplier)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": PREFLIGHT_SCHEMA,
            "site": self.site,
            "num_train_images": self.num_train_images,
            "smallest_class": self.smallest_class,
            "single_image_classes": self.single_image_classes,
            "batch_size": self.batch_size,
            "local_steps": self.local_steps,
            "dp_sgd_noise_multiplier": self.dp_sgd_noise_multiplier,
            "scope_defenses": [defense.to_json() for defense in self.scope_defenses],
        }

    @classmethod
    def from_json(cls, values: Any) -> SiteRiskFacts:
        """Facts read back from a site's reply.

        Raises:
            MedPFLError: Not a mapping, another schema, an unknown key, or a value out of its bounds.
        """
        if not isinstance(values, Mapping):
            raise _bad("pre-flight facts must be a JSON object", values)
        if values.get("schema") != PREFLIGHT_SCHEMA:
            raise _bad(f"pre-flight facts of schema {values.get('schema')!r}; this version reads {PREFLIGHT_SCHEMA}")
        known = set(cls.__dataclass_fields__) | {"schema"}
        unknown = sorted(str(key) for key in values if key not in known)
        if unknown:
            raise _bad(f"pre-flight facts with unknown keys {printable(', '.join(unknown))[:200]}")
        defenses = values.get("scope_defenses", [])
        if not isinstance(defenses, list) or len(defenses) > _MAX_DEFENSES:
            raise _bad(f"scope_defenses must be a list of at most {_MAX_DEFENSES} defenses", defenses)
        noise = values.get("dp_sgd_noise_multiplier", 0.0)
        if isinstance(noise, bool) or not isinstance(noise, numbers.Real):
            raise _bad("dp_sgd_noise_multiplier must be a number", noise)
        return cls(
            site=_name(values.get("site"), "site"),
            num_train_images=_count(values.get("num_train_images"), "num_train_images"),
            smallest_class=_count(values.get("smallest_class"), "smallest_class"),
            single_image_classes=_count(values.get("single_image_classes"), "single_image_classes"),
            batch_size=_count(values.get("batch_size"), "batch_size"),
            local_steps=_count(values.get("local_steps"), "local_steps"),
            dp_sgd_noise_multiplier=float(noise),
            scope_defenses=tuple(DeclaredDefense.from_json(entry) for entry in defenses),
        )


def _count(value: Any, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= _MAX_COUNT:
        raise _bad(f"{label} must be an integer in [0, {_MAX_COUNT}]", value)
    return int(value)


def _name(value: Any, label: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME or printable(value) != value:
        raise _bad(f"{label} must be a printable name of 1 to {_MAX_NAME} characters", value)
    return value


def _bad(problem: str, value: Any = None) -> MedPFLError:
    shown = "" if value is None else f" (got {printable(repr(value))[:120]})"
    return MedPFLError(
        f"invalid pre-flight facts: {problem}{shown}",
        fix="the site must run the same MedPFL version as the server; its pre-flight reply is refused",
    )
