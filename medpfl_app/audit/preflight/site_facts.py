"""A site's coarse risk facts from its own data listing and training settings (run at the site, or by its operator).

Only counts leave this function: the number of training images, the smallest class's size and how many classes
hold one image, plus the batch size and local steps the site will use. No path, label list or pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from medpfl_app.contracts.preflight import DeclaredDefense, SiteRiskFacts
from medpfl_app.errors import MedPFLError


def local_steps_per_round(num_train_images: int, batch_size: int, local_epochs: int, max_steps: int) -> int:
    """Optimizer steps one round takes: epochs × batches (the last batch may be short), capped by ``max_steps``."""
    if batch_size < 1 or local_epochs < 1:
        raise MedPFLError(
            f"batch_size and local_epochs must be >= 1, got {batch_size} and {local_epochs}",
            fix="check the job's training settings and the site's data configuration",
        )
    steps = local_epochs * max(1, math.ceil(num_train_images / batch_size))
    return steps if max_steps < 1 else min(steps, max_steps)


def site_risk_facts(
    site: str,
    class_counts: Sequence[int],
    *,
    batch_size: int,
    local_epochs: int,
    max_steps: int = -1,
    dp_sgd_noise_multiplier: float = 0.0,
    scope_defenses: Sequence[DeclaredDefense] = (),
) -> SiteRiskFacts:
    """The facts a site sends for the pre-flight (see the module docstring).

    Args:
        class_counts: Training images per class (`medpfl_app.data.datalist.SiteData.class_counts`).
    """
    present = [count for count in class_counts if count > 0]
    total = sum(present)
    if not total:
        raise MedPFLError(f"site {site} has no training images", fix="check the site's datalist", site=site)
    return SiteRiskFacts(
        site=site,
        num_train_images=total,
        smallest_class=min(present),
        single_image_classes=sum(1 for count in present if count == 1),
        batch_size=min(batch_size, total),
        local_steps=local_steps_per_round(total, min(batch_size, total), local_epochs, max_steps),
        dp_sgd_noise_multiplier=dp_sgd_noise_multiplier,
        scope_defenses=tuple(scope_defenses),
    )
