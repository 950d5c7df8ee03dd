"""The labels a gradient-matching attack uses: optimised soft labels, the known labels, or labels recovered."""

from __future__ import annotations

import torch

from medpfl_app.attacks.knowledge import AttackerKnowledge
from medpfl_app.attacks.labels import expected_probabilities, recover_labels_from_update
from medpfl_app.attacks.matching_config import MatchingConfig
from medpfl_app.attacks.victim import Victim, target_update


def attack_labels(
    knowledge: AttackerKnowledge,
    config: MatchingConfig,
    victim: Victim,
    mode: str,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """``(labels, soft labels to optimise or None, where the labels came from)`` for the recipe's label policy."""
    n_images = knowledge.images
    if config.labels == "optimize":
        soft = torch.randn(config.restarts, n_images, knowledge.num_classes, generator=generator)
        return torch.zeros(n_images, dtype=torch.long), soft.requires_grad_(True), "optimised"
    if knowledge.labels is not None and config.labels == "auto":
        return knowledge.labels.long(), None, "known"
    gradient_scale = mode == "gradient" or knowledge.learning_rate is not None
    mean_probs = (
        expected_probabilities(lambda x: victim.logits(victim.params, x), knowledge.image_shape, seed=config.seed)
        if gradient_scale and n_images > 1
        else None
    )
    labels = recover_labels_from_update(
        knowledge.model,
        target_update(knowledge, "gradient" if mode == "gradient" else "approximate"),
        n_images,
        method=config.label_method,
        mean_probs=mean_probs,
    )
    return labels, None, "recovered"
