"""Validate and install a site privacy policy (``<site>/local/privacy.json``) with MedPFL filters.

Site-scope filters run before any job filter and a job cannot disable them (NVFlare privacy manager). The policy is
checked twice before it is written: structurally here (every filter path importable and constructible with its
args, one clear error otherwise), then by NVFlare's own parser on a scratch copy.

Budget integrity: the shipped template has DP scopes only (``private``, the default, and ``strict``); a scope
without client-level DP exists only if the site admin writes one (installing a policy whose default scope has no
DP logs a warning). Every ``ClientDPFilter`` of one policy must charge the same ledger (one ``ledger_path``, or
none): two ledgers would split the site's budget.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from medpfl_app.atomic_io import write_text_atomic
from medpfl_app.errors import MedPFLError

logger = logging.getLogger("medpfl.privacy")

#: The client-level DP filter: a scope with it releases only (ε, δ)-DP updates charged to the site's ledger.
DP_FILTER_PATH = "medpfl_app.nvflare.filters.client_dp.ClientDPFilter"
#: Named policies shipped inside the package (package data, so they exist in any installation, not only a checkout).
TEMPLATES = {"default": importlib.resources.files("medpfl_app.nvflare.filters") / "templates" / "privacy.json"}
_SCOPE_KEYS = {"name", "properties", "task_data_filters", "task_result_filters"}
_FILTER_KEYS = {"path", "args", "direction"}
_DIRECTIONS = {"in", "out", "inout"}


def load_privacy_template(template: str | os.PathLike[str] = "default") -> dict[str, Any]:
    """Read a policy: ``"default"`` (the MedPFL template) or a path to a privacy.json file."""
    path = TEMPLATES.get(str(template), Path(template))
    if not path.is_file():
        raise MedPFLError(
            f"privacy policy template {str(template)!r} not found ({path})",
            fix=f"use one of {sorted(TEMPLATES)} or the path of a privacy.json file",
        )
    try:
        policy = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise MedPFLError(f"{path} is not valid JSON: {error}", fix="fix the JSON syntax") from None
    if not isinstance(policy, dict):
        raise MedPFLError(f"{path} must hold a JSON object", fix='start from {"scopes": [...], "default_scope": ...}')
    return policy


def _build_filter(entry: object, where: str) -> object:
    from nvflare.apis.filter import Filter

    if not isinstance(entry, dict):
        raise MedPFLError(f"{where} must be an object with path/args", fix='write {"path": "...", "args": {...}}')
    unknown = set(entry) - _FILTER_KEYS
    if unknown:
        raise MedPFLError(
            f"{where} has unsupported keys {sorted(unknown)}",
            fix='use only "path", "args", "direction" (NVFlare 2.8+ rejects "name")',
        )
    path, args = entry.get("path"), entry.get("args", {})
    if not isinstance(path, str) or "." not in path:
        raise MedPFLError(
            f"{where}: path must be a dotted class path, got {path!r}",
            fix='e.g. "medpfl_app.nvflare.filters.client_dp.ClientDPFilter"',
        )
    if not isinstance(args, dict):
        raise MedPFLError(f"{where}: args must be an object, got {type(args).__name__}", fix="write args as {...}")
    direction = entry.get("direction")
    if direction is not None and (not isinstance(direction, str) or direction.lower() not in _DIRECTIONS):
        raise MedPFLError(
            f"{where}: direction must be in/out/inout, got {direction!r}",
            fix="omit direction (client default) or use in/out/inout",
        )
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise MedPFLError(
            f"{where}: cannot import {path}: {error}",
            fix="install medpfl_app at the site (pip install) or correct the path",
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Filter)):
        raise MedPFLError(f"{where}: {path} is not an NVFlare Filter", fix="point path at a Filter subclass")
    try:
        return cls(**args)
    except MedPFLError as error:
        raise MedPFLError(f"{where} ({path}): {error.problem}", fix=error.fix) from None
    except Exception as error:
        raise MedPFLError(
            f"{where} ({path}): cannot be built with args {args}: {error}",
            fix="correct the args to match the filter's constructor",
        ) from None


def validate_privacy_policy(policy: dict[str, Any]) -> list[str]:
    """Check a privacy policy and build every filter once; return the scope names.

    Raises:
        MedPFLError: naming the first problem (scope, chain, filter index) and how to fix it.
    """
    unknown = set(policy) - {"scopes", "default_scope", "components"}
    if unknown:
        raise MedPFLError(
            f"privacy.json has unknown top-level keys {sorted(unknown)}", fix='use "scopes" and "default_scope"'
        )
    scopes = policy.get("scopes")
    if not isinstance(scopes, list) or not scopes:
        raise MedPFLError("privacy.json needs a non-empty scopes list", fix='add "scopes": [{"name": ..., ...}]')
    names: list[str] = []
    for index, scope in enumerate(scopes):
        if not isinstance(scope, dict) or not isinstance(scope.get("name"), str) or not scope["name"]:
            raise MedPFLError(f"scope #{index} needs a non-empty string name", fix='add "name": "private"')
        name = scope["name"]
        if name in names:
            raise MedPFLError(f"scope {name!r} is defined twice", fix="give every scope a unique name")
        names.append(name)
        extra = set(scope) - _SCOPE_KEYS
        if extra:
            raise MedPFLError(
                f"scope {name!r} has unsupported keys {sorted(extra)}",
                fix=f"use only {sorted(_SCOPE_KEYS)}; scope filters have no task list",
            )
        if not isinstance(scope.get("properties", {}), dict):
            raise MedPFLError(f"scope {name!r}: properties must be an object", fix="write properties as {...}")
        for chain in ("task_data_filters", "task_result_filters"):
            entries = scope.get(chain, [])
            if not isinstance(entries, list):
                raise MedPFLError(f"scope {name!r}: {chain} must be a list", fix=f'write "{chain}": [...]')
            for position, entry in enumerate(entries):
                _build_filter(entry, f"scope {name!r} {chain}[{position}]")
    default = policy.get("default_scope")
    if default is not None and default not in names:
        raise MedPFLError(
            f"default_scope {default!r} is not one of the scopes {names}",
            fix="set default_scope to a defined scope name",
        )
    ledger_paths = {entry.get("args", {}).get("ledger_path") for entry in _dp_filters(policy)}
    if len(ledger_paths) > 1:
        raise MedPFLError(
            f"the ClientDPFilter entries of this policy charge different ledgers {sorted(map(str, ledger_paths))}; "
            "two ledgers would split the site's ε budget",
            fix="set the same ledger_path in every scope, or leave it unset everywhere (the site's default ledger)",
        )
    return names


def _dp_filters(policy: dict[str, Any], scope_name: str | None = None) -> list[dict[str, Any]]:
    return [
        entry
        for scope in policy.get("scopes", [])
        if isinstance(scope, dict) and (scope_name is None or scope.get("name") == scope_name)
        for entry in scope.get("task_result_filters", [])
        if isinstance(entry, dict) and entry.get("path") == DP_FILTER_PATH
    ]


def dp_scopes(policy: dict[str, Any]) -> list[str]:
    """The scopes of ``policy`` whose result filters include client-level DP (``ClientDPFilter``)."""
    return [
        scope["name"]
        for scope in policy.get("scopes", [])
        if isinstance(scope, dict) and "name" in scope and _dp_filters(policy, scope["name"])
    ]


def _check_with_nvflare(text: str) -> None:
    """Parse the policy with NVFlare's own privacy configurator on a scratch workspace."""
    from nvflare.apis.workspace import Workspace
    from nvflare.private.fed.app.fl_conf import create_privacy_manager

    with tempfile.TemporaryDirectory() as scratch:
        for folder in ("startup", "local"):
            os.mkdir(os.path.join(scratch, folder))
        Path(scratch, "local", "privacy.json").write_text(text, encoding="utf-8")
        try:
            create_privacy_manager(Workspace(scratch, "medpfl-check"), names_only=False)
        except Exception as error:
            raise MedPFLError(
                f"NVFlare rejects the privacy policy: {error}",
                fix="compare with medpfl_app/nvflare/filters/templates/privacy.json",
            ) from None


