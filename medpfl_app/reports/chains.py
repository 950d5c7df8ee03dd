"""Per site: what it trained (model, batch size, local steps) and the defenses its updates passed, in order.

Everything comes from the site's records: ``model`` (the network the audit rebuilt), ``training_facts`` (what the
site declared in the update's meta) or, for records without them, the threat model's copy of those facts, and
``defenses`` (the chain applied to the update before it left the site). A chain can change mid-job (a site can
switch scope), so each distinct chain is listed with the rounds it was applied in.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medpfl_app.contracts.record import AuditRecord
from medpfl_app.reports.configs import value_words
from medpfl_app.reports.fields import mapping, text

#: Defense parameters in words (others: the name with spaces).
_PARAM_WORDS: dict[str, str] = {
    "clip_norm": "clipping norm",
    "noise_multiplier": "noise multiplier",
    "b": "Laplace scale b",
    "scale": "scale",
    "sigma0": "σ0",
    "percentile": "percentile",
    "fraction": "fraction kept",
    "delta": "δ",
    "epsilon_max": "ε cap",
}


@dataclass(frozen=True)
class Defense:
    """One defense of a chain, in words."""

    name: str
    guarantee: str
    installed_by: str
    params: str
    formal: bool


@dataclass(frozen=True)
class SiteChain:
    """One distinct setup of a site: rounds, model, training facts and its defense chain in order."""

    site: str
    rounds: tuple[int, ...]
    model: str
    batch_size: str
    local_steps: str
    training: str
    defenses: tuple[Defense, ...]

    def rounds_text(self) -> str:
        """``0–4`` for consecutive rounds, else a list."""
        rounds = self.rounds
        if len(rounds) > 2 and rounds == tuple(range(rounds[0], rounds[-1] + 1)):
            return f"{rounds[0]}–{rounds[-1]}"
        return ", ".join(str(r) for r in rounds)


def params_text(entry: Mapping[str, Any]) -> str:
    """The defense's parameters in words (``clipping norm 1, noise multiplier 1``)."""
    params = mapping(entry.get("params"))
    return ", ".join(f"{_PARAM_WORDS.get(k, k.replace('_', ' '))} {value_words(v)}" for k, v in sorted(params.items()))


def is_formal(entry: Mapping[str, Any]) -> bool:
    """Whether the defense states a formal (ε, δ) guarantee (client-level DP or DP-SGD with an accountant)."""
    guarantee = (text(entry.get("guarantee")) or "").lower()
    return "dp" in guarantee and "heuristic" not in guarantee and ("ε" in guarantee or "epsilon" in guarantee)


def defense(entry: Mapping[str, Any]) -> Defense:
    """One ``defenses`` entry of a record, in words."""
    return Defense(
        name=(text(entry.get("defense")) or "unnamed defense").replace("_", " "),
        guarantee=text(entry.get("guarantee")) or "guarantee not stated (treat as heuristic)",
        installed_by=text(entry.get("installed_by")) or "not recorded",
        params=params_text(entry),
        formal=is_formal(entry),
    )


def _fact(record: AuditRecord, name: str) -> Any:
    facts, threat = mapping(record.training_facts), mapping(record.threat_model)
    return facts.get(name) if facts.get(name) is not None else threat.get(name)


def _training(record: AuditRecord) -> str:
    parts = []
    if (lr := _fact(record, "learning_rate")) is not None:
        parts.append(f"learning rate {value_words(lr)}")
    if (optimizer := _fact(record, "optimizer")) is not None:
        parts.append(f"optimiser {value_words(optimizer)}")
    if (images := _fact(record, "num_train_images")) is not None:
        parts.append(f"{value_words(images)} training images")
    if (bn := _fact(record, "bn_buffers_included")) is not None:
        parts.append(f"BatchNorm buffers sent: {value_words(bn)}")
    return ", ".join(parts) or "not recorded"


def _setup(site: str, record: AuditRecord, rounds: list[int]) -> SiteChain:
    model = mapping(record.model)
    network = text(model.get("network")) or "not recorded"
    size = model.get("num_parameters")
    if isinstance(size, int) and not isinstance(size, bool):
        network += f" ({size:,} parameters)"
    chain = tuple(defense(d) for d in record.defenses if isinstance(d, Mapping))
    batch, steps = _fact(record, "batch_size"), _fact(record, "local_steps")
    return SiteChain(
        site=site,
        rounds=tuple(rounds),
        model=network,
        batch_size="not recorded" if batch is None else value_words(batch),
        local_steps="not recorded" if steps is None else value_words(steps),
        training=_training(record),
        defenses=chain,
    )


def site_chains(records: Mapping[tuple[str, int], AuditRecord]) -> list[SiteChain]:
    """Per site (sorted), each distinct setup (model, training facts, defense chain) and the rounds it was used.

    Args:
        records: The record shown for each ``(site, round)``.
    """
    rows: list[SiteChain] = []
    for site in sorted({s for s, _ in records}):
        seen: dict[str, tuple[AuditRecord, list[int]]] = {}
        for (s, round_number), record in sorted(records.items(), key=lambda item: item[0][1]):
            if s != site:
                continue
            # per-round fields (ε so far, the round, the model's hash) do not make a new setup
            setup = _setup(site, record, [])
            key = json.dumps(
                [
                    setup.model,
                    setup.batch_size,
                    setup.local_steps,
                    setup.training,
                    [dataclasses.astuple(d) for d in setup.defenses],
                ],
                default=str,
            )
            seen.setdefault(key, (record, []))[1].append(round_number)
        rows += [_setup(site, record, rounds) for record, rounds in seen.values()]
    return rows
