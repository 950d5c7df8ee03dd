"""Read what the pre-flight needs from an NVFlare job folder: the site script's training arguments and the
job-level defense filters every site applies to its ``train`` result.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpfl_app.contracts.preflight import DeclaredDefense
from medpfl_app.errors import MedPFLError

TRAIN_TASK = "train"


@dataclass(frozen=True)
class JobFolderSettings:
    """The parts of a job folder the pre-flight reads.

    Attributes:
        name: The job's name (meta.json).
        min_clients: Sites the job waits for.
        training: The site script's parsed arguments (`medpfl_app.nvflare.site.client.build_arg_parser`).
        job_defenses: Job-level client result filters on ``train`` that are defenses, in chain order.
    """

    name: str
    min_clients: int
    training: argparse.Namespace
    job_defenses: tuple[DeclaredDefense, ...]

    def site_settings(self, site: str) -> argparse.Namespace:
        """The training arguments with the site's own overrides (``--site_override``) applied."""
        from medpfl_app.nvflare.site.client import parse_site_overrides

        own = parse_site_overrides(self.training.site_override).get(site, {})
        return argparse.Namespace(**{**vars(self.training), **own})


def read_job_settings(job_dir: str | Path) -> JobFolderSettings:
    """Read ``job_dir``'s meta.json and app config (one app deployed to every site, as `medpfl jobs export` writes).

    Raises:
        MedPFLError: Not a MedPFL job folder, or its site script arguments do not parse.
    """
    from medpfl_app.nvflare.site.client import build_arg_parser

    job_dir = Path(job_dir)
    meta = _read_json(job_dir / "meta.json", job_dir)
    configs = sorted(job_dir.glob("*/config/config_fed_client.json"))
    if len(configs) != 1:
        raise MedPFLError(
            f"{job_dir} has {len(configs)} client app configs (*/config/config_fed_client.json); the pre-flight "
            "reads jobs with one app for every site",
            fix="pass a folder written by `medpfl jobs export`",
        )
    client = _read_json(configs[0], job_dir)
    script_args = _script_args(client, configs[0])
    try:
        training, unknown = build_arg_parser().parse_known_args(shlex.split(script_args))
    except SystemExit:
        raise MedPFLError(
            f"{configs[0]}: the site script arguments {script_args!r} do not parse", fix="export the job again"
        ) from None
    if unknown:
        raise MedPFLError(f"{configs[0]}: unknown site script arguments {unknown}", fix="export the job again")
    min_clients = meta.get("min_clients", 1)
    return JobFolderSettings(
        name=str(meta.get("name", job_dir.name)),
        min_clients=int(min_clients) if isinstance(min_clients, int) and min_clients > 0 else 1,
        training=training,
        job_defenses=tuple(_job_defenses(client)),
    )


def declared_defense(path: str, args: Mapping[str, Any]) -> DeclaredDefense | None:
    """The defense a filter class path stands for; None for MedPFL filters that are not defenses (digests)."""
    from medpfl_app.nvflare.filters import FILTER_PATHS

    keys = {FILTER_PATHS.get(key): key for key in FILTER_PATHS.names()}
    params = {
        str(name): value
        for name, value in args.items()
        if value is None or isinstance(value, (bool, int, float)) and not isinstance(value, str)
    }
    if path in keys:
        return DeclaredDefense(keys[path], params)
    if path.startswith("medpfl_app."):
        return None
    return DeclaredDefense(f"other:{path.rsplit('.', 1)[-1]}"[:64], {})


def _job_defenses(client: Mapping[str, Any]) -> Iterator[DeclaredDefense]:
    for chain in client.get("task_result_filters", []) or []:
        if TRAIN_TASK not in chain.get("tasks", []) or chain.get("direction", "out") not in ("out", "inout"):
            continue
        for entry in chain.get("filters", []):
            defense = declared_defense(str(entry.get("path", "")), entry.get("args", {}) or {})
            if defense is not None:
                yield defense


def _script_args(client: Mapping[str, Any], path: Path) -> str:
    for holder in [
        *(entry.get("executor", {}) for entry in client.get("executors", [])),
        *client.get("components", []),
    ]:
        args = holder.get("args", {}) if isinstance(holder, Mapping) else {}
        if isinstance(args, Mapping) and isinstance(args.get("task_script_args"), str):
            return args["task_script_args"]
    raise MedPFLError(f"{path} names no site script arguments (task_script_args)", fix="export the job again")


def _read_json(path: Path, job_dir: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise MedPFLError(f"{job_dir} is not a job folder: {path.name} is missing", fix="pass a job folder") from None
    except (OSError, ValueError) as error:
        raise MedPFLError(f"cannot read {path}: {error}", fix="export the job again") from None
    if not isinstance(content, dict):
        raise MedPFLError(f"{path} is not a JSON object", fix="export the job again")
    return content
