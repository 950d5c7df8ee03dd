"""Site-local, in-process record of which training samples went into each round's update. Never sent anywhere.

The site's training entry (`medpfl_app.training.site_entry`) registers its training dataset once and records, after
each round, the ``"index"`` of every sample its batches carried; the site's scorer component
(`medpfl_app.audit.site_scorer`), running in the same client process, reads it to score the server's
reconstructions. Both live in the site's process memory only: no file, no meta, no message carries the indices.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_lock = threading.Lock()
_datasets: dict[str, Any] = {}
_rounds: dict[str, dict[int, tuple[int, ...]]] = {}
_KEEP_ROUNDS = 16  # the audit scores recent rounds; older ones are dropped to bound memory


@dataclass(frozen=True)
class RoundSamples:
    """The distinct training positions a site used in one round, in first-use order."""

    site: str
    round: int
    positions: tuple[int, ...]


def register_training_data(site: str, dataset: Any) -> None:
    """Make the site's training dataset (items with ``"image"``, ``"label"``) available to its scorer."""
    with _lock:
        _datasets[site] = dataset


def training_data(site: str) -> Any | None:
    with _lock:
        return _datasets.get(site)


def record_round(site: str, round_number: int, positions: Sequence[int]) -> RoundSamples:
    """Remember the distinct sample positions behind ``site``'s update of ``round_number``."""
    unique = tuple(dict.fromkeys(int(p) for p in positions))
    with _lock:
        rounds = _rounds.setdefault(site, {})
        rounds[int(round_number)] = unique
        for old in sorted(rounds)[:-_KEEP_ROUNDS]:
            del rounds[old]
    return RoundSamples(site, int(round_number), unique)


def round_samples(site: str, round_number: int) -> RoundSamples | None:
    with _lock:
        positions = _rounds.get(site, {}).get(int(round_number))
    return None if positions is None else RoundSamples(site, int(round_number), positions)


def recorded_rounds(site: str) -> tuple[int, ...]:
    with _lock:
        return tuple(sorted(_rounds.get(site, {})))


def clear(site: str | None = None) -> None:
    """Forget everything (tests) or one site's records."""
    with _lock:
        for table in (_datasets, _rounds):
            if site is None:
                table.clear()
            else:
                table.pop(site, None)
