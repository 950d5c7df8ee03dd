"""``medpfl attack``: run a gradient-inversion attack on images from a datalist, or the seed-paper grid.

torch, MONAI and the attack engine are imported inside the handlers so that ``medpfl --help`` stays fast. Bad input
(a NaN learning rate, ``--set top_layers=0``, an ``--index`` beyond the data) is refused before any image is loaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medpfl_app.cli.attack_grid import add_grid_options, run_grid
from medpfl_app.cli.attack_single import DEMO_IMAGES, run_single
from medpfl_app.cli.options import at_least, non_negative_float, non_negative_int, positive_float, positive_int, seed

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
    _add_data_options(parser)
    _add_target_options(parser)
    _add_site_options(parser)
    _add_recipe_options(parser)
    add_grid_options(parser)
    parser.set_defaults(func=_run)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    """Where the images come from and where the results go."""
    parser.add_argument("--out", type=Path, required=False, help="output folder (required unless --list)")
    parser.add_argument("--datalist", type=Path, default=None, help="site datalist JSON; default: fresh demo data")
    parser.add_argument("--list", action="store_true", help="list the registered attacks and exit")


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    """Which attack, on which victim network, against which images."""
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


def _add_site_options(parser: argparse.ArgumentParser) -> None:
    """What the simulated site trains and shares, and what the attacker is granted."""
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


def _add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """The attack's budget and recipe, and the seed of the whole run."""
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
    return run_grid(args) if args.grid else run_single(args)
