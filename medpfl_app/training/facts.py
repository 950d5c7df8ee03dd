"""The training facts a site attaches to every update, for the server-side audit to model the attacker correctly.

An honest-but-curious server usually knows the local batch size, step count and learning rate; the audit must
assume it does, so the site states them instead of leaving the audit to guess. With sample-level DP-SGD on, the
facts also state its parameters and the ε this site has spent so far in the job (``dp_sgd``; ``None`` when off),
with an empirical lower bound on one step's ε (``dp_sgd.epsilon_empirical``, from synthetic canaries).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn

from medpfl_app.contracts.training_facts import FACTS_VERSION, TrainingFacts
from medpfl_app.defenses.epsilon_audit_dp_sgd import audit_dp_sgd

__all__ = [
    "FACTS_VERSION",
    "FL_META_ATTRIBUTE",
    "TrainingFactsCallback",
    "bn_buffers_in_state_dict",
    "bn_momentum",
    "dp_sgd_facts",
    "empirical_dp_sgd_epsilon",
]
FL_META_ATTRIBUTE = "__fl_meta__"  # read by NVFlare's FLCallback at on_train_end
#: Trials of the empirical ε lower bound of one DP-SGD step (0: off) and its fixed, public seed (synthetic data only).
DEFAULT_EMPIRICAL_TRIALS = 1000
EMPIRICAL_SEED = 0


def bn_buffers_in_state_dict(module: nn.Module) -> bool:
    """Whether the module's state dict carries BatchNorm running statistics (they travel with a DIFF update)."""
    return any(
        isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats for layer in module.modules()
    )


