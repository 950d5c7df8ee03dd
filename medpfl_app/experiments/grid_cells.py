"""One cell of the attack grid: attack one image in the seed setting, or one site batch in a realistic setting."""

from __future__ import annotations

from typing import Any

import torch

from medpfl_app.attacks.knowledge import UpdateKind, knowledge_from_update
from medpfl_app.attacks.recipes import build_attack
from medpfl_app.attacks.simulated_site import init_uniform_, simulate_site_update
from medpfl_app.experiments.grid_config import GridConfig, GridRow
from medpfl_app.experiments.grid_inputs import noisy_update
from medpfl_app.metrics import evaluate_reconstruction


def _row(setting: str, attack: str, b: float, index: int, report: Any, result: Any, budget: str, i: int) -> GridRow:
    return GridRow(
        setting=setting,
        attack=attack,
        noise_b=b,
        image=index,
        mse=report.mse[i],
        psnr=report.psnr[i],
        ssim=report.ssim[i],
        success=report.ssim[i] >= report.ssim_threshold,
        label_accuracy=report.label_accuracy if report.label_accuracy is not None else float("nan"),
        time_s=result.wall_time_s if result is not None else 0.0,
        evaluations=result.evaluations if result is not None else 0,
        budget=budget,
    )


def seed_cell_row(
    config: GridConfig, attack: str, b: float, i: int, images: torch.Tensor, labels: torch.Tensor
) -> GridRow:
    """Image ``i`` in the seed setting: a fresh U(−0.5, 0.5) sigmoid LeNet, one gradient, Laplace noise ``b``.

    ``random_init`` scores a U(0, 1) image without any attack (the floor every attack must beat).
    """
    from medpfl_app.models import build_network

    x, y = images[i : i + 1], labels[i : i + 1]
    if attack == "random_init":
        guess = torch.rand(x.shape, generator=torch.Generator().manual_seed(config.seed + i))
        report = evaluate_reconstruction(guess, x)
        return _row("seed", attack, b, i, report, None, "U(0,1) image, no attack", 0)
    size = config.image_size
    torch.manual_seed(config.seed + i)
    model = init_uniform_(
        build_network("lenet_sigmoid", in_channels=1, num_classes=4, image_size=size), seed=config.seed + i
    )
    site = simulate_site_update(model, x, y, kind=UpdateKind.GRADIENT)
    update = noisy_update(site.update, b, seed=config.seed + 1000 + i)
    knowledge = knowledge_from_update(
        model, site.global_weights, update, site.meta, image_shape=(1, size, size), kind=UpdateKind.GRADIENT
    )
    if attack == "gradinv":
        options: dict[str, Any] = {"iterations": config.gradinv_iterations, "restarts": config.gradinv_restarts}
        budget = f"Adam {config.gradinv_iterations} it x {config.gradinv_restarts} restarts"
    else:
        steps = config.lbfgs_steps if b == 0 else config.noised_lbfgs_steps
        options = {"iterations": steps, "lbfgs_max_iter": config.lbfgs_max_iter}
        budget = f"L-BFGS {steps} steps x {config.lbfgs_max_iter}"
    result = build_attack(attack, seed=config.seed + i, **options).run(knowledge)
    report = evaluate_reconstruction(result.reconstructions, x, recovered_labels=result.labels, true_labels=y)
    return _row("seed", attack, b, i, report, result, budget, 0)


def realistic_cell_rows(
    config: GridConfig, batch: int, repeat: int, attack: str, images: torch.Tensor, labels: torch.Tensor
) -> list[GridRow]:
    """One site batch of ``batch`` images: BatchNorm ``small_cnn`` in train mode, several local SGD steps, FedAvg."""
    from medpfl_app.models import build_network

    size = config.image_size
    start = repeat * batch
    x, y = images[start : start + batch], labels[start : start + batch]
    torch.manual_seed(config.seed + 500 + repeat)
    model = build_network("small_cnn", in_channels=1, num_classes=4, image_size=size)
    site = simulate_site_update(
        model,
        x,
        y,
        kind=UpdateKind.WEIGHT_DIFF,
        local_steps=config.realistic_steps,
        learning_rate=config.realistic_lr,
    )
    knowledge = knowledge_from_update(model, site.global_weights, site.update, site.meta, image_shape=(1, size, size))
    result = build_attack(
        attack,
        iterations=config.realistic_iterations,
        restarts=config.realistic_restarts,
        seed=config.seed + repeat,
    ).run(knowledge)
    report = evaluate_reconstruction(result.reconstructions, x, recovered_labels=result.labels, true_labels=y)
    budget = f"Adam {config.realistic_iterations} it x {config.realistic_restarts} restarts"
    setting = f"B={batch}, S={config.realistic_steps}, BN train"
    rows = []
    for i in range(batch):
        row = _row(setting, attack, 0.0, start + i, report, result, budget, i)
        row.time_s = result.wall_time_s / batch  # one run reconstructs the whole batch
        rows.append(row)
    return rows
