"""Adversarial catalogue: what a malicious site's update does to the server-side audit, measured case by case.

Each case is one crafted update (weights, meta) handed to the real `AuditFilter` (isolated worker process on, as
jobs run it) through ``process(shareable, fl_ctx)`` — the call NVFlare makes — with a minimal engine (no NVFlare
runtime). For each case: the outcome (the ledger record's status and reason, and whether the update reached the
workflow unchanged, emptied or refused), the seconds from ``process()`` to the record, and the peak resident
memory of the server process and of its audit worker process. An honest update of another site follows every
case to show the audit still works.

    python benchmarks/bench_adversarial.py --record
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.workspace import Workspace
from nvflare.app_common.app_constant import AppConstants
from results_file import replace_section

from medpfl_app.audit.ledger import read_ledger
from medpfl_app.nvflare.server.audit_filter import AuditFilter, cache_global_weights

SECTION = "Adversarial catalogue"
JOB = "bench-adversarial"
MODEL = {"network": "lenet_sigmoid", "image_size": 32, "in_channels": 1, "num_classes": 4}


class _Engine:
    def __init__(self, root: Path) -> None:
        self.root = root

    def get_workspace(self) -> Workspace:
        for folder in ("startup", "local"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        return Workspace(root_dir=str(self.root), site_name="server")

    def get_clients(self) -> list:
        from nvflare.apis.client import Client

        return [Client(name, None) for name in ("site-1", "site-2")]

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        del event_type, fl_ctx


def _ctx(engine: _Engine, site: str) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(ReservedKey.RUN_NUM, JOB, private=False, sticky=True)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, "server", private=False, sticky=True)
    ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=True)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=True)
    ctx.set_peer_context(peer)
    return ctx


def _honest_round(seed: int = 0):
    """A real one-image SGD update of the job's default-initialised LeNet, with the facts a site sends."""
    import torch

    from medpfl_app.attacks import UpdateKind
    from medpfl_app.attacks.simulated_site import simulate_site_update
    from medpfl_app.data.phantoms import generate_phantoms
    from medpfl_app.models.global_model import build_seeded_network

    net = build_seeded_network("lenet_sigmoid", in_channels=1, num_classes=4, image_size=32, seed=0, dp_sgd=False)
    image = torch.from_numpy(generate_phantoms([seed % 4], seed=seed, image_size=32))[:, None]
    site = simulate_site_update(
        net, image, torch.tensor([seed % 4]), kind=UpdateKind.WEIGHT_DIFF, learning_rate=0.05, batch_size=1
    )
    weights = {f"net.{k}": v.numpy() for k, v in site.global_weights.items()}
    update = {f"net.{k}": v.numpy() for k, v in site.update.items()}
    meta = {**site.meta, **MODEL, "state_dict_prefix": "net.", "num_train_images": 32}
    return weights, update, meta


def cases(update: dict, meta: dict) -> list[tuple[str, dict, dict]]:
    """(name, weights, meta) of each malicious update."""
    nan_update = {k: v.copy() for k, v in update.items()}
    next(iter(nan_update.values())).flat[0] = np.nan
    return [
        ("batch_size = 1e9", update, {**meta, "batch_size": 10**9}),
        ("image_size = 1e6 (model from site meta)", update, {**meta, "image_size": 10**6}),
        ("in_channels = 1e5, num_classes = 1e9", update, {**meta, "in_channels": 10**5, "num_classes": 10**9}),
        ("NaN learning rate", update, {**meta, "learning_rate": float("nan")}),
        ("NaN in the weights", nan_update, meta),
        ("claims CKKS encryption on plaintext", update, {**meta, "processed_algorithm": "CKKS"}),
        ("filter history of 1e5 entries", update, {**meta, "filter_history": ["f"] * 100_000}),
        ("update 100x the model", {**update, "net.extra": np.zeros(1_000_000, np.float32)}, meta),
        ("unknown meta keys (10 MB string)", update, {**meta, "payload": "x" * 10_000_000}),
    ]


def _budget_site(root: Path) -> Path:
    for folder in ("startup", "local"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    return root


def _release(site: Path, **args) -> str:
    """One update through a job-installed ClientDPFilter at ``site``: the ε it reports, or the refusal."""
    from nvflare.apis.filter import FilterContextKey, FilterSource
    from nvflare.apis.fl_constant import FLContextKey

    from medpfl_app.errors import MedPFLError
    from medpfl_app.nvflare.filters.client_dp import ClientDPFilter

    class SiteEngine:
        def get_workspace(self) -> Workspace:
            return Workspace(root_dir=str(site), site_name=site.name)

        def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
            del event_type, fl_ctx

    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, SiteEngine(), private=True, sticky=True)
    ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=False, sticky=True)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, site.name, private=False, sticky=True)
    ctx.set_prop(FLContextKey.TASK_ID, "t-1", private=True, sticky=False)
    dp_filter = ClientDPFilter(clip_norm=1.0, noise_multiplier=2.0, **args)
    dp_filter.set_prop(FilterContextKey.SOURCE, FilterSource.JOB)
    shareable = DXO(DataKind.WEIGHT_DIFF, {"w": np.linspace(-1, 1, 12, dtype=np.float32)}).to_shareable()
    try:
        out = from_shareable(dp_filter.process(shareable, ctx))
    except MedPFLError as error:
        return f"refused: {error.problem}"
    entry = next(e for e in out.meta["medpfl_defenses"] if e["defense"] == "client_dp")
    return f"released, ε so far {entry['epsilon_total']:.2f}"


