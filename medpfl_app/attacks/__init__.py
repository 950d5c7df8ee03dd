"""Gradient-inversion attacks on federated updates, found by name; pure PyTorch (no NVFlare import).

Typical use (server side)::

    knowledge = knowledge_from_update(model, global_weights, update, meta, image_shape=(1, 32, 32))
    result = build_attack("idlg", iterations=100).run(knowledge)
"""

from medpfl_app.attacks.bn_report import BNLeakReport, bn_statistics_report
from medpfl_app.attacks.convergence import Convergence, ConvergenceEvidence, assess_convergence
from medpfl_app.attacks.engine import MatchingConfig, run_matching
from medpfl_app.attacks.knowledge import (
    AttackerKnowledge,
    UpdateKind,
    WorstCaseAssumptions,
    knowledge_from_update,
    strip_prefix,
)
from medpfl_app.attacks.labels import recover_labels, recover_labels_from_update
from medpfl_app.attacks.recipes import ATTACKS, Attack, build_attack
from medpfl_app.attacks.result import AttackResult

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackResult",
    "AttackerKnowledge",
    "BNLeakReport",
    "Convergence",
    "ConvergenceEvidence",
    "MatchingConfig",
    "UpdateKind",
    "WorstCaseAssumptions",
    "assess_convergence",
    "bn_statistics_report",
    "build_attack",
    "knowledge_from_update",
    "recover_labels",
    "recover_labels_from_update",
    "run_matching",
    "strip_prefix",
]
