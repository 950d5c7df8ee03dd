"""The attack grid's sizes and budgets, and one row of its results (one attacked image)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GridConfig:
    """Sizes and budgets of the grid (defaults sized for ≤ 20 min on a contended 2-core CPU).

    Attributes:
        image_size: Side of the images fed to the victims.
        seed_images: Images per un-noised seed-setting cell.
        noised_images: Images per Laplace-noise cell.
        dlg_images: Images for DLG (it rarely stops early, so it costs the full budget).
        noise_scales: Laplace scales b (0 = no defense is always included).
        seed_attacks: Attacks in the seed setting.
        lbfgs_steps: L-BFGS steps (× ``lbfgs_max_iter`` updates each) for DLG/iDLG/CPL without noise; the default
            15 × 20 = 300 quasi-Newton updates is the seed setting's "≤ 300 L-BFGS iterations" read strictly.
        noised_lbfgs_steps: L-BFGS steps under noise (the loss never reaches the stopping tolerance there).
        lbfgs_max_iter: Quasi-Newton updates per L-BFGS step (20 in the DLG/iDLG code).
        gradinv_iterations: Adam iterations of GradInv.
        gradinv_restarts: Restarts of GradInv (batched).
        realistic_batches: Batch sizes of the realistic settings (each one batch = the site's images).
        realistic_steps: Local SGD steps.
        realistic_lr: Local learning rate.
        realistic_attacks: Attacks in the realistic settings.
        realistic_iterations: Adam iterations there.
        realistic_restarts: Restarts there.
        realistic_repeats: Independent site batches per batch size.
        seed: Base seed (images, models, noise, initialisations).
    """

    image_size: int = 32
    seed_images: int = 20
    noised_images: int = 2
    dlg_images: int = 3
    noise_scales: tuple[float, ...] = (0.01, 0.005, 0.0033, 0.0025)
    seed_attacks: tuple[str, ...] = ("idlg", "cpl", "dlg", "gradinv")
    lbfgs_steps: int = 15
    noised_lbfgs_steps: int = 5
    lbfgs_max_iter: int = 20
    gradinv_iterations: int = 200
    gradinv_restarts: int = 2
    realistic_batches: tuple[int, ...] = (4, 8)
    realistic_steps: int = 5
    realistic_lr: float = 0.01
    realistic_attacks: tuple[str, ...] = ("fedavg", "fedavg_approx", "bn_prior", "bn_only")
    realistic_iterations: int = 150
    realistic_restarts: int = 1
    realistic_repeats: int = 1
    seed: int = 0


@dataclass
class GridRow:
    """One attacked image."""

    setting: str
    attack: str
    noise_b: float
    image: int
    mse: float
    psnr: float
    ssim: float
    success: bool
    label_accuracy: float
    time_s: float
    evaluations: int
    budget: str
    extras: dict[str, Any] = field(default_factory=dict)
