"""The score request the server's audit sends a site and the site's reply (typed contracts of the auxiliary channel).

The server sends a `ScoreRequest` (its `to_json` entries go into the NVFlare ``Shareable`` on topic `SCORE_TOPIC`);
the site answers with a `ScoreReply` (its `to_json` under the reply key ``scores``). The wire format is the one MedPFL
sites and servers have used so far, so neither side needs the other upgraded: the request's keys are the
``REQUEST_*`` names below, the reply's keys are exactly `SCORE_KEYS`. The channel carries no version field (adding one
would change the wire): `SCORE_SCHEMA` names the version the topic stands for, and a reader refuses any key it does
not know instead.

Pure (no NVFlare, no torch).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, cast

import numpy as np

from medpfl_app.errors import MedPFLError

#: The version of the score request/reply contract that `SCORE_TOPIC` carries.
SCORE_SCHEMA = "medpfl.score/1"
SCORE_TOPIC = "medpfl.audit.score"
REQUEST_RECONSTRUCTIONS = "reconstructions"
REQUEST_LABELS = "labels"
REQUEST_ROUND = "round"
REQUEST_THRESHOLD = "ssim_threshold"
#: `medpfl_app.audit.update_digest.update_digest` of the update the server received (and attacked).
REQUEST_DIGEST = "update_digest"
#: Set by a server that stores thumbnails: it would accept downsized originals (the site decides; demo data only).
REQUEST_ORIGINALS = "originals_wanted"
#: The SSIM from which an image counts as reconstructed, when a request states none.
DEFAULT_SSIM_THRESHOLD = 0.9

#: The only keys a site's score reply may carry (checked before anything is sent, and again when received).
SCORE_KEYS = (
    "status",
    "reason",
    "psnr_mean",
    "psnr_max",
    "ssim_mean",
    "ssim_max",
    "attack_success_rate",
    "label_accuracy",
    "identifiability",
    "identifiability_chance",
    "identifiability_excess",
    "identifiability_p_value",
    "relative_leakage",
    "ssim_threshold",
    "images_used",
    "reconstructions_scored",
)
_COUNT_KEYS = ("images_used", "reconstructions_scored")
_MAX_REASON = 500


class ScoreStatus(StrEnum):
    """Whether the site measured the reconstructions."""

    SCORED = "scored"
    UNAVAILABLE = "unavailable"


def check_scalars_only(scores: Mapping[str, Any]) -> None:
    """Refuse anything but the known keys with ``None``, bool, int, float or short str values.

    Raises:
        MedPFLError: A key outside `SCORE_KEYS` or a non-scalar value (it would leave the site).
    """
    for key, value in scores.items():
        if key not in SCORE_KEYS:
            raise MedPFLError(f"site score key {key!r} is not allowed to leave the site", fix=f"use {SCORE_KEYS}")
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise MedPFLError(f"site score {key!r} is a {type(value).__name__}, not a scalar", fix="send scalars only")
        if isinstance(value, str) and len(value) > _MAX_REASON:
            raise MedPFLError(f"site score {key!r} is an over-long string", fix="send a short reason")


@dataclass(frozen=True)
class ScoreReply:
    """A site's scalar scores of the server's reconstructions of one update (``None``: not measured).

    An ``unavailable`` reply carries only its reason; a ``scored`` one every key of `SCORE_KEYS` (see
    `medpfl_app.audit.scoring.score_reconstructions` for what each score means).
    """

    status: ScoreStatus
    reason: str | None = None
    psnr_mean: float | None = None
    psnr_max: float | None = None
    ssim_mean: float | None = None
    ssim_max: float | None = None
    attack_success_rate: float | None = None
    label_accuracy: float | None = None
    identifiability: float | None = None
    identifiability_chance: float | None = None
    identifiability_excess: float | None = None
    identifiability_p_value: float | None = None
    relative_leakage: float | None = None
    ssim_threshold: float | None = None
    images_used: int | None = None
    reconstructions_scored: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", ScoreStatus(self.status))
        if self.status is ScoreStatus.UNAVAILABLE and any(getattr(self, key) is not None for key in SCORE_KEYS[2:]):
            raise MedPFLError("an unavailable score reply carries scores", fix="send scores with status 'scored'")

    @classmethod
    def unavailable(cls, reason: str) -> ScoreReply:
        """Scores that could not be obtained, with the reason (a short sentence naming no path or sample)."""
        return cls(status=ScoreStatus.UNAVAILABLE, reason=reason)

    def to_json(self) -> dict[str, Any]:
        """The reply's ``scores`` entry: ``{"status", "reason"}`` when unavailable, else every `SCORE_KEYS` key."""
        if self.status is ScoreStatus.UNAVAILABLE:
            return {"status": str(self.status), "reason": self.reason}
        return {key: str(self.status) if key == "status" else getattr(self, key) for key in SCORE_KEYS}

    @classmethod
    def from_json(cls, values: Any) -> ScoreReply:
        """A reply read back from the wire (or a ledger record); missing scores are ``None``.

        Raises:
            MedPFLError: Not a mapping, a key outside `SCORE_KEYS`, a non-scalar or over-long value, no or an
                unknown status, a score of the wrong type, or scores in an unavailable reply.
        """
        if not isinstance(values, Mapping):
            raise MedPFLError(f"site scores are a {type(values).__name__}, not a mapping", fix="send the scores dict")
        check_scalars_only(values)
        try:
            status = ScoreStatus(cast(str, values.get("status")))  # anything else: ValueError below
        except ValueError:
            raise MedPFLError(
                f"site scores have no known status (got {str(values.get('status'))[:40]!r})",
                fix=f"set status to one of {[str(s) for s in ScoreStatus]}",
            ) from None
        parsed: dict[str, Any] = {"status": status, "reason": _optional(values, "reason", str)}
        for field in fields(cls)[2:]:
            kind = int if field.name in _COUNT_KEYS else float
            parsed[field.name] = _optional(values, field.name, kind)
        return cls(**parsed)


