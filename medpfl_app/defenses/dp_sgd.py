"""Sample-level DP-SGD through Opacus, as a training-side option (usable with or without Lightning).

`medpfl_app.models.dp_compatible.make_dp_compatible` checks a network with Opacus' `ModuleValidator` and fixes it
(BatchNorm → GroupNorm);
`make_private` then attaches Opacus' `PrivacyEngine` (per-sample clipping + Gaussian noise + accountant) and returns
what a training loop needs plus `DPSGDSession.epsilon` / `DPSGDSession.meta` for the result meta.
`SampleLevelLedger` (`medpfl_app.defenses.dp_sgd_ledger`, re-exported here) keeps a site's DP-SGD steps in a file,
so ε keeps adding up across jobs and restarts; `site_dp_sgd_ledger` is the site's own one, anchored so that deleting
it stops training instead of resetting ε.

Why BatchNorm must go: BatchNorm normalises every sample with its batch-mates' statistics, so one patient's image
changes the others' outputs and per-sample gradients are no longer separable; per-sample clipping would not bound
one sample's influence. GroupNorm normalises within each sample. For FL this also removes the BN running statistics,
which DP-SGD would not privatise and which are the strongest single leakage channel. The server's global model must
be fixed the same way (call `make_dp_compatible` on it) so that parameter names and shapes match.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Literal

import torch
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader

from medpfl_app.defenses.accountant import check_delta
from medpfl_app.defenses.base import Guarantee
from medpfl_app.defenses.dp_sgd_ledger import SampleLevelLedger, site_dp_sgd_ledger
from medpfl_app.defenses.update_arrays import is_positive_number, require
from medpfl_app.errors import MedPFLError
from medpfl_app.models.dp_compatible import CompatibilityReport, make_dp_compatible

__all__ = [
    "DPSGDConfig",
    "DPSGDSession",
    "OptimizerFactory",
    "SampleLevelLedger",
    "make_dp_compatible",
    "make_private",
    "site_dp_sgd_ledger",
]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


@dataclasses.dataclass(frozen=True)
class DPSGDConfig:
    """Configuration of sample-level DP-SGD.

    Args:
        noise_multiplier: σ / max_grad_norm of Opacus' per-step Gaussian noise, > 0.
        max_grad_norm: Per-sample gradient L2 clipping bound, > 0.
        delta: δ in (0, 1) for the reported ε; choose δ < 1 / (samples at the site).
        accountant: Opacus accountant: ``"rdp"``, ``"prv"`` or ``"gdp"``.
        poisson_sampling: Poisson-sampled batches, which the accountant's sampling analysis assumes.
        secure_mode: Cryptographically secure noise (slower; use for production runs).
        fix_module: Replace DP-incompatible layers (BatchNorm → GroupNorm) via ``ModuleValidator.fix``; if False an
            incompatible module is refused.

    Notes:
        (ε, δ)-DP at sample level for the site's training data, over all local steps ever taken with this
        session's accountant. Void if: ``poisson_sampling`` is off (the accountant's assumption breaks; Opacus
        then under-reports ε); the accountant is recreated every FL round (ε would restart at 0: keep the
        session, or persist the accountant state); the same data is also trained on outside DP-SGD; or a
        patient contributes several images (the unit protected is one image, not one patient).
    """

    guarantee: ClassVar[Guarantee] = Guarantee.SAMPLE_DP
    noise_multiplier: float
    max_grad_norm: float
    delta: float = 1e-5
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"
    poisson_sampling: bool = True
    secure_mode: bool = False
    fix_module: bool = True

    def __post_init__(self) -> None:
        require(
            is_positive_number(self.noise_multiplier),
            f"dp_sgd: noise_multiplier must be > 0, got {self.noise_multiplier!r}",
            "set e.g. noise_multiplier=1.0",
        )
        require(
            is_positive_number(self.max_grad_norm),
            f"dp_sgd: max_grad_norm must be > 0, got {self.max_grad_norm!r}",
            "set e.g. max_grad_norm=1.0",
        )
        check_delta(self.delta)
        require(
            self.accountant in ("rdp", "prv", "gdp"),
            f"dp_sgd: unknown accountant {self.accountant!r}",
            'use "rdp", "prv" or "gdp"',
        )
        for flag in ("poisson_sampling", "secure_mode", "fix_module"):
            require(
                isinstance(getattr(self, flag), bool),
                f"dp_sgd: {flag} must be true or false",
                f"set {flag} to a boolean",
            )


@dataclasses.dataclass
class DPSGDSession:
    """What a training loop needs after `make_private`: use ``module``, ``optimizer`` and ``data_loader``.

    ``module`` is the (possibly fixed) network itself, not a wrapper, so its ``state_dict`` keys are unchanged
    (NVFlare's strict key matching keeps working).
    """

    module: nn.Module
    optimizer: DPOptimizer  # a torch Optimizer that also owns the noise ``generator``
    data_loader: DataLoader[Any]
    privacy_engine: PrivacyEngine
    config: DPSGDConfig
    compatibility: CompatibilityReport
    optimizer_rebuilt: bool

    def epsilon(self, delta: float | None = None) -> float:
        """ε spent so far by all steps of this session, for ``delta`` (default: the configured δ)."""
        return float(self.privacy_engine.get_epsilon(check_delta(self.config.delta if delta is None else delta)))

    def meta(self) -> dict[str, Any]:
        """A JSON-able entry for the result meta (same shape as the ``medpfl_defenses`` entries of the filters)."""
        return {
            "defense": "dp_sgd",
            "guarantee": str(self.config.guarantee),
            "params": dataclasses.asdict(self.config),
            "record": {
                "replaced_modules": list(self.compatibility.replaced),
                "steps": int(sum(n for _, _, n in getattr(self.privacy_engine.accountant, "history", []))),
            },
            "epsilon_total": self.epsilon(),
            "delta": self.config.delta,
            "accountant": self.config.accountant,
        }


def make_private(
    module: nn.Module,
    optimizer: torch.optim.Optimizer | OptimizerFactory,
    data_loader: DataLoader[Any],
    config: DPSGDConfig,
    *,
    criterion: nn.Module | None = None,
) -> DPSGDSession:
    """Make local training sample-level DP with Opacus.

    Args:
        module: The network; checked (and fixed, if ``config.fix_module``) by Opacus' ``ModuleValidator``.
        optimizer: An optimizer over ``module``'s parameters, or a factory ``params -> optimizer``. If the module had
            to be fixed, new parameters exist: a factory is called on them; an optimizer instance is rebuilt as
            ``type(optimizer)(params, **optimizer.defaults)`` (its state, e.g. momentum, is lost).
        data_loader: The site's training loader (Opacus replaces it by a Poisson-sampling loader).
        config: The DP-SGD configuration.
        criterion: Loss module, only needed by Opacus' ghost clipping; plain training ignores it.

    Returns:
        A `DPSGDSession`; train with its ``module``, ``optimizer`` and ``data_loader``.
    """
    fixed, report = make_dp_compatible(module, fix=config.fix_module)
    optimizer, rebuilt = _optimizer_for(fixed, module, optimizer)
    with warnings.catch_warnings():
        # Opacus warns that secure RNG is off; secure_mode is an explicit, documented config choice here.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=config.accountant, secure_mode=config.secure_mode)
        extra = {"criterion": criterion} if criterion is not None else {}
        _hooks, dp_optimizer, dp_loader = engine.make_private(
            module=fixed,
            optimizer=optimizer,
            data_loader=data_loader,
            noise_multiplier=config.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            poisson_sampling=config.poisson_sampling,
            wrap_model=False,  # keep the module itself so state_dict keys stay as the server expects
            **extra,
        )
    return DPSGDSession(
        module=fixed,
        optimizer=dp_optimizer,
        data_loader=dp_loader,
        privacy_engine=engine,
        config=config,
        compatibility=report,
        optimizer_rebuilt=rebuilt,
    )


def _optimizer_for(
    fixed: nn.Module, module: nn.Module, optimizer: torch.optim.Optimizer | OptimizerFactory
) -> tuple[torch.optim.Optimizer, bool]:
    """An optimizer over ``fixed``'s parameters, and whether an optimizer instance had to be rebuilt for them."""
    if isinstance(optimizer, torch.optim.Optimizer):
        if fixed is not module:
            return type(optimizer)(fixed.parameters(), **optimizer.defaults), True
        return optimizer, False
    if callable(optimizer):
        return optimizer(fixed.parameters()), False
    raise MedPFLError(
        f"optimizer must be a torch optimizer or a factory, got {type(optimizer).__name__}",
        fix="pass e.g. lambda params: torch.optim.SGD(params, lr=0.01)",
    )
