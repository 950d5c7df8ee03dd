"""Benchmark: the audited demo job with the server-side audit on versus off, same machine, same run.

Both jobs are ``fedavg_audit`` (sigmoid LeNet, 32 px, SGD, site-1 one image per round, 3 sites); "off" drops the
audit filter, the global-weights cache and the site scorer. Runs alternate (on, off, on, off, ...) so machine load
affects both alike. Reports, as medians:

- total wall time of the simulator run (includes the end-of-run wait for the last audits),
- training time (first round start to "Finished FedAvg" in the server log) and per round,
- the audit's throughput: audits per minute of the attack thread's busy time, and per minute of training,
- peak resident memory of the simulator process tree (sampled every 0.2 s), on and off,
- the audit filter's ``process()`` time on the job's update size while the worker is busy (in this process).

    python benchmarks/bench_audit.py --rounds 3 --repeats 2 --record
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_fedavg import TreeMemorySampler
from results_file import replace_section

from medpfl_app.audit.ledger import find_ledgers, read_ledger
from medpfl_app.data import generate_demo_dataset
from medpfl_app.nvflare.jobs import JOB_CATALOG
from medpfl_app.nvflare.jobs.builder import export_job
from medpfl_app.nvflare.jobs.simulate import run_simulation
from medpfl_app.nvflare.jobs.spec import RECEIVED_UPDATE_RECORDER

SECTION = "Server-side audit: cost of the audit (verdict ladder, isolated worker process)"
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def round_boundaries(log_file: Path) -> list[datetime]:
    """When each round ended: the next round's start, and "Finished FedAvg." for the last one (log time)."""
    last_stamp = None
    starts: list[datetime] = []
    finish = None
    for line in log_file.read_text(errors="replace").splitlines():
        match = _STAMP.match(line)
        if match:
            last_stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        elif "started." in line and "Round " in line and last_stamp is not None:
            starts.append(last_stamp)
        elif "Finished FedAvg." in line:
            finish = last_stamp
    return starts[1:] + ([finish] if finish else [])


def backlog_per_round(records: list[dict], boundaries: list[datetime]) -> list[int]:
    """Updates of rounds <= r whose ledger record was written after round r ended (the audit's backlog then).

    Ledger times are UTC to the second; the console log's are the machine's local time (UTC on the benchmark
    machine), so a record written within the same second counts as on time.
    """
    backlog = []
    for round_number, boundary in enumerate(boundaries):
        written = [
            datetime.strptime(r["time"], "%Y-%m-%dT%H:%M:%SZ")
            for r in records
            if isinstance(r.get("round"), int) and r["round"] <= round_number and r.get("time")
        ]
        backlog.append(sum(1 for stamp in written if stamp > boundary.replace(microsecond=0)))
    return backlog


def training_seconds(log_file: Path) -> float | None:
    """Seconds from the server's "Round 0 started." to "Finished FedAvg." in the simulator console log."""
    last_stamp = None
    start = end = None
    for line in log_file.read_text(errors="replace").splitlines():
        match = _STAMP.match(line)
        if match:
            last_stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        elif "Round 0 started." in line and start is None:
            start = last_stamp
        elif "Finished FedAvg." in line:
            end = last_stamp
    return (end - start).total_seconds() if start and end else None


