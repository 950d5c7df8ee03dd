"""Calibration: the audit's verdict on each battery case next to a much stronger reference attack on the same update.

For every case of `medpfl_app.experiments.battery.CASES` (synthetic phantoms, the job's default-initialised
network, the honest-but-curious server's view of the update after the site's defense) this runs

- the audit as deployed: the default `AuditPlan` (attack ladder on the whole update) with the case's time budget
  per update (`BatteryCase.plan`), scored as the site scores, and the verdict the risk policy gives;
- a reference: the same attack on the same whole update with ``--reference-factor``× the base iterations and
  ``--reference-restarts`` restarts in one stage (no screening probe, no escalation), stopped at
  ``--reference-limit`` seconds.

The audit must never say ``low`` where the reference reaches SSIM ≥ 0.9 (the check fails the run). With
``--record`` the table replaces the "Verdict calibration" section of ``benchmarks/RESULTS.md``.

    python benchmarks/bench_verdicts.py --record
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results_file import replace_section

from medpfl_app.audit.plan import AuditPlan
from medpfl_app.contracts.verdict import RiskLevel
from medpfl_app.experiments.battery import CASES, run_case

SECTION = "Verdict calibration"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--reference-factor", type=int, default=10, help="reference iterations / base iterations")
    parser.add_argument("--reference-restarts", type=int, default=4, help="reference restarts")
    parser.add_argument("--reference-limit", type=float, default=600.0, help="reference seconds per case")
    parser.add_argument("--only", default="", help="run only cases whose name contains this text")
    parser.add_argument("--record", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # as the audit worker runs
    rows = []
    violations = []
    started = time.time()
    for case in CASES:
        if args.only and args.only not in case.name:
            continue
        plan = replace(AuditPlan(), **dict(case.plan))
        audit = run_case(case, plan)
        reference_plan = replace(
            AuditPlan(),
            iterations=AuditPlan().iterations * args.reference_factor,
            restarts=args.reference_restarts,
            escalations=0,
            screening_iterations=0,
            time_limit_s=args.reference_limit,
        )
        reference = run_case(case, reference_plan)
        ref_ssim = reference.scores.get("ssim_max")
        if audit.verdict.level is RiskLevel.LOW and ref_ssim is not None and ref_ssim >= 0.9:
            violations.append(case.name)
        rows.append((case, audit, reference))
        print(
            f"{case.name}: audit {audit.verdict.level} (SSIM {_f(audit.scores.get('ssim_max'))}, "
            f"{audit.outcome.attack_budget.get('iterations')} it., {audit.outcome.attack_budget.get('time_spent_s')} s)"
            f" | reference SSIM {_f(ref_ssim)} ({reference.outcome.server_indicators.get('attack_convergence')}, "
            f"{reference.outcome.attack_budget.get('iterations')} it., "
            f"{reference.outcome.attack_budget.get('time_spent_s')} s)",
            flush=True,
        )
    body = _table(rows, args, time.time() - started, violations)
    print(body)
    if args.record:
        replace_section(HERE / "RESULTS.md", SECTION, body)
    if violations:
        print(f"FAILED: the audit said low where the reference reached SSIM >= 0.9: {violations}", file=sys.stderr)
        return 1
    return 0


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _table(rows, args, seconds: float, violations: list[str]) -> str:
    base = AuditPlan()
    lines = [
        "Command: `python benchmarks/bench_verdicts.py --record` "
        f"({platform.machine()}, {platform.python_version()}, 1 torch thread, {seconds / 60:.1f} min). "
        "Honest-but-curious server, update after the site's defense; job's default-initialised network; seeded "
        "32 px phantoms, 24 images per site; SSIM: Gaussian window σ = 1.5, 11 px, data range 1; success: SSIM ≥ 0.9.",
        "",
        f"Audit: default plan ({base.attack}, {base.iterations} iterations × {base.restarts} restart, "
        f"{base.escalations} escalations ×{base.escalation_factor} iterations / ×2 restarts) with each case's time "
        "budget per update (column). Reference: same attack on the same whole update, "
        f"{base.iterations * args.reference_factor} iterations × {args.reference_restarts} restarts, at most "
        f"{args.reference_limit:g} s.",
        "",
        "| case | audit budget s | audit verdict | audit best SSIM | audit ASR | audit stages / iterations / s "
        "| convergence (audit) "
        "| reference best SSIM | reference ASR | reference iterations / s | convergence (reference) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, audit, reference in rows:
        a_budget, r_budget = audit.outcome.attack_budget, reference.outcome.attack_budget
        lines.append(
            f"| {case.name} | {a_budget.get('time_budget_s')} | **{audit.verdict.level}** | {_f(audit.scores.get('ssim_max'))} | "
            f"{_f(audit.scores.get('attack_success_rate'))} | {a_budget.get('stages_run')} / "
            f"{a_budget.get('iterations')} / {a_budget.get('time_spent_s')} | "
            f"{audit.outcome.server_indicators.get('attack_convergence', 'not attacked')} | "
            f"{_f(reference.scores.get('ssim_max'))} | {_f(reference.scores.get('attack_success_rate'))} | "
            f"{r_budget.get('iterations')} / {r_budget.get('time_spent_s')} | "
            f"{reference.outcome.server_indicators.get('attack_convergence', 'not attacked')} |"
        )
    lines += [
        "",
        "Audit said `low` where the reference reached SSIM ≥ 0.9: "
        + (", ".join(violations) if violations else "never."),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
