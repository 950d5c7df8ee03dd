"""``medpfl attack --grid``: the seed paper's attacks x Laplace-noise grid plus realistic FedAvg/BatchNorm cells.

torch and the grid are imported inside `run_grid` so that ``medpfl --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from medpfl_app.cli.options import positive_int

#: ``--paper-budget``: the seed code's budgets (~15 min on an idle 2-core CPU).
PAPER_BUDGET: dict[str, Any] = {
    "lbfgs_steps": 300,
    "gradinv_iterations": 1000,
    "gradinv_restarts": 4,
    "noised_images": 5,
    "dlg_images": 5,
    "noised_lbfgs_steps": 50,
    "realistic_iterations": 400,
    "realistic_restarts": 2,
}
#: ``--quick``: a tiny grid with toy budgets (a smoke test); applied after `PAPER_BUDGET`, so it wins.
QUICK_BUDGET: dict[str, Any] = {
    "seed_images": 2,
    "noised_images": 1,
    "dlg_images": 1,
    "noise_scales": (0.01,),
    "lbfgs_steps": 10,
    "noised_lbfgs_steps": 2,
    "gradinv_iterations": 20,
    "gradinv_restarts": 2,
    "realistic_batches": (4,),
    "realistic_iterations": 5,
    "realistic_restarts": 1,
}


def add_grid_options(parser: argparse.ArgumentParser) -> None:
    """The ``grid (--grid)`` option group of ``medpfl attack``."""
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


def run_grid(args: argparse.Namespace) -> int:
    """Run the grid configured by ``args`` and print its table."""
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
        config = dataclasses.replace(config, **PAPER_BUDGET)
    if args.quick:
        config = dataclasses.replace(config, **QUICK_BUDGET)
    table = timed_grid(config, args.out, datalist=args.datalist, progress=True)
    print(table.read_text())
    print(f"grid written to {table} and {table.with_suffix('.json')}")
    return 0
