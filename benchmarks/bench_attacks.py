"""Attack-engine benchmark: vmap-batched restarts vs the straightforward sequential create_graph loop.

Same victim (``small_cnn``, BN in train mode, one demo image, its gradient, labels known), same initial images,
same recipe (Inverting Gradients: cosine, signed Adam, step decay, TV, box) and the same number of iterations.
Each variant runs in a fresh process so its peak resident memory above the pre-attack
baseline can be read; a 2-iteration untimed warm-up precedes the timed loop (one-off kernel selection), ``--repeats`` times interleaved
with the others (median wall time reported); reported: iterations/s
(restarts × iterations / wall time), restarts/s, process CPU seconds (less sensitive to other
processes on a shared machine), final PSNR of the best restart, peak RSS above the process
baseline.

    python benchmarks/bench_attacks.py --sizes 32 64 --restarts 8 --iterations 100 --out benchmarks/out/attacks.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path

# The engine's opt-in glibc allocator tuning (see `engine._reduce_allocator_churn`) is part of the measured setup;
# the reference loop never calls the engine, so it is unaffected.
os.environ.setdefault("MEDPFL_MALLOC_TUNING", "1")

# reference_tuned_heap: the reference loop with the engine's allocator tuning applied first, to show how much of
# the engine's speed-up is the heap tuning alone.
VARIANTS = ("reference", "reference_tuned_heap", "engine_sequential", "engine_batched")


def _measure(variant: str, size: int, restarts: int, iterations: int, threads: int, queue: mp.Queue) -> None:
    import torch

    from medpfl_app.attacks import UpdateKind, build_attack, knowledge_from_update
    from medpfl_app.attacks.engine import _initial_images
    from medpfl_app.attacks.reference_loop import reference_gradinv
    from medpfl_app.attacks.simulated_site import simulate_site_update
    from medpfl_app.experiments.grid import load_demo_images
    from medpfl_app.metrics import psnr
    from medpfl_app.models import build_network

    torch.set_num_threads(threads)
    images, labels = load_demo_images(None, count=1, image_size=size, seed=0)
    torch.manual_seed(0)
    model = build_network("small_cnn", in_channels=1, num_classes=4, image_size=size)
    site = simulate_site_update(model, images, labels, kind=UpdateKind.GRADIENT)
    knowledge = knowledge_from_update(
        model,
        site.global_weights,
        site.update,
        site.meta,
        image_shape=(1, size, size),
        kind=UpdateKind.GRADIENT,
        labels=labels,
    )
    attack = build_attack("gradinv", iterations=iterations, restarts=restarts, batched=variant == "engine_batched")
    initial = _initial_images(attack.config, (restarts, 1, 1, size, size), None, torch.Generator().manual_seed(0))
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # imports, data, model: before any attack
    # One untimed two-iteration run per variant: one-off kernel selection and allocator growth are not the loop's cost.
    warm = build_attack("gradinv", iterations=2, restarts=restarts, batched=variant == "engine_batched")
    if variant == "reference_tuned_heap":
        from medpfl_app.attacks.engine import _reduce_allocator_churn

        _reduce_allocator_churn()
    if variant.startswith("reference"):
        reference_gradinv(knowledge, warm.config, initial, labels)
    else:
        warm.run(knowledge)
    started, cpu_started = time.perf_counter(), time.process_time()
    if variant.startswith("reference"):
        recon, losses = reference_gradinv(knowledge, attack.config, initial, labels)
    else:
        result = attack.run(knowledge)
        recon, losses = result.reconstructions, torch.tensor(result.restart_losses)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put(
        {
            "variant": variant,
            "image_size": size,
            "restarts": restarts,
            "iterations": iterations,
            "wall_s": wall,
            "cpu_s": cpu,
            "iterations_per_s": restarts * iterations / wall,
            "restarts_per_s": restarts / wall,
            "psnr_db": float(psnr(recon[None] if recon.ndim == 3 else recon, images)[0]),
            "best_matching_loss": float(losses.min()),
            "peak_rss_above_baseline_mb": (peak_kb - baseline_kb) / 1024,
            "peak_rss_mb": peak_kb / 1024,
        }
    )


def _result_of(proc: mp.process.BaseProcess, queue: mp.Queue, what: str) -> dict:
    """The row a measuring process puts on ``queue``; a clear error (not a hang) when it dies first."""
    import queue as queue_module

    while True:
        try:
            row = queue.get(timeout=1.0)
            proc.join()
            return row
        except queue_module.Empty:
            if not proc.is_alive():
                raise SystemExit(
                    f"the measuring process for {what} exited with code {proc.exitcode} before reporting; "
                    "its traceback is above (is medpfl_app installed? run pip install -e . first)"
                ) from None


def run(sizes: list[int], restarts: int, iterations: int, threads: int, repeats: int) -> list[dict]:
    """Measure every (size, variant) ``repeats`` times, variants interleaved, and keep the median wall time.

    Interleaving spreads load from other processes on a shared machine evenly over the variants.
    """
    context = mp.get_context("spawn")
    samples: dict[tuple[int, str], list[dict]] = {}
    for size in sizes:
        for repeat in range(repeats):
            for variant in VARIANTS:
                queue = context.Queue()
                proc = context.Process(target=_measure, args=(variant, size, restarts, iterations, threads, queue))
                proc.start()
                row = _result_of(proc, queue, f"{size}px {variant}")
                samples.setdefault((size, variant), []).append(row)
                print(
                    f"{size}px {variant:18s} run {repeat + 1}: {row['iterations_per_s']:7.1f} it/s  "
                    f"PSNR {row['psnr_db']:5.2f} dB  peak +{row['peak_rss_above_baseline_mb']:.0f} MB  "
                    f"({row['wall_s']:.1f} s)",
                    flush=True,
                )
    rows = []
    for runs in samples.values():
        walls = sorted(r["wall_s"] for r in runs)
        median = walls[len(walls) // 2]
        cpus = sorted(r["cpu_s"] for r in runs)
        row = dict(runs[0])
        row.update(
            wall_s=median,
            wall_s_all=[r["wall_s"] for r in runs],
            cpu_s=cpus[len(cpus) // 2],
            cpu_s_all=[r["cpu_s"] for r in runs],
            iterations_per_s=restarts * iterations / median,
            restarts_per_s=restarts / median,
            peak_rss_above_baseline_mb=max(r["peak_rss_above_baseline_mb"] for r in runs),
            repeats=len(runs),
        )
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """Median and fastest wall time per variant, each compared with the reference's (noise only ever adds time)."""
    lines = [
        "| image | variant | median wall (s) | it/s (restarts × it / s) | restarts/s | vs reference (median) "
        "| fastest wall (s) | vs reference (fastest) | vs reference (paired per repeat: median, range) "
        "| CPU s (vs reference) | final PSNR (dB) | peak RSS above baseline (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    reference = {r["image_size"]: r for r in rows if r["variant"] == "reference"}
    for r in rows:
        base = reference[r["image_size"]]
        # Repeats run variants back to back, so repeat i of each variant saw similar load: their ratio is steadier.
        paired = sorted(b / w for b, w in zip(base["wall_s_all"], r["wall_s_all"]))
        lines.append(
            f"| {r['image_size']}² | {r['variant']} | {r['wall_s']:.2f} | {r['iterations_per_s']:.1f} | "
            f"{r['restarts_per_s']:.3f} | {base['wall_s'] / r['wall_s']:.2f}× | {min(r['wall_s_all']):.2f} | "
            f"{min(base['wall_s_all']) / min(r['wall_s_all']):.2f}× | {paired[len(paired) // 2]:.2f}× "
            f"({paired[0]:.2f}–{paired[-1]:.2f}) | {r['cpu_s']:.1f} ({base['cpu_s'] / r['cpu_s']:.2f}×) | "
            f"{r['psnr_db']:.2f} | {r['peak_rss_above_baseline_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="image sides to benchmark")
    parser.add_argument("--restarts", type=int, default=8, help="restarts per attack")
    parser.add_argument("--iterations", type=int, default=100, help="iterations per restart (equal for all)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in every variant")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (median wall time reported)")
    parser.add_argument("--out", type=Path, default=None, help="write rows and the table as JSON here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run(args.sizes, args.restarts, args.iterations, args.threads, args.repeats)
    table = markdown(rows)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        machine = {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "load_avg_at_end": os.getloadavg(),
        }
        tmp.write_text(
            json.dumps(
                {"rows": rows, "table": table, "machine": machine, "wall_s": time.perf_counter() - started}, indent=1
            )
        )
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