def budget_rows(root: Path) -> list[tuple[str, str, float]]:
    """(attempt, outcome, seconds) for each way a site or job could try to reset its client-level ε."""
    rows = []
    ledger = Path("medpfl") / "client_dp_ledger.json"

    def attempt(name: str, site: Path, prepare, **args) -> None:
        prepare(site)
        started = time.perf_counter()
        outcome = _release(site, **args)
        seconds = time.perf_counter() - started
        rows.append(
            (name, outcome.replace(str(site), "<site workspace>").replace(str(root), "<elsewhere>")[:170], seconds)
        )

    def two_releases(site: Path) -> None:
        _release(site)
        _release(site)

    attempt(
        "job points the ledger elsewhere (ledger_path)",
        _budget_site(root / "s1"),
        lambda site: None,
        ledger_path=str(root / "fresh.json"),
    )
    attempt(
        "ledger deleted after 2 releases",
        _budget_site(root / "s2"),
        lambda site: (two_releases(site), (site / ledger).unlink()),
    )
    backups: dict[str, str] = {}
    attempt(
        "ledger rolled back to an older copy",
        _budget_site(root / "s3"),
        lambda site: (
            _release(site),
            backups.update(old=(site / ledger).read_text()),
            _release(site),
            (site / ledger).write_text(backups["old"]),
        ),
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--record", action="store_true", help=f"write the '{SECTION}' section of RESULTS.md")
    args = parser.parse_args()

    weights, update, meta = _honest_round()
    rows = []
    with tempfile.TemporaryDirectory(prefix="medpfl-bench-adv-") as tmp:
        engine = _Engine(Path(tmp))
        audit = AuditFilter(model=MODEL, plan={"time_limit_s": 10.0})
        audit.handle_event(EventType.START_RUN, _ctx(engine, "site-1"))
        ledger = Path(tmp) / JOB / "medpfl" / "audit_ledger.jsonl"
        for round_number, (name, data, case_meta) in enumerate(cases(update, meta)):
            cache_global_weights(JOB, round_number, weights)
            shareable = DXO(data_kind=DataKind.WEIGHT_DIFF, data=data, meta=case_meta).to_shareable()
            shareable.set_header(AppConstants.CURRENT_ROUND, round_number)
            before = len(read_ledger(ledger).records) if ledger.exists() else 0
            started = time.perf_counter()
            out = audit.process(shareable, _ctx(engine, "site-1"))
            process_ms = (time.perf_counter() - started) * 1000
            honest = DXO(data_kind=DataKind.WEIGHT_DIFF, data=update, meta=meta).to_shareable()
            honest.set_header(AppConstants.CURRENT_ROUND, round_number)
            audit.process(honest, _ctx(engine, "site-2"))
            assert audit._worker is not None and audit._worker.drain(300), "the audit did not drain"
            seconds = time.perf_counter() - started
            records = read_ledger(ledger).records[before:]
            bad = next(r for r in records if r["site"] == "site-1")
            good = next(r for r in records if r["site"] == "site-2")
            reached = from_shareable(out).data
            workflow = "emptied (not aggregated)" if reached == {} else "unchanged" if reached is data else "changed"
            rows.append(
                (
                    name,
                    bad["status"],
                    str(bad.get("reason") or bad["risk"])[:110],
                    workflow,
                    process_ms,
                    seconds,
                    good["status"],
                    good["risk"],
                )
            )
            print(rows[-1], flush=True)
        audit.handle_event(EventType.END_RUN, _ctx(engine, "site-1"))
    with tempfile.TemporaryDirectory(prefix="medpfl-bench-budget-") as tmp:
        budget = budget_rows(Path(tmp))
    for row in budget:
        print(row, flush=True)
    server_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines = [
        f"Command: `python benchmarks/bench_adversarial.py --record` ({platform.machine()}, Python "
        f"{platform.python_version()}). Each row: one crafted update from site-1 through `AuditFilter.process()` "
        "(job model given, isolated worker process, 10 s per update), then an honest one-image update from site-2; "
        "seconds from the malicious update's `process()` until both records were written (no site scorer in this "
        "harness: audited records are `unscored` or `inconclusive`). Peak resident memory "
        f"over the whole run: server process {server_mb:.0f} MiB, audit worker process {child_mb:.0f} MiB.",
        "",
        "| malicious update | record | reason | reached the workflow | process() ms | bounded to s "
        "| honest site's record |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, status, reason, workflow, process_ms, seconds, good_status, good_risk in rows:
        lines.append(
            f"| {name} | {status} | {reason} | {workflow} | {process_ms:.1f} | {seconds:.1f} | "
            f"{good_status}, {good_risk} |"
        )
    lines += [
        "",
        "Privacy budget (client-level DP ledger at a site, `ClientDPFilter` installed by a job; same command):",
        "",
        "| attempt to reset ε | outcome | s |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {outcome} | {seconds:.2f} |" for name, outcome, seconds in budget]
    lines += [
        "",
        "A site querying another site's scorer, and replaying a request: in the simulator test "
        "`tests/adversarial/test_malicious_site_simulator.py` every such request (2 rounds × 2 victims × 10) was "
        "answered with a refusal only and logged at the victim; the honest sites' records stayed audited and scored. "
        "Two processes recording releases while a thread deletes and plants `.lock` files lose no release "
        "(`tests/adversarial/test_budget_integrity.py`: the lock is held on the ledger file itself).",
    ]
    body = "\n".join(lines)
    print(body)
    if args.record:
        replace_section(HERE / "RESULTS.md", SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
