"""The demo: embedded phantom data (or the user's own images) at N sites, the audited FedAvg job, NVFlare's simulator.

By default the demo runs ``fedavg_audit``: site-1 is the literature's high-risk configuration (one image, one local
step per round) next to ordinary sites, and the server-side audit writes its ledger under the server run dir.

With ``data`` the sites train on the user's images instead (`medpfl_app.nvflare.jobs.demo_data`). Reconstructions of real
images are patient data, so such runs store no reconstructions or thumbnails: the job's
``store_reconstructions`` / ``release_demo_originals`` switches are turned off (`without_thumbnails`).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.jobs.builder import export_job
from medpfl_app.nvflare.jobs.progress import SimulationProgress
from medpfl_app.nvflare.jobs.simulate import SimulationResult, run_simulation
from medpfl_app.nvflare.jobs.spec import JOB_CATALOG, JobSpec

DEMO_JOB = "fedavg_audit"
#: The folders a demo run writes inside its output folder; ``force`` replaces exactly these.
RUN_PARTS = ("data", "jobs", "simulation")
#: Job arguments that keep reconstructions or originals for the report's thumbnails (synthetic demo data only).
_THUMBNAIL_SWITCHES = ("store_reconstructions", "release_demo_originals")


@dataclass(frozen=True)
class DemoOutcome:
    data_root: Path
    job_dir: Path
    simulation: SimulationResult
    network: str
    #: Demo site → the user's folder or datalist it trained on (empty for the phantoms).
    data_sources: dict[str, Path] | None = None

    @property
    def audit_ledger(self) -> Path | None:
        """The server-side audit ledger of the run (None when the job had no audit)."""
        from medpfl_app.audit.ledger import find_ledgers

        return next(iter(find_ledgers(self.simulation.server_run_dir)), None)


def run_demo(
    out_dir: str | Path,
    *,
    num_sites: int | None = None,
    num_rounds: int = 3,
    seed: int = 0,
    timeout_s: float = 1800.0,
    show_progress: bool = True,
    job: str = DEMO_JOB,
    data: str | Path | None = None,
    force: bool = False,
) -> DemoOutcome:
    """Prepare the sites' data, export the demo job sized to the sites and ``num_rounds``, and simulate it.

    Args:
        out_dir: The run folder (data, job, simulation). An existing, non-empty one is refused unless ``force``.
        num_sites: Sites (default 3; with ``data`` holding one folder per site, the number of folders).
        job: A `JOB_CATALOG` name (default: the audited FedAvg job).
        data: The user's images (`medpfl_app.nvflare.jobs.demo_data`); ``None`` generates the phantoms.
        force: Replace the demo's folders (`RUN_PARTS`) of an existing run in ``out_dir``.

    Raises:
        MedPFLError: Unknown job, a run folder in the way, ``data`` inside ``out_dir``, unusable ``data`` (checked
            before the simulator starts), or a failed simulation.
    """
    if job not in JOB_CATALOG:
        raise MedPFLError(f"unknown demo job {job!r}", fix=f"use one of {', '.join(JOB_CATALOG)}")
    out_dir = Path(out_dir).expanduser().resolve()
    prepare_run_folder(out_dir, force=force, data=data)
    base = JOB_CATALOG[job] if data is None else without_thumbnails(JOB_CATALOG[job])
    sites = _prepare_site_data(
        out_dir / "data", base, num_sites=num_sites, seed=seed, data=data, progress=show_progress
    )
    spec = with_num_classes(
        replace(base, num_rounds=num_rounds, min_clients=len(sites.names), training=replace(base.training, seed=seed)),
        sites.num_classes,
    )
    job_dir = export_job(spec, out_dir / "jobs")
    with SimulationProgress(num_rounds, enabled=show_progress) as progress:
        simulation = run_simulation(
            job_dir,
            out_dir / "simulation",
            sites=sites.names,
            timeout_s=timeout_s,
            env={"MEDPFL_DATA_ROOT": str(sites.root)},
            on_round=progress.round_started,
            on_drain=progress.draining,
        )
    return DemoOutcome(
        data_root=sites.root,
        job_dir=job_dir,
        simulation=simulation,
        network=spec.training.network,
        data_sources=sites.sources,
    )


@dataclass(frozen=True)
class _SiteData:
    """The demo sites' data: where it lies, the site names, the number of classes and the user's sources."""

    root: Path
    names: list[str]
    num_classes: int
    sources: dict[str, Path]


def _prepare_site_data(
    folder: Path, spec: JobSpec, *, num_sites: int | None, seed: int, data: str | Path | None, progress: bool
) -> _SiteData:
    """Generate the phantoms (``data`` None) or convert the user's images into one datalist per site."""
    if data is None:
        from medpfl_app.data.demo import generate_demo_dataset

        dataset = generate_demo_dataset(folder, num_sites=num_sites or 3, seed=seed)
        return _SiteData(dataset.root, list(dataset.site_datalists), len(dataset.class_names), {})
    from medpfl_app.nvflare.jobs.demo_data import prepare_demo_sites

    prepared = prepare_demo_sites(
        data,
        folder,
        num_sites=num_sites,
        image_size=spec.training.image_size,
        in_channels=spec.training.in_channels,
        seed=seed,
        progress=progress,
    )
    return _SiteData(prepared.root, list(prepared.site_datalists), len(prepared.class_names), prepared.sources)