def dp_sgd_facts(module: nn.Module, *, epsilon_empirical: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The DP-SGD entry of the facts: parameters and cumulative ε of the module's Opacus session, or ``None``.

    ε covers every DP-SGD step recorded in the site's ledger (earlier jobs included) when the module has one
    (``epsilon_scope: "site ledger"``), else every local step of this job so far (``"this job"``), for the
    configured δ; plain JSON values only, since NVFlare sends the facts as update meta. ``epsilon_empirical`` (an
    ``EmpiricalEpsilon.to_json()`` of one step of this configuration, see `empirical_dp_sgd_epsilon`) is passed
    through, None when not computed.
    """
    session = getattr(module, "dp_session", None)
    if session is None:
        return None
    config = session.config
    history = getattr(session.privacy_engine.accountant, "history", [])
    sample_rate = getattr(session.data_loader, "sample_rate", None)
    return {
        "noise_multiplier": float(config.noise_multiplier),
        "max_grad_norm": float(config.max_grad_norm),
        "delta": float(config.delta),
        "epsilon": float(session.epsilon()),
        "guarantee": str(config.guarantee),
        "accountant": str(config.accountant),
        "sample_rate": float(sample_rate) if sample_rate is not None else None,
        "steps_total": int(sum(int(steps) for _, _, steps in history)),
        "poisson_sampling": bool(config.poisson_sampling),
        "secure_mode": bool(config.secure_mode),
        "epsilon_scope": "site ledger" if getattr(module, "dp_ledger", None) is not None else "this job",
        "epsilon_empirical": dict(epsilon_empirical) if epsilon_empirical is not None else None,
    }


def empirical_dp_sgd_epsilon(module: nn.Module, trials: int) -> dict[str, Any] | None:
    """ε̂ of one DP-SGD step of the module's session configuration at its sample rate, None without DP-SGD.

    Runs `audit_dp_sgd` (Opacus on a synthetic linear model and canary; never the site's data) with a fixed seed.
    """
    session = getattr(module, "dp_session", None)
    sample_rate = getattr(getattr(session, "data_loader", None), "sample_rate", None)
    if session is None or trials == 0 or not sample_rate:
        return None
    batches = max(1, round(1.0 / float(sample_rate)))
    return audit_dp_sgd(session.config, trials=trials, seed=EMPIRICAL_SEED, batches_per_epoch=batches).to_json()


def bn_momentum(module: nn.Module) -> float | None:
    momenta = {layer.momentum for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)}
    return float(momenta.pop()) if len(momenta) == 1 and None not in momenta else None


class TrainingFactsCallback(Callback):
    """Counts what local training did in this round and hands it to NVFlare as update meta.

    Must come before NVFlare's ``FLCallback`` in the trainer's callback list (``flare.patch`` appends it last), so
    the meta is in place when ``FLCallback.on_train_end`` sends the update.

    Args:
        num_train_images: Size of the site's training set.
        configured_batch_size: The loader's batch size.
        local_epochs: Epochs per round.
        empirical_trials: Trials of the DP-SGD empirical ε lower bound (computed once per configuration, a few
            seconds); 0 turns it off.
    """

    def __init__(
        self,
        *,
        num_train_images: int,
        configured_batch_size: int,
        local_epochs: int,
        empirical_trials: int = DEFAULT_EMPIRICAL_TRIALS,
    ) -> None:
        self.num_train_images = num_train_images
        self.empirical_trials = empirical_trials
        self._empirical: dict[tuple[Any, Any], dict[str, Any] | None] = {}
        self.configured_batch_size = configured_batch_size
        self.local_epochs = local_epochs
        self._start_step = 0
        self._batch_sizes: list[int] = []
        self._positions: list[int] = []
        #: The facts of the last round as sent (`TrainingFacts.to_json`).
        self.last_facts: dict[str, Any] = {}
        # Site-local only (for the audit's site scorer): positions of the samples this round trained on. Never
        # put in the meta: sample identities must not leave the site.
        self.last_positions: tuple[int, ...] = ()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_step = trainer.global_step
        self._batch_sizes = []
        self._positions = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_sizes.append(int(batch["label"].shape[0]))
        if isinstance(batch, dict) and "index" in batch:
            self._positions.extend(int(i) for i in torch.as_tensor(batch["index"]).reshape(-1).tolist())

    def _empirical_epsilon(self, module: nn.Module) -> dict[str, Any] | None:
        session = getattr(module, "dp_session", None)
        if session is None:
            return None
        key = (session.config, getattr(session.data_loader, "sample_rate", None))
        if key not in self._empirical:
            self._empirical[key] = empirical_dp_sgd_epsilon(module, self.empirical_trials)
        return self._empirical[key]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        # Opacus' DPOptimizer wraps the configured one; the audit needs the update rule (sgd/adam), not the wrapper.
        optimizer = getattr(optimizer, "original_optimizer", optimizer)
        learning_rate = float(optimizer.param_groups[0]["lr"]) if optimizer else None
        facts = TrainingFacts(
            medpfl_facts_version=FACTS_VERSION,
            batch_size=self.configured_batch_size,
            batch_sizes=tuple(sorted(set(self._batch_sizes))),
            local_steps=trainer.global_step - self._start_step,
            local_epochs=self.local_epochs,
            learning_rate=learning_rate,
            optimizer=type(optimizer).__name__.lower() if optimizer else None,
            num_train_images=self.num_train_images,
            num_images_seen=int(sum(self._batch_sizes)),
            bn_buffers_included=bn_buffers_in_state_dict(pl_module),
            bn_momentum=bn_momentum(pl_module),
            network=getattr(pl_module, "network", None),
            image_size=getattr(pl_module, "image_size", None),
            in_channels=getattr(pl_module, "in_channels", None),
            num_classes=getattr(pl_module, "num_classes", None),
            state_dict_prefix="net.",
            torch_version=str(torch.__version__),
            dp_sgd=dp_sgd_facts(pl_module, epsilon_empirical=self._empirical_epsilon(pl_module)),
        )
        # The update meta's wire format: every fact key, None where unknown (what the audit's reader expects).
        self.last_facts = facts.to_json()
        ledger, session = getattr(pl_module, "dp_ledger", None), getattr(pl_module, "dp_session", None)
        if ledger is not None and session is not None:
            # Write-ahead: before FLCallback sends the update; a failure raises, so nothing is sent (fail closed).
            ledger.record(session, {"local_steps": self.last_facts["local_steps"]})
        self.last_positions = tuple(self._positions)
        setattr(pl_module, FL_META_ATTRIBUTE, dict(self.last_facts))
