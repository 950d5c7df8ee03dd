"""How a site finds its own data from site-local configuration, never from paths inside the job.

The same job runs unchanged at every hospital; each site says where its data is in one of three places, tried in
this order:

1. ``MEDPFL_SITE_DATA_CONFIG``: the path of a site data configuration file (JSON, below).
2. ``<workspace>/local/medpfl_data.json`` — the NVFlare site's ``local/`` folder. Without an explicit workspace,
   ``local/medpfl_data.json`` under the current directory and each of its parents (NVFlare runs site code inside
   the site's workspace).
3. ``MEDPFL_DATA_ROOT``: a folder holding one sub-folder per site, ``<root>/<site>/datalist.json`` (or, without
   that file, ``<root>/<site>/`` as a class-per-folder tree).

The file::

    {"datalist": "/data/brain_mri/datalist.json", "data": {"image_size": 64, "batch_size": 8}}

``datalist`` is a datalist JSON or class-per-folder root; relative paths resolve against the file's folder.
``data`` holds `DataConfig` overrides. Keys starting with ``_`` are ignored (comments in templates).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from medpfl_app.atomic_io import write_json_atomic
from medpfl_app.data.config import DataConfig
from medpfl_app.data.datalist import DATALIST_NAME
from medpfl_app.errors import MedPFLError

CONFIG_ENV = "MEDPFL_SITE_DATA_CONFIG"
DATA_ROOT_ENV = "MEDPFL_DATA_ROOT"
CONFIG_NAME = "medpfl_data.json"
LOCAL_DIR = "local"
_KEYS = ("datalist", "data")


@dataclass(frozen=True)
class SiteDataSettings:
    """Where one site's data is and how to load it.

    Attributes:
        datalist: A datalist JSON or class-per-folder root (absolute).
        data: Data pipeline settings.
        config_file: The site data configuration file these came from (``None`` for ``MEDPFL_DATA_ROOT``).
    """

    datalist: Path
    data: DataConfig
    config_file: Path | None = None


def resolve_site_data(
    site_name: str,
    *,
    workspace_dir: str | Path | None = None,
    environ: Mapping[str, str] = os.environ,
) -> SiteDataSettings:
    """Find the data configuration of ``site_name`` (see the module docstring for the search order).

    Args:
        site_name: The NVFlare site name (``fl_ctx.get_identity_name()`` / ``flare.get_site_name()``).
        workspace_dir: The site's workspace folder; ``None`` searches from the current directory upwards.
        environ: Environment variables to read (injectable for tests).

    Returns:
        The site's data settings.

    Raises:
        MedPFLError: If nothing is found (listing every place looked at and how to write the file), or the file
            found is invalid or names a datalist that does not exist.
    """
    looked_at: list[str] = []
    explicit = environ.get(CONFIG_ENV, "").strip()
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise MedPFLError(
                f"{CONFIG_ENV} points to {path}, which is not a file",
                fix=f"write the site data configuration there ({_example()}) or unset {CONFIG_ENV}",
                site=site_name,
            )
        return read_site_data_config(path, site=site_name)
    looked_at.append(f"${CONFIG_ENV} (not set)")

    for candidate in _local_candidates(workspace_dir):
        if candidate.is_file():
            return read_site_data_config(candidate, site=site_name)
        looked_at.append(str(candidate))

    root = environ.get(DATA_ROOT_ENV, "").strip()
    if root:
        site_dir = Path(root).expanduser().resolve() / site_name
        datalist = site_dir / DATALIST_NAME
        if datalist.is_file():
            return SiteDataSettings(datalist=datalist, data=DataConfig(), config_file=None)
        if site_dir.is_dir():  # a class-per-folder tree without a datalist
            return SiteDataSettings(datalist=site_dir, data=DataConfig(), config_file=None)
        looked_at.append(f"${DATA_ROOT_ENV}/{site_name}/{DATALIST_NAME} = {datalist}")
    else:
        looked_at.append(f"${DATA_ROOT_ENV} (not set)")

    places = "\n    ".join(looked_at)
    target = (Path(workspace_dir) if workspace_dir is not None else Path("<site workspace>")) / LOCAL_DIR / CONFIG_NAME
    raise MedPFLError(
        f"no data configuration found for site {site_name!r}; looked at:\n    {places}",
        fix=f"write {target} containing {_example()} (relative paths resolve against that file's folder), "
        f"or set {CONFIG_ENV}=/path/to/{CONFIG_NAME}, or set {DATA_ROOT_ENV}=/data so that "
        f"/data/{site_name}/{DATALIST_NAME} exists",
        site=site_name,
    )


def read_site_data_config(path: str | Path, *, site: str | None = None) -> SiteDataSettings:
    """Read one site data configuration file and check that its datalist exists.

    Raises:
        MedPFLError: On unreadable or invalid JSON, unknown keys, bad data settings, or a missing datalist.
    """
    path = Path(path).expanduser().resolve()
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise MedPFLError(
            f"cannot read site data configuration {path}: {error}",
            fix="check that the file exists and is readable UTF-8 JSON",
            site=site,
        ) from None
    except json.JSONDecodeError as error:
        raise MedPFLError(
            f"site data configuration {path} is not valid JSON: {error.msg} at line {error.lineno}, "
            f"column {error.colno}",
            fix=f"correct it; the expected form is {_example()}",
            site=site,
        ) from None
    if not isinstance(content, dict) or not isinstance(content.get("datalist"), str) or not content["datalist"]:
        raise MedPFLError(
            f"site data configuration {path} has no 'datalist' path",
            fix=f"write it as {_example()}",
            site=site,
        )
    unknown = sorted(key for key in content if key not in _KEYS and not key.startswith("_"))
    if unknown:
        raise MedPFLError(
            f"site data configuration {path} has unknown key(s): {', '.join(unknown)}",
            fix=f"use only {' and '.join(_KEYS)} (keys starting with '_' are comments), as in {_example()}",
            site=site,
        )
    overrides = content.get("data") or {}
    if not isinstance(overrides, dict):
        raise MedPFLError(
            f"site data configuration {path}: 'data' must be an object of data settings, got {overrides!r}",
            fix='write e.g. "data": {"image_size": 64, "batch_size": 8}',
            site=site,
        )
    try:
        data = DataConfig.from_dict(overrides)
    except MedPFLError as error:
        raise MedPFLError(f"site data configuration {path}: {error.problem}", fix=error.fix, site=site) from None
    datalist = Path(content["datalist"]).expanduser()
    if not datalist.is_absolute():
        datalist = path.parent / datalist
    datalist = datalist.resolve()
    if not datalist.exists():
        raise MedPFLError(
            f"site data configuration {path} names datalist {datalist}, which does not exist",
            fix="correct 'datalist' (relative paths resolve against the configuration file's folder) or create "
            "the data there",
            site=site,
        )
    return SiteDataSettings(datalist=datalist, data=data, config_file=path)


def write_site_data_config(path: str | Path, datalist: str | Path, data: DataConfig | None = None) -> Path:
    """Write a site data configuration file atomically.

    Args:
        path: The file to write, usually ``<site workspace>/local/medpfl_data.json``.
        datalist: The site's datalist JSON or class-folder root, stored as given: a relative path is later
            resolved against ``path``'s folder.
        data: Data settings to store; ``None`` stores none (defaults apply).

    Returns:
        The written path.
    """
    content = {"datalist": str(datalist), "data": data.to_dict() if data is not None else {}}
    return write_json_atomic(path, content)


def _local_candidates(workspace_dir: str | Path | None) -> list[Path]:
    if workspace_dir is not None:
        return [Path(workspace_dir).expanduser().resolve() / LOCAL_DIR / CONFIG_NAME]
    here = Path.cwd().resolve()
    return [folder / LOCAL_DIR / CONFIG_NAME for folder in (here, *here.parents)]


def _example() -> str:
    return '{"datalist": "/data/brain_mri/datalist.json", "data": {"image_size": 64, "batch_size": 8}}'
