"""``medpfl study``: the privacy–utility frontier (defense × strength × batch × local steps × attack).

torch and the study engine are imported inside the handler so that ``medpfl --help`` stays fast. Bad input (an
unknown preset, an output path that is a file) is refused before any cell runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medpfl_app.cli.options import positive_int

PRESETS = ("small", "seed", "full")
#: ``--engine`` choices and the `medpfl_app.experiments.study.Engine` value each selects.
ENGINES = {"in-process": "in_process", "simulator": "simulator"}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``medpfl study`` to the top-level parser."""
    parser = subparsers.add_parser(
        "study",
        help="privacy-utility frontier: real in-process FedAvg per defense setting, audited as the server does",
        description=(
            "For each cell (network x defense x strength x site batch size x local steps x attack), train a "
            "federation of sites on seeded phantoms with FedAvg in this process, defend every site update with "
            "the same defense objects the NVFlare filters apply, audit the received updates with the server's "
            "audit (attack ladder, site scoring, risk verdict) and measure the global model's accuracy and AUC. "
            "Writes OUT/study.csv, OUT/study.json, OUT/frontier.svg and OUT/study.html; finished cells are kept "
            "in OUT/cells.jsonl, so a rerun skips them. With --engine simulator each cell is instead an NVFlare "
            "job run by the NVFlare simulator (see docs/study.md). Nothing is downloaded."
        ),
    )
    parser.add_argument(
        "--preset",
        default="small",
        help="small: 2 CPU cores, under 15 min; seed: the seed paper's LeNet/batch-1/Laplace grid with utility; "
        "full: the whole sweep (hours, for bigger machines)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; reused to resume)")
    parser.add_argument("--cells", type=positive_int, default=None, help="run only the first N cells (quick subset)")
    parser.add_argument(
        "--no-resume", action="store_true", help="recompute every cell instead of reusing OUT/cells.jsonl"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=1, help="torch CPU threads (1 suits small, shared CPUs)"
    )
    parser.add_argument(
        "--engine",
        choices=tuple(ENGINES),
        default="in-process",
        help="where each cell's federation runs. simulator: an exported NVFlare job per cell run by the NVFlare "
        "simulator (client filters, audit filter, site scorer, ledger), 1-2 min per cell; cells of one engine are "
        "never reused for the other. in-process is the default because it runs the same site training, defense "
        "objects and server audit code in this process, fast enough for the small preset on 2 cores in under 15 "
        "min",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from medpfl_app.errors import MedPFLError

    if args.preset not in PRESETS:
        raise MedPFLError(f"unknown study preset {args.preset!r}", fix=f"use --preset {' | '.join(PRESETS)}")
    if args.out.exists() and not args.out.is_dir():
        raise MedPFLError(f"--out {args.out} is a file, not a folder", fix="pass a folder path (it is created)")
    import dataclasses

    import torch

    from medpfl_app.experiments.study import Engine, preset, run_study

    torch.set_num_threads(args.threads)
    study = preset(args.preset)
    engine = Engine(ENGINES[args.engine])
    study = dataclasses.replace(study, run=dataclasses.replace(study.run, engine=engine))
    evaluate = None
    if engine is Engine.SIMULATOR:
        from medpfl_app.nvflare.study_cells import simulate_cell

        evaluate = simulate_cell
    outcome = run_study(
        study, args.out, resume=not args.no_resume, limit=args.cells, progress=not args.quiet, evaluate=evaluate
    )
    print(
        f"study {study.name} ({engine.value}): {len(outcome.results)} cells ({outcome.computed} computed, {outcome.reused} reused) "
        f"in {outcome.wall_s:.0f} s",
        file=sys.stderr,
    )
    for path in outcome.outputs:
        print(path)
    return 0
