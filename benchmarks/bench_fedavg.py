"""Benchmark: the MedPFL demo job versus a plain NVFlare Client API FedAvg job, same machine, same run.

Both jobs train the same small CNN on the same phantom data (3 sites, 64 px, 32 training images per site) for the
same rounds, local epochs and learning rate, in NVFlare's simulator; runs alternate (ours, baseline, ours, ...)
so machine load affects both alike. Reports wall time, per-round time and the peak resident memory of the whole
simulator process tree (sampled every 0.2 s), and appends a section to benchmarks/RESULTS.md with --record.

    python benchmarks/bench_fedavg.py --rounds 5 --repeats 2 --record
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results_file import replace_section  # noqa: E402

from medpfl_app.data import generate_demo_dataset  # noqa: E402
from medpfl_app.nvflare.jobs import JOB_CATALOG  # noqa: E402
from medpfl_app.nvflare.jobs.builder import export_job  # noqa: E402
from medpfl_app.nvflare.jobs.simulate import run_simulation  # noqa: E402


class TreeMemorySampler:
    """Peak summed RSS of this process's descendants (the simulator and its workers)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, _descendants_rss(os.getpid()))
            time.sleep(self.interval)


def _descendants_rss(root_pid: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int((entry / "statm").read_text().split()[1]) * page
    total, stack = 0, list(children.get(root_pid, []))
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def export_baseline_job(jobs_dir: Path, *, rounds: int, sites: int, learning_rate: float, local_epochs: int) -> Path:
    from baseline_net import BaselineNet
    from nvflare.app_common.workflows.fedavg import FedAvg
    from nvflare.app_opt.pt.job_config.base_fed_job import BaseFedJob
    from nvflare.client.config import TransferType
    from nvflare.job_config.script_runner import ScriptRunner

    with contextlib.chdir(HERE / "fedavg_baseline"):
        job = BaseFedJob(initial_model=BaselineNet(), name="plain_nvflare_fedavg", min_clients=sites)
        job.to_server(FedAvg(num_clients=sites, num_rounds=rounds, persistor_id=job.comp_ids["persistor_id"]))
        job.to_clients(
            ScriptRunner(
                script="baseline_client.py",
                script_args=f"--learning_rate {learning_rate} --local_epochs {local_epochs}",
                params_transfer_type=TransferType.DIFF,
            )
        )
        job.set_app_packages(["medpfl_app"])
        job.export_job(str(jobs_dir))
    return jobs_dir / "plain_nvflare_fedavg"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="write the section in benchmarks/RESULTS.md")
    args = parser.parse_args()

    sys.path.insert(0, str(HERE / "fedavg_baseline"))
    base = JOB_CATALOG["fedavg_small_cnn"]
    spec = replace(base, name="medpfl_fedavg", num_rounds=args.rounds, min_clients=args.sites)
    work = Path(tempfile.mkdtemp(prefix="medpfl-bench-fedavg-"))
    data = generate_demo_dataset(work / "data", num_sites=args.sites, seed=0)
    jobs = {
        "medpfl": export_job(spec, work / "jobs"),
        "baseline": export_baseline_job(
            work / "jobs",
            rounds=args.rounds,
            sites=args.sites,
            learning_rate=spec.training.learning_rate,
            local_epochs=spec.training.local_epochs,
        ),
    }
    timings: dict[str, list[float]] = {"medpfl": [], "baseline": []}
    cpu_seconds: dict[str, list[float]] = {"medpfl": [], "baseline": []}
    memory: dict[str, list[int]] = {"medpfl": [], "baseline": []}
    accuracy: dict[str, list[float]] = {"medpfl": [], "baseline": []}
    for repeat in range(args.repeats):
        for label in ("medpfl", "baseline"):
            cpu_before = _children_cpu_seconds()
            with TreeMemorySampler() as sampler:
                result = run_simulation(
                    jobs[label],
                    work / f"ws-{label}-{repeat}",
                    sites=list(data.site_datalists),
                    timeout_s=1800,
                    env={"MEDPFL_DATA_ROOT": str(data.root)},
                )
            timings[label].append(result.wall_seconds)
            cpu_seconds[label].append(_children_cpu_seconds() - cpu_before)
            memory[label].append(sampler.peak_bytes)
            last = result.round_metrics[-1] if result.round_metrics else {}
            metrics = {m["name"]: m["value"] for m in last.get("aggregated_metrics", [])}
            accuracy[label].append(float(metrics.get("accuracy", float("nan"))))
            print(
                f"{label:8s} run {repeat}: {result.wall_seconds:6.1f} s wall, {cpu_seconds[label][-1]:6.1f} s CPU, "
                f"peak RSS {sampler.peak_bytes / 2**20:7.0f} MiB"
            )

    ours, theirs = statistics.median(timings["medpfl"]), statistics.median(timings["baseline"])
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} CPU cores: "
        f"{args.sites} sites, {args.rounds} rounds, small_cnn, 64 px phantoms (32 training / 16 validation images "
        f"per site), {spec.training.local_epochs} local epochs, Adam lr {spec.training.learning_rate}, NVFlare "
        f"simulator, median of {args.repeats} alternating runs. Command: "
        f"`python benchmarks/bench_fedavg.py --rounds {args.rounds} --repeats {args.repeats} --record`.",
        "",
        "| job | wall time (s) | per round (s) | CPU time of simulator tree (s) | peak RSS of simulator tree (MiB) "
        "| last-round accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for label, title in (("medpfl", "MedPFL demo job (Lightning)"), ("baseline", "plain NVFlare Client API")):
        median = statistics.median(timings[label])
        lines.append(
            f"| {title} | {median:.1f} | {median / args.rounds:.1f} | {statistics.median(cpu_seconds[label]):.1f} | "
            f"{max(memory[label]) / 2**20:.0f} | "
            f"{statistics.median(accuracy[label]):.3f} |"
        )
    cpu_ratio = statistics.median(cpu_seconds["medpfl"]) / statistics.median(cpu_seconds["baseline"])
    lines += [
        "",
        f"**Ratio MedPFL / baseline (wall time): {ours / theirs:.2f}** (target ≤ 1.15); CPU-time ratio "
        f"{cpu_ratio:.2f} (less sensitive to other load on the machine). Wall-time spread: MedPFL "
        f"{min(timings['medpfl']):.1f}–{max(timings['medpfl']):.1f} s, baseline "
        f"{min(timings['baseline']):.1f}–{max(timings['baseline']):.1f} s.",
    ]
    report = "\n".join(lines)
    print(report)
    if args.record:
        replace_section(HERE / "RESULTS.md", "FedAvg training pipeline", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
