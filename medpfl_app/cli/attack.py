"""``medpfl attack``: run a gradient-inversion attack on images from a datalist, or the seed-paper grid.

torch, MONAI and the attack engine are imported inside the handlers so that ``medpfl --help`` stays fast. Bad input
(a NaN learning rate, ``--set top_layers=0``, an ``--index`` beyond the data) is refused before any image is loaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from medpfl_app.cli.options import at_least, non_negative_float, non_negative_int, positive_float, positive_int, seed

if TYPE_CHECKING:
    from medpfl_app.attacks.result import AttackResult


#: Training images in the demo data generated when no --datalist is given (valid --index: 0 … DEMO_IMAGES - batch).
DEMO_IMAGES = 64
#: The smallest images the reconstruction can be scored on (SSIM's 11 px Gaussian window).
MIN_IMAGE_SIZE = 11


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``medpfl attack`` to the top-level parser."""
    parser = subparsers.add_parser(
        "attack",
        help="reconstruct training images from a simulated site update (gradient inversion)",
        description=(
            "Simulate one site update on images from a datalist (or the generated demo data), attack it as an "
            "honest-but-curious server and write OUT/result.json (metrics, config, threat model) and "
            "OUT/reconstructions.png (originals above reconstructions). With --grid, run the seed paper's "
            "attacks x Laplace-noise grid plus realistic FedAvg/BatchNorm settings and write OUT/grid.md and "
            "OUT/grid.json. Nothing is downloaded."
        ),
    )
    parser.add_argument("--out", type=Path, required=False, help="output folder (required unless --list)")
    parser.add_argument("--datalist", type=Path, default=None, help="site datalist JSON; default: fresh demo data")
    parser.add_argument("--list", action="store_true", help="list the registered attacks and exit")
    parser.add_argument("--attack", default="idlg", help="attack name (see --list)")
    parser.add_argument("--network", default="lenet_sigmoid", help="victim network (lenet_sigmoid, small_cnn, ...)")
    parser.add_argument(
        "--image-size",
        type=at_least(MIN_IMAGE_SIZE),
        default=32,
        help=f"side length the images are resized to (at least {MIN_IMAGE_SIZE}: SSIM's Gaussian window)",
    )
    parser.add_argument("--num-classes", type=at_least(2), default=4, help="classes of the victim network")
    parser.add_argument(
        "--index",
        type=non_negative_int,
        default=0,
        help="first training image to attack: 0 to N - batch size for a datalist of N training images, 0 to "
        f"{DEMO_IMAGES} - batch size for the generated demo data",
    )
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images in the site's batch")
    parser.add_argument(
        "--update", choices=("gradient", "weight_diff"), default="gradient", help="what the site shares"
    )
    parser.add_argument(
        "--local-steps", type=positive_int, default=1, help="local SGD steps behind a weight_diff update"
    )
    parser.add_argument("--local-lr", type=positive_float, default=0.01, help="the site's local learning rate")
    parser.add_argument(
        "--noise-b", type=non_negative_float, default=0.0, help="Laplace noise scale b added to the update (0: none)"
    )
    parser.add_argument("--labels-known", action="store_true", help="grant the attacker the true labels")
    parser.add_argument("--bn-eval", action="store_true", help="the site trains with BatchNorm in eval mode")
    parser.add_argument(
        "--iterations", type=positive_int, default=None, help="attack iterations (default: the recipe's)"
    )
    parser.add_argument("--restarts", type=positive_int, default=None, help="attack restarts (default: the recipe's)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one field of the attack's recipe, e.g. --set init=randn --set line_search=strong_wolfe "
        "(fields: see MatchingConfig; repeatable; --set seed=N seeds only the attack's initialisation, --seed "
        "everything)",
    )
    parser.add_argument("--seed", type=seed, default=0, help="seed of data, victim weights, noise and attack")
    grid = parser.add_argument_group("grid (--grid)")
    grid.add_argument("--grid", action="store_true", help="run the seed-paper grid instead of one attack")
    grid.add_argument("--seed-images", type=positive_int, default=20, help="images per un-noised seed-setting cell")
    grid.add_argument("--noised-images", type=positive_int, default=2, help="images per Laplace-noise cell")
    grid.add_argument(
        "--realistic-iterations", type=positive_int, default=150, help="Adam iterations in realistic cells"
    )
    grid.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (1 suits small, shared CPUs)")
    grid.add_argument(
        "--quick", action="store_true", help="a tiny grid with toy budgets (smoke test, well under a minute)"
    )
    grid.add_argument(
        "--paper-budget",
        action="store_true",
        help=(
            "the seed code's budgets: L-BFGS 300 steps x 20 updates (early stop at loss 1e-6), GradInv 1000 it x 4 "
            "restarts, 5 images per noise cell at 50 L-BFGS steps, realistic cells 400 it x 2 restarts "
            "(~15 min on an idle 2-core CPU)"
        ),
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from medpfl_app.errors import MedPFLError

    if args.list:
        from medpfl_app.attacks import ATTACKS

        for name in ATTACKS.names():
            print(f"{name:14s} {ATTACKS.get(name).summary}")
        return 0
    if args.out is None:
        raise MedPFLError("--out is required", fix="pass --out FOLDER for the results")
    if args.out.exists() and not args.out.is_dir():
        raise MedPFLError(
            f"--out {args.out} is an existing file, not a folder (it is never overwritten)",
            fix="pass --out a new or existing folder for the results",
        )
    if args.grid and args.overrides:
        raise MedPFLError(
            "--set changes one attack's recipe and does not apply to --grid (its budgets are the grid's)",
            fix="drop --set, or run a single attack without --grid",
        )
    return _run_grid(args) if args.grid else _run_single(args)


def _run_grid(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from medpfl_app.experiments.grid import GridConfig, timed_grid

    torch.set_num_threads(max(1, args.threads))

    config = GridConfig(
        image_size=args.image_size,
        seed_images=args.seed_images,
        noised_images=args.noised_images,
        realistic_iterations=args.realistic_iterations,
        seed=args.seed,
    )
    if args.paper_budget:
        config = dataclasses.replace(
            config,
            lbfgs_steps=300,
            gradinv_iterations=1000,
            gradinv_restarts=4,
            noised_images=5,
            dlg_images=5,
            noised_lbfgs_steps=50,
            realistic_iterations=400,
            realistic_restarts=2,
        )
    if args.quick:
        config = dataclasses.replace(
            config,
            seed_images=2,
            noised_images=1,
            dlg_images=1,
            noise_scales=(0.01,),
            lbfgs_steps=10,
            noised_lbfgs_steps=2,
            gradinv_iterations=20,
            gradinv_restarts=2,
            realistic_batches=(4,),
            realistic_iterations=5,
            realistic_restarts=1,
        )
    table = timed_grid(config, args.out, datalist=args.datalist, progress=True)
    print(table.read_text())
    print(f"grid written to {table} and {table.with_suffix('.json')}")
    return 0


def _run_single(args: argparse.Namespace) -> int:
    import torch

    from medpfl_app.attacks import UpdateKind, build_attack, knowledge_from_update
    from medpfl_app.attacks.recipes import parse_overrides
    from medpfl_app.attacks.site import init_uniform_, simulate_site_update
    from medpfl_app.experiments.grid import _noisy, load_demo_images
    from medpfl_app.metrics import evaluate_reconstruction
    from medpfl_app.models import build_network

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
    torch.manual_seed(args.seed)
    model = build_network(args.network, in_channels=1, num_classes=args.num_classes, image_size=args.image_size)
    if args.network == "lenet_sigmoid":
        init_uniform_(model, seed=args.seed)  # the DLG / seed-paper initialisation
    kind = UpdateKind(args.update)
    site = simulate_site_update(
        model,
        x,
        y,
        kind=kind,
        local_steps=args.local_steps,
        learning_rate=args.local_lr,
        bn_train_mode=not args.bn_eval,
    )
    update = _noisy(site.update, args.noise_b, seed=args.seed + 1000)
    knowledge = knowledge_from_update(
        model,
        site.global_weights,
        update,
        site.meta,
        image_shape=tuple(x.shape[1:]),
        kind=kind,
        labels=y if args.labels_known else None,
        bn_train_mode=not args.bn_eval,
    )
    result = attack.run(knowledge, progress=True)
    report = evaluate_reconstruction(result.reconstructions, x, recovered_labels=result.labels, true_labels=y)
    metrics = {**report.to_dict(), "noise_b": args.noise_b}
    if knowledge.bn_running_stats and knowledge.bn_train_mode:
        from medpfl_app.attacks.bn_report import bn_statistics_report

        bn = bn_statistics_report(knowledge, originals=x).to_dict()
        metrics["bn_buffers_alone"] = bn
        print(
            f"BN buffers alone reveal {bn['numbers_revealed']} batch statistics "
            f"({'exact' if bn['exact'] else 'mixed over local steps'}; first-layer mean rel. error "
            f"{bn['layers'][0]['mean_rel_error']:.2e})"
        )
    json_path, png_path = result.save(args.out, originals=x, metrics=metrics)
    s = report.summary
    print(
        f"{args.attack} on {args.network} ({kind.value}, B={args.batch_size}, S={knowledge.local_steps}, "
        f"Laplace b={args.noise_b:g}): PSNR {s['psnr_mean']:.2f} dB, SSIM {s['ssim_mean']:.3f} "
        f"(max {s['ssim_max']:.3f}), ASR {100 * s['asr']:.0f}%, label acc. {s.get('label_accuracy', float('nan')):.2f}"
    )
    for line in optimisation_lines(result):
        print(line)
    print(f"wrote {json_path} and {png_path}")
    return 0


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
        from medpfl_app.data import load_site_data

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
