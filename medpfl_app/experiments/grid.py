"""The seed paper's experiment, done right: attacks × defenses × settings on demo data, per-image metrics.

Seed setting (Das et al., BIBM 2023): untrained sigmoid LeNet (U(−0.5, 0.5) weights, fresh per image), 32×32,
batch 1, one gradient, Laplace noise of scale b on the gradient. Realistic settings: the BatchNorm ``small_cnn``
(BN in train mode, buffers shared), batches of 4 and 8, 5 local SGD steps, a FedAvg weight difference. Labels are
never given to the attacker; they are recovered. Every row records the attack, its budget and the threat model.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from medpfl_app.attacks.knowledge import UpdateKind, knowledge_from_update
from medpfl_app.attacks.recipes import build_attack
from medpfl_app.attacks.result import write_atomic
from medpfl_app.attacks.site import init_uniform_, simulate_site_update
from medpfl_app.errors import MedPFLError
from medpfl_app.metrics import evaluate_reconstruction


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


def load_demo_images(
    datalist: Path | None, *, count: int, image_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images ``(N, 1, S, S)`` in [0, 1] and labels from a datalist, or from freshly generated demo data."""
    from medpfl_app.data import DataConfig, build_transforms, generate_demo_dataset, load_site_data

    with tempfile.TemporaryDirectory() as tmp:
        if datalist is None:
            per_site = max(count, 8)
            demo = generate_demo_dataset(
                Path(tmp) / "demo", num_sites=1, train_per_site=per_site, val_per_site=2, seed=seed
            )
            datalist = Path(next(iter(demo.site_datalists.values())))
        items = load_site_data(datalist).training
        if len(items) < count:
            raise MedPFLError(
                f"the datalist {datalist} has {len(items)} training images, the grid needs {count}",
                fix="use a larger datalist or fewer images (--seed-images / --noised-images)",
            )
        transform = build_transforms(DataConfig(image_size=image_size), train=False)
        loaded = [transform(dict(item)) for item in items[:count]]
    images = torch.stack([torch.as_tensor(x["image"]).float() for x in loaded]).clamp(0, 1)
    labels = torch.tensor([int(torch.as_tensor(x["label"])) for x in loaded])
    return images, labels


def _noisy(update: dict[str, torch.Tensor], scale: float, seed: int) -> dict[str, torch.Tensor]:
    if scale <= 0:
        return update
    from medpfl_app.defenses.noise import laplace_noise

    noised, _record = laplace_noise({k: v.numpy() for k, v in update.items()}, scale, seed=seed)
    return {k: torch.as_tensor(v) for k, v in noised.items()}


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


