"""``medpfl attack`` without ``--grid``: simulate one site update, attack it as the server, score and save it.

torch, MONAI and the attack engine are imported inside the functions so that ``medpfl --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from medpfl_app.attacks import AttackerKnowledge, UpdateKind
    from medpfl_app.attacks.result import AttackResult
    from medpfl_app.metrics.evaluation import LeakageReport

#: Training images in the demo data generated when no --datalist is given (valid --index: 0 … DEMO_IMAGES - batch).
DEMO_IMAGES = 64


def run_single(args: argparse.Namespace) -> int:
    """Attack the update of the batch ``--index … --index + --batch-size - 1``; write OUT/result.json and the PNG."""
    from medpfl_app.attacks import UpdateKind, build_attack
    from medpfl_app.attacks.recipes import parse_overrides
    from medpfl_app.experiments.grid import load_demo_images
    from medpfl_app.metrics import evaluate_reconstruction

    attack = build_attack(
        args.attack,
        **{
            "seed": args.seed,
            **{k: v for k, v in (("iterations", args.iterations), ("restarts", args.restarts)) if v is not None},
            **parse_overrides(args.overrides),  # --set wins over --seed / --iterations / --restarts
        },
    )
    check_image_range(args.datalist, index=args.index, batch_size=args.batch_size)
    images, labels = load_demo_images(
        args.datalist, count=args.index + args.batch_size, image_size=args.image_size, seed=args.seed
    )
    x, y = images[args.index :], labels[args.index :]
    kind = UpdateKind(args.update)
    knowledge = _server_view(args, x, y, kind)
    result = attack.run(knowledge, progress=True)
    report = evaluate_reconstruction(result.reconstructions, x, recovered_labels=result.labels, true_labels=y)
    metrics = {**report.to_dict(), "noise_b": args.noise_b}
    if knowledge.bn_running_stats and knowledge.bn_train_mode:
        metrics["bn_buffers_alone"] = _bn_buffers_alone(knowledge, x)
    json_path, png_path = result.save(args.out, originals=x, metrics=metrics)
    print(_summary_line(args, kind, knowledge, report))
    for line in optimisation_lines(result):
        print(line)
    print(f"wrote {json_path} and {png_path}")
    return 0


def _server_view(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, kind: UpdateKind) -> AttackerKnowledge:
    """What the server sees of the site's (Laplace-noised) update of ``x``, ``y`` on a seeded victim network."""
    import torch

    from medpfl_app.attacks import knowledge_from_update
    from medpfl_app.attacks.simulated_site import init_uniform_, simulate_site_update
    from medpfl_app.experiments.grid_inputs import noisy_update
    from medpfl_app.models import build_network

    torch.manual_seed(args.seed)
    model = build_network(args.network, in_channels=1, num_classes=args.num_classes, image_size=args.image_size)
    if args.network == "lenet_sigmoid":
        init_uniform_(model, seed=args.seed)  # the DLG / seed-paper initialisation
    site = simulate_site_update(
        model,
        x,
        y,
        kind=kind,
        local_steps=args.local_steps,
        learning_rate=args.local_lr,
        bn_train_mode=not args.bn_eval,
    )
    update = noisy_update(site.update, args.noise_b, seed=args.seed + 1000)
    return knowledge_from_update(
        model,
        site.global_weights,
        update,
        site.meta,
        image_shape=tuple(x.shape[1:]),
        kind=kind,
        labels=y if args.labels_known else None,
        bn_train_mode=not args.bn_eval,
    )


def _bn_buffers_alone(knowledge: AttackerKnowledge, originals: torch.Tensor) -> dict[str, Any]:
    """What the BatchNorm running statistics in the update reveal without any optimisation; printed in one line."""
    from medpfl_app.attacks.bn_report import bn_statistics_report

    bn: dict[str, Any] = bn_statistics_report(knowledge, originals=originals).to_dict()
    print(
        f"BN buffers alone reveal {bn['numbers_revealed']} batch statistics "
        f"({'exact' if bn['exact'] else 'mixed over local steps'}; first-layer mean rel. error "
        f"{bn['layers'][0]['mean_rel_error']:.2e})"
    )
    return bn


def _summary_line(
    args: argparse.Namespace, kind: UpdateKind, knowledge: AttackerKnowledge, report: LeakageReport
) -> str:
    s = report.summary
    return (
        f"{args.attack} on {args.network} ({kind.value}, B={args.batch_size}, S={knowledge.local_steps}, "
        f"Laplace b={args.noise_b:g}): PSNR {s['psnr_mean']:.2f} dB, SSIM {s['ssim_mean']:.3f} "
        f"(max {s['ssim_max']:.3f}), ASR {100 * s['asr']:.0f}%, label acc. {s.get('label_accuracy', float('nan')):.2f}"
    )


def check_image_range(datalist: Path | None, *, index: int, batch_size: int) -> None:
    """Refuse, before any image is loaded or generated, a slice ``index … index + batch_size - 1`` beyond the data.

    The data is the datalist's training images, or the `DEMO_IMAGES` of the generated demo data without one.

    Raises:
        MedPFLError: the slice does not fit (the message names the valid ``--index`` range), or the datalist is bad.
    """
    from medpfl_app.errors import MedPFLError

    if datalist is None:
        available, source = DEMO_IMAGES, "the generated demo data"
        fix = "pick an --index in range, or attack images of your own with --datalist"
    else:
        from medpfl_app.data.datalist import load_site_data

        available, source = len(load_site_data(datalist).training), f"the datalist {datalist}"
        fix = "pick an --index in range, or a datalist with more training images"
    if batch_size > available:
        raise MedPFLError(
            f"--batch-size {batch_size} exceeds the {available} training images of {source}",
            fix=f"use --batch-size 1 to {available}",
        )
    if index + batch_size > available:
        raise MedPFLError(
            f"--index {index} with --batch-size {batch_size} needs training "
            + (f"image {index}" if batch_size == 1 else f"images {index} to {index + batch_size - 1}")
            + f", but {source} has {available} (images 0 to {available - 1}): valid --index is 0 to "
            f"{available - batch_size}",
            fix=fix,
        )


def optimisation_lines(result: AttackResult) -> list[str]:
    """How the attack's optimisation went, in words: iterations, matching loss at start and end, convergence.

    The convergence status describes the optimisation only; whether images leaked is what the metrics measure.
    """
    from medpfl_app.attacks.convergence import Convergence

    lines = [
        f"optimisation: {result.iterations} iterations ({result.evaluations} evaluations, {result.wall_time_s:.1f} s, "
        f"stopped by {result.stop_reason}); matching loss {result.initial_loss:.3g} at start, "
        f"{result.matching_loss:.3g} at end"
    ]
    evidence = result.convergence
    if evidence is None:
        lines.append("convergence: not assessed")
        return lines
    lines.append(
        f"convergence: {evidence.status} ({evidence.status.meaning}; images moved {evidence.moved:.3g}, relative L2)"
    )
    if evidence.status is Convergence.NO_PROGRESS:
        lines.append(
            "the attack made no progress from its initialisation: its failure to reconstruct is not evidence that "
            "the update is safe; try another recipe (--attack, --set) or a larger budget"
        )
    return lines
