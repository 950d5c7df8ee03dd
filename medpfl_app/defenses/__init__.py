"""Privacy defenses over model updates: pure functions, a registry and the client-level DP ledger.

Every defense maps an update (parameter name → NumPy array or torch tensor) to a NEW update plus a JSON-able
record, leaves integer/bool entries untouched and declares its `Guarantee` honestly. Nothing here imports NVFlare:
`medpfl_app.nvflare.filters` adapts these functions to NVFlare ``DXOFilter``s. Sample-level DP-SGD (Opacus) is in
`medpfl_app.defenses.dp_sgd` (imported on demand: it needs torch).
"""

from medpfl_app.defenses.accountant import (
    BudgetExceeded,
    DPCost,
    PrivacyLedger,
    SiteAccountant,
    epsilon_of,
    epsilon_per_release,
)
from medpfl_app.defenses.base import DEFENSES, Defense, Guarantee, build_defense
from medpfl_app.defenses.batchnorm import DropBatchNormStats, drop_bn_stats, is_bn_buffer
from medpfl_app.defenses.client_dp import ClientDP, client_dp, clip_update
from medpfl_app.defenses.noise import GaussianNoise, LaplaceNoise, gaussian_noise, laplace_noise
from medpfl_app.defenses.quantize import SignQuantization, UniformQuantization, sign_quantization, uniform_quantization
from medpfl_app.defenses.sparsify import TopKPrune, top_k
from medpfl_app.defenses.update_arrays import DefenseOutput

__all__ = [
    "DEFENSES",
    "BudgetExceeded",
    "ClientDP",
    "DPCost",
    "Defense",
    "DefenseOutput",
    "DropBatchNormStats",
    "GaussianNoise",
    "Guarantee",
    "LaplaceNoise",
    "PrivacyLedger",
    "SignQuantization",
    "SiteAccountant",
    "TopKPrune",
    "UniformQuantization",
    "build_defense",
    "client_dp",
    "clip_update",
    "drop_bn_stats",
    "epsilon_of",
    "epsilon_per_release",
    "gaussian_noise",
    "is_bn_buffer",
    "laplace_noise",
    "sign_quantization",
    "top_k",
    "uniform_quantization",
]