def run_grid(
    config: GridConfig,
    *,
    datalist: Path | None = None,
    progress: bool = True,
    on_row: Callable[[GridRow], None] | None = None,
) -> list[GridRow]:
    """Run every cell of the grid and return one row per attacked image."""
    from tqdm import tqdm

    from medpfl_app.models import build_network

    size = config.image_size
    largest = max(config.realistic_batches, default=1) * config.realistic_repeats
    images, labels = load_demo_images(
        datalist, count=max(config.seed_images, largest), image_size=size, seed=config.seed
    )
    shape = (1, size, size)
    rows: list[GridRow] = []
    scales = (0.0, *config.noise_scales)
    jobs: list[tuple[str, float, int]] = []
    for b in scales:
        for attack in config.seed_attacks:
            n = config.seed_images if b == 0 else config.noised_images
            n = min(n, config.dlg_images) if attack == "dlg" else n
            jobs += [(attack, b, i) for i in range(n)]
    jobs += [("random_init", 0.0, i) for i in range(config.seed_images)]
    realistic_jobs = [
        (batch, r, a)
        for batch in config.realistic_batches
        for r in range(config.realistic_repeats)
        for a in config.realistic_attacks
    ]
    bar = tqdm(total=len(jobs) + len(realistic_jobs), desc="attack grid", unit="run", disable=not progress)

    def emit(row: GridRow) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for attack, b, i in jobs:
        x, y = images[i : i + 1], labels[i : i + 1]
        if attack == "random_init":
            guess = torch.rand(x.shape, generator=torch.Generator().manual_seed(config.seed + i))
            report = evaluate_reconstruction(guess, x)
            emit(_row("seed", attack, b, i, report, None, "U(0,1) image, no attack", 0))
            bar.update(1)
            continue
        torch.manual_seed(config.seed + i)
        model = init_uniform_(
            build_network("lenet_sigmoid", in_channels=1, num_classes=4, image_size=size), seed=config.seed + i
        )
        site = simulate_site_update(model, x, y, kind=UpdateKind.GRADIENT)
        update = _noisy(site.update, b, seed=config.seed + 1000 + i)
        knowledge = knowledge_from_update(
            model, site.global_weights, update, site.meta, image_shape=shape, kind=UpdateKind.GRADIENT
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
        emit(_row("seed", attack, b, i, report, result, budget, 0))
        bar.update(1)

    for batch, repeat, attack in realistic_jobs:
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
        knowledge = knowledge_from_update(model, site.global_weights, site.update, site.meta, image_shape=shape)
        result = build_attack(
            attack,
            iterations=config.realistic_iterations,
            restarts=config.realistic_restarts,
            seed=config.seed + repeat,
        ).run(knowledge)
        report = evaluate_reconstruction(result.reconstructions, x, recovered_labels=result.labels, true_labels=y)
        budget = f"Adam {config.realistic_iterations} it x {config.realistic_restarts} restarts"
        setting = f"B={batch}, S={config.realistic_steps}, BN train"
        for i in range(batch):
            row = _row(setting, attack, 0.0, start + i, report, result, budget, i)
            row.time_s = result.wall_time_s / batch  # one run reconstructs the whole batch
            emit(row)
        bar.update(1)
    bar.close()
    return rows


def summarize(rows: Sequence[GridRow]) -> list[dict[str, Any]]:
    """Mean ± std per (setting, attack, b) cell."""
    cells: dict[tuple[str, str, float], list[GridRow]] = {}
    for row in rows:
        cells.setdefault((row.setting, row.attack, row.noise_b), []).append(row)

    def stats(values: list[float]) -> tuple[float, float]:
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return float("nan"), float("nan")
        return statistics.fmean(finite), statistics.pstdev(finite) if len(finite) > 1 else 0.0

    out = []
    for (setting, attack, b), members in cells.items():
        entry: dict[str, Any] = {
            "setting": setting,
            "attack": attack,
            "noise_b": b,
            "n": len(members),
            "budget": members[0].budget,
        }
        for name in ("mse", "psnr", "ssim", "label_accuracy", "time_s"):
            entry[name] = stats([getattr(m, name) for m in members])
        entry["asr"] = sum(m.success for m in members) / len(members)
        entry["ssim_max"] = max(m.ssim for m in members)
        out.append(entry)
    return out


def _mean_std(entry: dict[str, Any], name: str, fmt: str) -> str:
    mean, std = entry[name]
    return "n/a" if math.isnan(mean) else f"{mean:{fmt}} ± {std:{fmt}}"


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table (mean ± std over images)."""
    lines = [
        "| setting | attack | Laplace b | n | MSE | PSNR (dB) | SSIM | max SSIM | ASR | label acc. | time/img (s) | budget |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        pm = functools.partial(_mean_std, e)

        lines.append(
            f"| {e['setting']} | {e['attack']} | {e['noise_b']:g} | {e['n']} | {pm('mse', '.4f')} | {pm('psnr', '.1f')} "
            f"| {pm('ssim', '.3f')} | {e['ssim_max']:.3f} | {100 * e['asr']:.0f}% | {pm('label_accuracy', '.2f')} "
            f"| {pm('time_s', '.1f')} | {e['budget']} |"
        )
    return "\n".join(lines)


def write_grid(out_dir: Path, config: GridConfig, rows: Sequence[GridRow], wall_s: float) -> tuple[Path, Path]:
    """Write ``grid.json`` (config, rows, summary) and ``grid.md`` atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    payload = {
        "config": asdict(config),
        "threat_model": "honest-but-curious server; knows architecture, weights, update, B, S, lr; labels recovered",
        "wall_time_s": wall_s,
        "torch_threads": torch.get_num_threads(),
        "rows": [asdict(r) for r in rows],
        "summary": summary,
    }
    json_path, md_path = out_dir / "grid.json", out_dir / "grid.md"
    write_atomic(json_path, json.dumps(payload, indent=1).encode())
    write_atomic(md_path, (markdown_table(summary) + f"\n\nTotal wall time: {wall_s:.0f} s\n").encode())
    return json_path, md_path


def timed_grid(config: GridConfig, out_dir: Path, *, datalist: Path | None = None, progress: bool = True) -> Path:
    """Run the grid and write its outputs; returns the Markdown table's path.

    Rows are also appended to ``rows.jsonl`` as they finish, so an interrupted run keeps what it measured.
    """
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    stream = out_dir / "rows.jsonl"
    stream.write_text("")

    def append(row: GridRow) -> None:
        with stream.open("a") as handle:
            handle.write(json.dumps(asdict(row)) + "\n")

    rows = run_grid(config, datalist=datalist, progress=progress, on_row=append)
    return write_grid(out_dir, config, rows, time.perf_counter() - started)[1]