def filter_process_times(repeats: int = 200) -> list[float]:
    """``AuditFilter.process`` seconds per call on a LeNet-32 sized update, with the attack thread blocked."""
    import numpy as np
    import torch
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.workspace import Workspace
    from nvflare.app_common.app_constant import AppConstants

    from medpfl_app.audit import worker as audit_worker
    from medpfl_app.models.global_model import build_seeded_network
    from medpfl_app.nvflare.server.audit_filter import AuditFilter

    release = threading.Event()
    audit_worker.audit_update = lambda item, plan: release.wait(60)  # busy worker: the queue fills up
    net = build_seeded_network("lenet_sigmoid", in_channels=1, num_classes=4, image_size=32, seed=0, dp_sgd=False)
    update = {f"net.{k}": v.detach().numpy().copy() for k, v in net.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for folder in ("startup", "local"):
            (root / folder).mkdir()

        class _Engine:
            def get_workspace(self):
                return Workspace(root_dir=str(root), site_name="server")

        ctx = FLContext()
        ctx.set_prop(ReservedKey.RUN_NUM, "bench", private=False, sticky=True)
        ctx.set_prop(ReservedKey.ENGINE, _Engine(), private=True, sticky=True)
        peer = FLContext()
        peer.set_prop(ReservedKey.IDENTITY_NAME, "site-1", private=False, sticky=True)
        ctx.set_peer_context(peer)
        audit = AuditFilter(max_queue=8)
        audit.handle_event(EventType.START_RUN, ctx)
        meta = {"network": "lenet_sigmoid", "image_size": 32, "in_channels": 1, "num_classes": 4}
        times = []
        for round_ in range(repeats):
            shareable = DXO(DataKind.WEIGHT_DIFF, dict(update), dict(meta)).to_shareable()
            shareable.set_header(AppConstants.CURRENT_ROUND, round_)
            started = time.perf_counter()
            audit.process(shareable, ctx)
            times.append(time.perf_counter() - started)
        release.set()
        audit._worker.drain(60)
    del np, torch
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--record", action="store_true", help=f"write the '{SECTION}' section of RESULTS.md")
    args = parser.parse_args()

    audited = replace(JOB_CATALOG["fedavg_audit"], num_rounds=args.rounds, min_clients=args.sites)
    plain = replace(
        audited,
        name="fedavg_audit_off",
        server_result_filters=(RECEIVED_UPDATE_RECORDER,),
        server_data_filters=(),
        client_components=(),
        end_run_readiness_timeout=None,
        client_end_run_readiness_timeout=None,
    )
    results: dict[str, dict[str, list[float]]] = {"on": {}, "off": {}}
    audits: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="medpfl-bench-audit-") as tmp:
        root = Path(tmp)
        data = generate_demo_dataset(root / "data", num_sites=args.sites, seed=0)
        jobs = {"on": export_job(audited, root / "jobs"), "off": export_job(plain, root / "jobs")}
        for repeat in range(args.repeats):
            for label in ("on", "off"):
                workspace = root / f"ws-{label}-{repeat}"
                with TreeMemorySampler() as memory:
                    result = run_simulation(
                        jobs[label],
                        workspace,
                        sites=list(data.site_datalists),
                        timeout_s=900,
                        env={"MEDPFL_DATA_ROOT": str(data.root)},
                    )
                train = training_seconds(result.log_file)
                row = results[label]
                row.setdefault("wall", []).append(result.wall_seconds)
                row.setdefault("train", []).append(train or float("nan"))
                row.setdefault("rss", []).append(memory.peak_bytes / 2**20)
                if label == "on":
                    records = [r for p in find_ledgers(result.server_run_dir) for r in read_ledger(p).records]
                    busy = sum(float((r.get("attack_budget") or {}).get("audit_wall_time_s") or 0) for r in records)
                    audits.append(
                        {
                            "count": len(records),
                            "busy_s": busy,
                            "train_s": train or float("nan"),
                            "scored": sum(1 for r in records if (r.get("site_scores") or {}).get("status") == "scored"),
                            "backlog": backlog_per_round(records, round_boundaries(result.log_file)),
                            "levels": sorted(str(r.get("risk")) for r in records),
                        }
                    )
                print(
                    f"{label} #{repeat}: wall {result.wall_seconds:.1f} s, training {train:.1f} s, "
                    f"peak RSS {memory.peak_bytes / 2**20:.0f} MiB",
                    flush=True,
                )
    process_times = sorted(filter_process_times())

    def med(label: str, key: str) -> float:
        return statistics.median(results[label][key])

    count = statistics.median(a["count"] for a in audits)
    per_busy_min = statistics.median(60 * a["count"] / a["busy_s"] for a in audits if a["busy_s"] > 0)
    per_train_min = statistics.median(60 * a["count"] / a["train_s"] for a in audits)
    scored = statistics.median(a["scored"] for a in audits)
    ratio_wall = med("on", "wall") / med("off", "wall")
    ratio_train = med("on", "train") / med("off", "train")
    from medpfl_app.audit.plan import AuditPlan

    plan = AuditPlan()
    backlogs = "; ".join(
        f"run {i + 1}: " + ", ".join(f"round {r}: {n}" for r, n in enumerate(a["backlog"]))
        for i, a in enumerate(audits)
    )
    levels = ", ".join(f"{level} {audits[-1]['levels'].count(level)}" for level in sorted(set(audits[-1]["levels"])))
    p50 = process_times[len(process_times) // 2] * 1000
    p95 = process_times[int(len(process_times) * 0.95)] * 1000
    body = "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {len(__import__('os').sched_getaffinity(0))} "
            f"CPU cores: the audited demo job `fedavg_audit` ({args.sites} sites, {args.rounds} rounds, sigmoid LeNet at "
            "32 px, SGD; site-1 one image and one local step per round) with the audit on versus the same job without the "
            "audit filter, weights cache and site scorer, NVFlare simulator, alternating runs, medians of "
            f"{args.repeats}. Audit per update: the default `AuditPlan` — screening probe of {plan.screening_iterations} "
            f"iterations, then the {plan.attack} ladder on the whole update ({plan.iterations} iterations × "
            f"{plan.restarts} restart, {plan.escalations} escalations ×{plan.escalation_factor}), {plan.time_limit_s:g} s per "
            "update, stages that cannot fit skipped — in a separate worker process at nice 10 with one torch thread. "
            f"Command: `python benchmarks/bench_audit.py --rounds {args.rounds} --repeats {args.repeats} --record`.",
            "",
            "| audit | total wall time (s) | training time (s) | per round (s) | peak RSS of simulator tree (MiB) |",
            "|---|---|---|---|---|",
            f"| off | {med('off', 'wall'):.1f} | {med('off', 'train'):.1f} | {med('off', 'train') / args.rounds:.1f} | "
            f"{med('off', 'rss'):.0f} |",
            f"| on | {med('on', 'wall'):.1f} | {med('on', 'train'):.1f} | {med('on', 'train') / args.rounds:.1f} | "
            f"{med('on', 'rss'):.0f} |",
            "",
            f"**Ratio on / off: total {ratio_wall:.2f} (target ≤ 1.25), training (and per round) {ratio_train:.2f}** "
            f"(target ≤ 1.10). Audit backlog when each round ended (updates not yet in the ledger): {backlogs}. "
            f"Levels in the last audited run: {levels}. "
            f"Audits per run: {count:.0f} ({scored:.0f} scored at the sites); throughput {per_busy_min:.1f} audits per "
            f"minute of attack-thread time, {per_train_min:.1f} per minute of training. Audit memory: peak RSS on − off "
            f"= {med('on', 'rss') - med('off', 'rss'):.0f} MiB. `AuditFilter.process()` with the attack thread busy: "
            f"median {p50:.2f} ms, 95th percentile {p95:.2f} ms over {len(process_times)} calls (LeNet-32 update).",
        ]
    )
    print(body)
    if args.record:
        replace_section(HERE / "RESULTS.md", SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
