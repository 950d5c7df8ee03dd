"""The round-samples record (`RoundSamples`) and how the training set behind it was loaded (`TrainingSet`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medpfl_app.data.config import DataConfig
from medpfl_app.errors import MedPFLError

#: Schema version of both site-local records (round samples and sent updates).
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TrainingSet:
    """How a site loaded its training images, so that its scorer can load exactly the same pixels.

    Attributes:
        num_images: Size of the training list.
        digest: `training_set_digest` of the training list when training loaded it.
        data: The data settings training used (after the job's and the site's overrides).
        num_classes: The label count the list was checked against (None: not checked).
    """

    num_images: int
    digest: str
    data: DataConfig
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.num_images, bool) or not isinstance(self.num_images, int) or self.num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {self.num_images!r}")
        if not isinstance(self.digest, str) or not self.digest.startswith("sha256:"):
            raise ValueError(f"digest must be a 'sha256:' string, got {self.digest!r}")
        if not isinstance(self.data, DataConfig):
            raise ValueError(f"data must be a DataConfig, got {type(self.data).__name__}")
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1
        ):
            raise ValueError(f"num_classes must be a positive integer or None, got {self.num_classes!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_images": self.num_images,
            "digest": self.digest,
            "num_classes": self.num_classes,
            "data": self.data.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainingSet:
        """Raises: ValueError: a missing or invalid field."""
        try:
            data = DataConfig.from_dict(values["data"])
        except (KeyError, TypeError, MedPFLError) as error:
            raise ValueError(f"invalid data settings: {error}") from None
        return cls(
            num_images=values.get("num_images"),  # type: ignore[arg-type]  # checked in __post_init__
            digest=values.get("digest"),  # type: ignore[arg-type]
            data=data,
            num_classes=values.get("num_classes"),
        )


@dataclass(frozen=True)
class RoundSamples:
    """The distinct training positions one site used in one round of one job, in first-use order.

    Attributes:
        job_id: The NVFlare job.
        site: The site.
        round: The FedAvg round.
        positions: Positions in the site's training list (repeats are dropped, first use kept).
        training_set: How the training list was loaded.
    """

    job_id: str
    site: str
    round: int
    positions: tuple[int, ...]
    training_set: TrainingSet

    def __post_init__(self) -> None:
        for name in ("job_id", "site"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise ValueError(f"round must be a non-negative integer, got {self.round!r}")
        if not isinstance(self.training_set, TrainingSet):
            raise ValueError("training_set must be a TrainingSet")
        positions = tuple(self.positions)
        if any(isinstance(p, bool) or not isinstance(p, int) for p in positions):
            raise ValueError("positions must be integers")
        if any(not 0 <= p < self.training_set.num_images for p in positions):
            raise ValueError(f"positions must lie in [0, {self.training_set.num_images})")
        object.__setattr__(self, "positions", tuple(dict.fromkeys(positions)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "job_id": self.job_id,
            "site": self.site,
            "round": self.round,
            "positions": list(self.positions),
            "training_set": self.training_set.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RoundSamples:
        """Raises: ValueError: another schema version, or a missing or invalid field."""
        if not isinstance(values, Mapping):
            raise ValueError("a round-samples record must be a JSON object")
        if values.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {values.get('schema_version')!r} is not {SCHEMA_VERSION}")
        training_set = values.get("training_set")
        positions = values.get("positions")
        if not isinstance(training_set, Mapping) or not isinstance(positions, list):
            raise ValueError("a round-samples record needs 'positions' (list) and 'training_set' (object)")
        return cls(
            job_id=values.get("job_id"),  # type: ignore[arg-type]  # checked in __post_init__
            site=values.get("site"),  # type: ignore[arg-type]
            round=values.get("round"),  # type: ignore[arg-type]
            positions=tuple(positions),
            training_set=TrainingSet.from_dict(training_set),
        )
