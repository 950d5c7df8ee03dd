"""``medpfl demo``: the whole pipeline on the embedded demo data (or the user's own images), in NVFlare's simulator."""

from __future__ import annotations

import argparse
from pathlib import Path

from medpfl_app.cli.options import positive_float, positive_int, seed

#: Named here, not imported: `medpfl --help` must not import the job catalog (NVFlare, torch).
_DEMO_JOB = "fedavg_audit"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the audited FedAvg demo on embedded phantom data (or your own images) in the NVFlare simulator",
        description=(
            "Create brain-MRI-like phantom data for N sites (or, with --data, use your own images), export the "
            "audited FedAvg job (site-1 trains one image per round: high risk), run it in NVFlare's simulator, and "
            "print per-round validation accuracy, the audit's leakage per site and round, and where every output "
            "(the audit ledger too) is. An existing, non-empty --out is refused unless --force. With --data, every "
            "image is checked before the simulator starts, and no reconstructions or thumbnails are stored (they "
            "would be patient data)."
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("medpfl_runs/demo"),
        help="run folder for the demo's data/, jobs/ and simulation/",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the data/, jobs/ and simulation/ folders of an earlier run in --out "
        "(default: off, an existing non-empty --out is refused)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PATH",
        help="your own images instead of the phantoms: a folder with one sub-folder per site (each a "
        "class-per-folder tree or holding datalist.json), or one datalist JSON / class-per-folder "
        "tree split across --sites sites (default: none, the generated phantoms)",
    )
    parser.add_argument(
        "--sites",
        type=positive_int,
        default=None,
        help="number of sites (default: 3, or one per site folder of --data)",
    )
    parser.add_argument("--rounds", type=positive_int, default=5, help="FedAvg rounds")
    parser.add_argument(
        "--seed", type=seed, default=0, help="seed of the phantoms, the model and of splitting --data across sites"
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=1800.0,
        help="hard deadline of the simulation in seconds (a finite number > 0)",
    )
    parser.add_argument(
        "--job",
        default=None,
        help=f"catalog job to run (default: {_DEMO_JOB}; e.g. fedavg_audit_client_dp, fedavg_small_cnn)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.jobs.demo import DEMO_JOB, check_run_folder, run_demo

    check_run_folder(args.out, force=args.force, data=args.data)
    outcome = run_demo(
        args.out,
        num_sites=args.sites,
        num_rounds=args.rounds,
        seed=args.seed,
        timeout_s=args.timeout,
        job=args.job or DEMO_JOB,
        data=args.data,
        force=args.force,
    )
    simulation = outcome.simulation
    print(format_round_table(simulation.round_metrics))
    if outcome.network == "lenet_sigmoid":
        print(
            "note: this job trains the seed paper's sigmoid LeNet at 32 px, the literature's worst case for leakage,\n"
            "      not a model that learns these images in a few rounds (accuracy stays near chance). For a model\n"
            "      that does, run `medpfl demo --job fedavg_small_cnn`."
        )
    ledger = outcome.audit_ledger
    report = None
    if ledger is not None:
        from medpfl_app.reports import build_report
        from medpfl_app.reports.terminal import summary_text

        # The server already wrote the report at the end of the run; re-rendering keeps the printed summary and
        # the HTML identical even if that step failed.
        report = build_report(simulation.server_run_dir)
        print()
        print(summary_text(report))
    print(f"\nsimulated in {simulation.wall_seconds:.0f} s")
    print(f"demo data:     {outcome.data_root}")
    for site, source in (outcome.data_sources or {}).items():
        print(f"  {site} trained on {source}")
    if outcome.data_sources:
        print("  (your data: no reconstructions or thumbnails were stored)")
    print(f"job folder:    {outcome.job_dir}")
    print(f"global model:  {simulation.global_model}")
    print(f"server run:    {simulation.server_run_dir}")
    print(f"console log:   {simulation.log_file}")
    if report is not None:
        print(f"audit ledger:  {report.paths.ledger}")
        print(f"audit report:  {report.paths.html}")
    return 0


def format_round_table(records: tuple[dict, ...] | list[dict]) -> str:
    """One line per round with the sites' mean validation metrics of the global model they received.

    The metrics file is written from what sites report, so every line is made terminal-safe
    (`medpfl_app.reports.fields.printable`).
    """
    from medpfl_app.text import printable

    lines = [
        "global model validated by the sites at the start of each round (mean over sites)",
        "round  accuracy  auroc   val_loss  sites",
    ]
    for record in records:
        metrics = {m.get("name"): m.get("value") for m in record.get("aggregated_metrics", []) if isinstance(m, dict)}
        lines.append(
            f"{record.get('round', '?'):>5}  {_fmt(metrics.get('accuracy'))}  {_fmt(metrics.get('auroc'))}  "
            f"{_fmt(metrics.get('val_loss'))}  {len(record.get('sites', []))}"
        )
    return "\n".join(printable(line) for line in lines)


def _fmt(value: object) -> str:
    return f"{value:8.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{'-':>8}"