def _optional(values: Mapping[str, Any], key: str, kind: type) -> Any:
    """``values[key]`` as ``kind`` (None when missing); a float score may be sent as an int, never as a bool."""
    value = values.get(key)
    if value is None:
        return None
    if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    raise MedPFLError(
        f"site score {key!r} is a {type(value).__name__}, not a {kind.__name__}",
        fix=f"send {key} as a {kind.__name__} or null",
    )


@dataclass(frozen=True, eq=False)
class ScoreRequest:
    """The server's request to score its reconstructions of one site's update of one round.

    Attributes:
        round: The round of the update.
        update_digest: Digest of the update as the server received it (the site scores only an update it sent).
        reconstructions: ``(N, C, H, W)`` float32 in [0, 1].
        labels: The labels the attack recovered, one per reconstruction (None: none recovered).
        ssim_threshold: SSIM from which an image counts as reconstructed.
        originals_wanted: The server stores thumbnails and would accept downsized demo originals.
    """

    round: int | None
    update_digest: str | None
    reconstructions: np.ndarray
    labels: np.ndarray | None = None
    ssim_threshold: float = DEFAULT_SSIM_THRESHOLD
    originals_wanted: bool = False

    def to_json(self) -> dict[str, Any]:
        """The request's ``Shareable`` entries (``originals_wanted`` only when set)."""
        values: dict[str, Any] = {
            REQUEST_ROUND: self.round,
            REQUEST_DIGEST: self.update_digest,
            REQUEST_RECONSTRUCTIONS: np.ascontiguousarray(self.reconstructions, dtype=np.float32),
            REQUEST_LABELS: None if self.labels is None else np.asarray(self.labels, dtype=np.int64).reshape(-1),
            REQUEST_THRESHOLD: float(self.ssim_threshold),
        }
        if self.originals_wanted:
            values[REQUEST_ORIGINALS] = True
        return values

    @classmethod
    def from_json(cls, values: Any) -> ScoreRequest:
        """A request read from the wire, its types checked (the site checks shapes against its own images).

        Raises:
            MedPFLError: Not a mapping, a key it does not know, or a value of the wrong type.
        """
        _check_request_keys(values)
        round_number = _request_round(values.get(REQUEST_ROUND))
        digest = values.get(REQUEST_DIGEST)
        if digest is not None and not isinstance(digest, str):
            raise MedPFLError("a score request's update digest is not a string", fix="send the digest string")
        recon, labels = _request_arrays(values.get(REQUEST_RECONSTRUCTIONS), values.get(REQUEST_LABELS))
        threshold = _request_threshold(values.get(REQUEST_THRESHOLD))
        wanted = values.get(REQUEST_ORIGINALS)
        if wanted is not None and not isinstance(wanted, bool):
            raise MedPFLError("a score request's originals_wanted is not true or false", fix="send a boolean")
        return cls(
            round=round_number,
            update_digest=digest,
            reconstructions=recon,
            labels=labels,
            ssim_threshold=threshold,
            originals_wanted=bool(wanted),
        )


#: The entries a score request may carry (NVFlare's own ``__``-prefixed headers aside).
_REQUEST_KEYS = frozenset(
    {REQUEST_ROUND, REQUEST_DIGEST, REQUEST_RECONSTRUCTIONS, REQUEST_LABELS, REQUEST_THRESHOLD, REQUEST_ORIGINALS}
)


def _check_request_keys(values: Any) -> None:
    """Refuse a request that is not a mapping, or that carries an entry this version does not know."""
    if not isinstance(values, Mapping):
        raise MedPFLError(
            f"a score request is a {type(values).__name__}, not a mapping", fix="send the request's entries"
        )
    unknown = sorted(str(key) for key in values if key not in _REQUEST_KEYS and not str(key).startswith("__"))
    if unknown:
        raise MedPFLError(
            f"a score request carries unknown entries {unknown[:5]}", fix=f"send only {sorted(_REQUEST_KEYS)}"
        )


def _request_round(round_number: Any) -> int | None:
    """The request's round: a whole number >= 0, or None when it names none."""
    if round_number is None:
        return None
    if isinstance(round_number, bool) or not isinstance(round_number, numbers.Integral) or round_number < 0:
        raise MedPFLError(
            f"a score request names no valid round ({str(round_number)[:40]!r})",
            fix="send the round as a whole number",
        )
    return int(round_number)


def _request_arrays(recon: Any, labels: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The reconstructions ``(N, C, H, W)`` float32 and the recovered labels (1-D integers, or None)."""
    if not isinstance(recon, np.ndarray) or recon.dtype != np.float32 or recon.ndim != 4:
        raise MedPFLError(
            "a score request's reconstructions are not a 4-D float32 array",
            fix="send (N, C, H, W) float32 reconstructions",
        )
    if labels is not None and (not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu" or labels.ndim != 1):
        raise MedPFLError("a score request's labels are not a 1-D integer array", fix="send integer labels")
    return recon, labels


def _request_threshold(threshold: Any) -> float:
    """The SSIM threshold, a number in (0, 1] (`DEFAULT_SSIM_THRESHOLD` when the request states none)."""
    if threshold is None:
        threshold = DEFAULT_SSIM_THRESHOLD
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not (math.isfinite(threshold) and 0.0 < float(threshold) <= 1.0)
    ):
        raise MedPFLError("a score request's SSIM threshold is not a number in (0, 1]", fix="send e.g. 0.9")
    return float(threshold)
