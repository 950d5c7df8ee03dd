"""``medpfl preflight <job>``: the pre-flight risk check alone, before a job is submitted.

For every site: its coarse facts from its data configuration (counts only), its risk factors, a probe attack on
synthetic images with the job's model and the site's declared training settings, and, when the probe is not low,
the same probe with each suggested change. Kept free of heavy imports: ``medpfl --help`` loads this module.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medpfl_app.cli.options import positive_float

DEFAULT_TIME_LIMIT_S = 20.0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``medpfl preflight`` to the top-level parser."""
    parser = subparsers.add_parser(
        "preflight",
        help="pre-flight risk check of a job before round 1 (per site: risk factors, probe attack, advice)",
        description=(
            "Judge what a job will likely leak before it runs. Each site's facts come from its data configuration "
            "(image and class counts only); the probe trains the job's network on synthetic phantoms with the "
            "site's batch size and local steps, applies the job's and the site's declared defenses and attacks the "
            "result as the server's audit would. A site is high only when the probe reconstructed the synthetic "
            "images through every declared defense. Exit status: 0, no site high; 1, at least one site high; "
            "2, bad input."
        ),
    )
    parser.add_argument("job", type=Path, help="job folder (as written by `medpfl jobs export`)")
    parser.add_argument(
        "--site-data",
        action="append",
        default=[],
        metavar="SITE=PATH",
        help="a site's data configuration (medpfl_data.json) or datalist / class-per-folder root; repeatable. "
        "Sites not listed are found as a training site would find them (MEDPFL_DATA_ROOT/<site>)",
    )
    parser.add_argument(
        "--sites",
        nargs="+",
        default=None,
        metavar="SITE",
        help="the sites to check (default: those given with --site-data, else site-1 … site-N for the job's "
        "min_clients)",
    )
    parser.add_argument(
        "--time-limit",
        type=positive_float,
        default=DEFAULT_TIME_LIMIT_S,
        help="wall-clock seconds of each probe attack",
    )
    parser.add_argument("--no-what-if", action="store_true", help="skip probing the suggested changes")
    parser.add_argument("--json", action="store_true", help="print the pre-flight as JSON instead of text")
    parser.add_argument("--out", type=Path, default=None, help="also write the pre-flight JSON to this file")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from medpfl_app.atomic_io import write_json_atomic
    from medpfl_app.audit.preflight import PROBE_PLAN, JobPreflight, SitePreflight, assess_site
    from medpfl_app.errors import MedPFLError
    from medpfl_app.nvflare.preflight.job_settings import read_job_settings
    from medpfl_app.nvflare.preflight.site_plan import plan_site
    from medpfl_app.reports.preflight_text import preflight_text

    settings = read_job_settings(args.job)
    given = _site_data(args.site_data)
    sites = args.sites or sorted(given) or [f"site-{i}" for i in range(1, settings.min_clients + 1)]
    plan = replace(PROBE_PLAN, time_limit_s=float(args.time_limit))
    entries: list[SitePreflight] = []
    job = None
    for site in sites:
        training = settings.site_settings(site)
        try:
            site_plan = plan_site(site, training, _data_settings(site, given), job_defenses=settings.job_defenses)
        except MedPFLError as error:
            entries.append(SitePreflight(site=site, facts=None, problem=error.problem))
            continue
        job = job or site_plan.job
        facts = site_plan.facts
        print(
            f"probing {site}: batch {facts.batch_size}, {facts.local_steps} local step(s), "
            f"{len(site_plan.job.job_defenses)} job defense(s) …",
            file=sys.stderr,
            flush=True,
        )
        entries.append(assess_site(site_plan.job, facts, plan=plan, what_ifs=not args.no_what_if))
    if job is None:
        raise MedPFLError(
            "no site's data could be read: " + "; ".join(f"{e.site}: {e.problem}" for e in entries),
            fix="pass each site's data configuration with --site-data SITE=PATH",
        )
    result = JobPreflight(job=job, sites=tuple(entries))
    if args.out is not None:
        write_json_atomic(args.out, result.to_json())
    print(json.dumps(result.to_json(), indent=2) if args.json else preflight_text(result.to_json(), settings.name))
    return 1 if result.high_risk_sites else 0


def _site_data(values: list[str]) -> dict[str, Path]:
    from medpfl_app.errors import MedPFLError

    given: dict[str, Path] = {}
    for value in values:
        site, sep, path = value.partition("=")
        if not sep or not site or not path:
            raise MedPFLError(
                f"bad --site-data {value!r}", fix="write SITE=PATH, e.g. site-1=/data/site-1/medpfl_data.json"
            )
        given[site] = Path(path)
    return given


def _data_settings(site: str, given: dict[str, Path]):
    """The site's data as given, else ``$MEDPFL_DATA_ROOT/<site>`` (never a configuration found by searching)."""
    import os

    from medpfl_app.data.site_config import DATA_ROOT_ENV
    from medpfl_app.errors import MedPFLError
    from medpfl_app.nvflare.preflight.site_plan import site_data_from_path

    if site in given:
        return site_data_from_path(given[site], site)
    root = os.environ.get(DATA_ROOT_ENV, "").strip()
    if root and (Path(root) / site).exists():
        return site_data_from_path(Path(root) / site, site)
    raise MedPFLError(
        f"no data given for {site}", fix=f"pass --site-data {site}=PATH or set {DATA_ROOT_ENV}", site=site
    )