def install_privacy_policy(
    site_dir: str | os.PathLike[str],
    template: str | os.PathLike[str] = "default",
    *,
    default_scope: str | None = None,
) -> Path:
    """Validate a policy and write it atomically to ``<site_dir>/local/privacy.json``.

    An existing, different privacy.json is kept as ``privacy.json.<UTC time>.bak``. The site process reads the
    policy at start: restart the site (e.g. ``medpfl poc stop`` / ``start``) for it to apply; ``show_scopes client``
    in the admin console then lists the scopes.

    Args:
        site_dir: The site's workspace folder (the one holding ``startup/``), e.g.
            ``<poc workspace>/example_project/prod_00/site-1``.
        template: ``"default"`` (scopes ``private``, the default, and ``strict``: both client-level DP) or a path
            to a privacy.json file.
        default_scope: Override the policy's ``default_scope`` (must be one of its scopes).

    Returns:
        The path written.
    """
    site = Path(site_dir)
    if not (site / "startup").is_dir():
        raise MedPFLError(
            f"{site} is not an NVFlare site workspace (no startup/ folder)",
            fix="pass the site folder, e.g. <poc workspace>/example_project/prod_00/site-1, after "
            "`nvflare poc prepare`",
        )
    policy = load_privacy_template(template)
    if default_scope is not None:
        policy["default_scope"] = default_scope
    validate_privacy_policy(policy)
    if policy.get("default_scope") not in dp_scopes(policy):
        logger.warning(
            "the default scope %r of this privacy policy has no client-level DP (ClientDPFilter): jobs that name no "
            "scope release updates without a DP guarantee; the MedPFL template's default is 'private'",
            policy.get("default_scope"),
        )
    text = json.dumps(policy, indent=2, ensure_ascii=False) + "\n"
    _check_with_nvflare(text)
    target = site / "local" / "privacy.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and target.read_text(encoding="utf-8") != text:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        shutil.copy2(target, target.with_name(f"privacy.json.{stamp}.bak"))
    write_text_atomic(target, text, durable=True)
    return target