def check_run_folder(out_dir: Path, *, force: bool, data: str | Path | None = None) -> None:
    """Refuse an ``out_dir`` that is a file, that holds an earlier run (unless ``force``), or that contains ``data``.

    Changes nothing, so the CLI can call it before any work starts.

    Raises:
        MedPFLError: naming the folder and both ways out (``--force`` or another ``--out``).
    """
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise MedPFLError(
            f"--out {out_dir} is an existing file, not a folder (it is never overwritten)",
            fix="pass --out a new or existing folder for the demo's data, job and run",
        )
    if data is not None:
        data_path = Path(data).expanduser().resolve()
        if data_path == out_dir or out_dir in data_path.parents:
            raise MedPFLError(
                f"--data {data_path} lies inside the run folder --out {out_dir}, whose data/, jobs/ and simulation/ "
                "the demo writes",
                fix="keep your data outside the run folder, or pass another --out",
            )
    if force or not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    raise MedPFLError(
        f"the run folder {out_dir} already exists and is not empty (an earlier demo run?)",
        fix=f"pass --force to replace the demo's {', '.join(f'{part}/' for part in RUN_PARTS)} in {out_dir}, "
        "or choose a new folder with --out",
    )


def prepare_run_folder(out_dir: Path, *, force: bool, data: str | Path | None = None) -> None:
    """`check_run_folder`, then, with ``force``, remove the demo's own folders (`RUN_PARTS`) of an earlier run.

    Only `RUN_PARTS` are ever removed, never the folder itself or anything else in it.
    """
    check_run_folder(out_dir, force=force, data=data)
    for part in RUN_PARTS:
        target = out_dir / part
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)


def without_thumbnails(spec: JobSpec) -> JobSpec:
    """``spec`` with the switches that keep reconstructions or release originals turned off (for real data).

    The audit still attacks and scores every update; only the stored images (and the report's thumbnails) go.
    """

    def strip(entry: dict[str, Any]) -> dict[str, Any]:
        args = {key: value for key, value in entry.get("args", {}).items() if key not in _THUMBNAIL_SWITCHES}
        return {**entry, "args": args} if "args" in entry else entry

    description = re.sub(r"\s*For the synthetic demo data only:[^.]*\.", "", spec.description)
    return replace(
        spec,
        description=f"{description} On the user's own data: no reconstructions or originals are stored.",
        server_result_filters=tuple(strip(entry) for entry in spec.server_result_filters),
        client_components=tuple(strip(entry) for entry in spec.client_components),
    )


def with_num_classes(spec: JobSpec, num_classes: int) -> JobSpec:
    """``spec`` for ``num_classes`` classes: the sites' training and the audit's copy of the model description."""
    if spec.training.num_classes == num_classes:
        return spec

    def resize(entry: dict[str, Any]) -> dict[str, Any]:
        model = entry.get("args", {}).get("model")
        if not isinstance(model, dict) or "num_classes" not in model:
            return entry
        return {**entry, "args": {**entry["args"], "model": {**model, "num_classes": num_classes}}}

    return replace(
        spec,
        training=replace(spec.training, num_classes=num_classes),
        server_result_filters=tuple(resize(entry) for entry in spec.server_result_filters),
    )
