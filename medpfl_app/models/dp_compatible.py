"""Networks that DP-SGD can train: Opacus' `ModuleValidator` checks a network and replaces BatchNorm by GroupNorm.

A model-level transformation, used both where DP-SGD trains (`medpfl_app.defenses.dp_sgd`) and where the server
builds the global model of a DP-SGD job (`medpfl_app.models.global_model`), so parameter names and shapes match.
"""

from __future__ import annotations

import dataclasses

from opacus.validators import ModuleValidator
from torch import nn

from medpfl_app.errors import MedPFLError


@dataclasses.dataclass(frozen=True)
class CompatibilityReport:
    """What `make_dp_compatible` found and changed, as plain JSON-able values."""

    problems: list[str]
    replaced: list[str]


def make_dp_compatible(module: nn.Module, *, fix: bool = True) -> tuple[nn.Module, CompatibilityReport]:
    """Validate ``module`` for DP-SGD and, if ``fix``, return a fixed copy (BatchNorm → GroupNorm).

    Raises:
        MedPFLError: the module is incompatible and ``fix`` is False, or Opacus cannot fix it.
    """
    problems = [str(error) for error in ModuleValidator.validate(module, strict=False)]
    if not problems:
        return module, CompatibilityReport(problems=[], replaced=[])
    if not fix:
        raise MedPFLError(
            f"the network is not DP-SGD compatible: {problems[0]}",
            fix="set fix_module=true to let Opacus replace BatchNorm by GroupNorm, or change the model",
        )
    batch_norms = [name for name, sub in module.named_modules() if isinstance(sub, nn.modules.batchnorm._BatchNorm)]
    fixed = ModuleValidator.fix(module)
    remaining = [str(error) for error in ModuleValidator.validate(fixed, strict=False)]
    if remaining:
        raise MedPFLError(
            f"Opacus could not make the network DP-SGD compatible: {remaining[0]}",
            fix="replace the unsupported layers by hand (see opacus.validators)",
        )
    return fixed, CompatibilityReport(problems=problems, replaced=batch_norms)
