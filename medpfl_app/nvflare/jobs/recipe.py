"""A `JobSpec` as an NVFlare 2.9 ``FedAvgRecipe``: the PyTorch FedAvg recipe plus MedPFL's filters and components.

Everything a job says is expressed through the Recipe API: the model, rounds, sites, site script and DIFF transfer
(constructor), the filter chains on ``train`` (``add_client_output_filter`` / ``add_server_input_filter`` /
``add_server_output_filter``, always with an explicit task list: a ``"*"`` chain is never applied), the privacy
scope (``set_recipe_meta``) and the end-of-run grace (``add_server_config`` / ``add_client_config``). Three things
the 2.9 Recipe API has no public call for go through `MedPFLFedAvgRecipe`, each in one small method that says why.

Filters and components are built as instances of their classes from the spec's ``{"path", "args"}`` entries; the
exporter writes an instance's class by its defining module and its arguments by reading the attributes named like
its constructor parameters (defaults are left out). `build_component` checks that both survive that round trip,
so a path or an argument is never changed or dropped silently.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from nvflare.apis.job_def import JobMetaKey
from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
from nvflare.client.config import TransferType
from nvflare.recipe.utils import set_recipe_meta

from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.jobs.builder import SITE_SCRIPT_NAME
from medpfl_app.nvflare.jobs.check import AUDIT_FILTER_PATH, check_audit_filter_args
from medpfl_app.nvflare.jobs.spec import JobSpec

TRAIN_TASK = "train"
#: Filters run only on these tasks: NVFlare looks chains up by the exact "<task>/<direction>".
FILTER_TASKS = (TRAIN_TASK,)
#: Where each part of the spec lands in the exported folder (named in errors).
SERVER_CONFIG = "app/config/config_fed_server.json"
CLIENT_CONFIG = "app/config/config_fed_client.json"
_MISSING = object()
SERVER_TARGET = "server"
PREFLIGHT_WORKFLOW_ID = "medpfl_preflight"
PREFLIGHT_CONTROLLER_PATH = "medpfl_app.nvflare.preflight.controller.PreflightController"
PREFLIGHT_EXECUTOR_PATH = "medpfl_app.nvflare.preflight.executor.PreflightExecutor"


class MedPFLFedAvgRecipe(FedAvgRecipe):  # type: ignore[misc]  # NVFlare ships no type information
    """NVFlare's PyTorch ``FedAvgRecipe`` with the three job settings its public API does not offer."""

    def set_app_packages(self, packages: list[str]) -> None:
        """Packages installed at every site and the server: the exporter must not copy them into ``custom/``.

        The recipe builds its FedJob itself and exposes no ``set_app_packages``; this is the FedJob's own call.
        """
        self._job.set_app_packages(packages)

    def add_client_component(self, component: Any, component_id: str) -> None:
        """A component in every site's app under a fixed id.

        No public Recipe call adds client components; NVFlare's own recipe helpers
        (``nvflare.recipe.utils.add_experiment_tracking``) use this same method.
        """
        self._add_to_client_apps(component, id=component_id)

    def add_first_workflow(self, controller: Any, workflow_id: str) -> None:
        """A server workflow that runs before the recipe's FedAvg (NVFlare runs workflows in list order).

        The recipe adds FedAvg in its constructor and FedJob's ``to_server`` only appends: this appends, then moves
        the new workflow to the front of the server app's list.
        """
        self._job.to_server(controller, id=workflow_id)
        workflows = self._job._deploy_map[SERVER_TARGET].app_config.workflows
        workflows.insert(0, workflows.pop())

    def add_client_executor(self, executor: Any, tasks: list[str]) -> None:
        """An executor for named tasks in every site's app (the recipe's training executor keeps every other task:
        NVFlare routes an exact task name before patterns)."""
        self._add_to_client_apps(executor, tasks=tasks)

    def set_description(self, description: str) -> None:
        """The job's one-line purpose as a top-level ``meta.json`` key (read by the reports).

        ``set_recipe_meta`` refuses keys outside NVFlare's user-settable set, and FedJob takes extra meta keys only
        as its constructor's ``meta_props``, which the recipe builds without: this writes to that same store.
        """
        job_config = self._job.job
        job_config.meta_props = {**(job_config.meta_props or {}), "description": description}


def build_recipe(spec: JobSpec) -> MedPFLFedAvgRecipe:
    """The recipe for ``spec``; components are built (and their arguments checked) here, before any export."""
    from medpfl_app.models.global_model import GlobalNetwork

    training = spec.training
    recipe = MedPFLFedAvgRecipe(
        name=spec.name,
        model=GlobalNetwork(
            network=training.network,
            in_channels=training.in_channels,
            num_classes=training.num_classes,
            image_size=training.image_size,
            seed=training.seed,
            dp_sgd=training.dp_sgd,
        ),
        min_clients=spec.min_clients,
        num_rounds=spec.num_rounds,
        train_script=SITE_SCRIPT_NAME,
        train_args=training.script_args(),
        params_transfer_type=TransferType.DIFF,
        # The external process is `python3 -u custom/medpfl_site.py ...` in the site's app folder; it needs
        # medpfl_app installed for that python3, like the client itself.
        launch_external_process=spec.launch_external_process,
        key_metric="accuracy",
    )
    recipe.set_app_packages(["medpfl_app"])
    recipe.set_description(spec.description)
    if spec.scope:
        set_recipe_meta(recipe, JobMetaKey.SCOPE, spec.scope)
    job, tasks = spec.name, list(FILTER_TASKS)
    for entry in spec.client_result_filters:
        recipe.add_client_output_filter(build_component(entry, job=job, where=CLIENT_CONFIG), tasks=tasks)
    for entry in spec.server_result_filters:
        recipe.add_server_input_filter(build_component(entry, job=job, where=SERVER_CONFIG), tasks=tasks)
    for entry in spec.server_data_filters:
        recipe.add_server_output_filter(build_component(entry, job=job, where=SERVER_CONFIG), tasks=tasks)
    for entry in spec.client_components:
        recipe.add_client_component(build_component(entry, job=job, where=CLIENT_CONFIG), entry["id"])
    if spec.preflight is not None:
        _add_preflight(recipe, spec)
    if spec.end_run_readiness_timeout is not None:
        recipe.add_server_config({"end_run_readiness_timeout": spec.end_run_readiness_timeout})
    if spec.client_end_run_readiness_timeout is not None:
        recipe.add_client_config({"end_run_readiness_timeout": spec.client_end_run_readiness_timeout})
    return recipe


def _add_preflight(recipe: MedPFLFedAvgRecipe, spec: JobSpec) -> None:
    """The pre-flight workflow before FedAvg and each site's executor of its task."""
    from medpfl_app.contracts.preflight import PREFLIGHT_TASK

    script_args = spec.training.script_args()
    controller = {
        "path": PREFLIGHT_CONTROLLER_PATH,
        "args": {
            "task_script_args": script_args,
            "job_defenses": [dict(entry) for entry in spec.client_result_filters],
            "min_clients": spec.min_clients,
            **dict(spec.preflight or {}),
        },
    }
    executor = {"path": PREFLIGHT_EXECUTOR_PATH, "args": {"task_script_args": script_args}}
    recipe.add_first_workflow(build_component(controller, job=spec.name, where=SERVER_CONFIG), PREFLIGHT_WORKFLOW_ID)
    recipe.add_client_executor(build_component(executor, job=spec.name, where=CLIENT_CONFIG), [PREFLIGHT_TASK])


def build_component(entry: Mapping[str, Any], *, job: str, where: str) -> Any:
    """An instance of ``entry["path"]`` built with ``entry["args"]``, exported back to exactly those arguments.

    Raises:
        MedPFLError: The class cannot be imported, refuses its arguments, or would export different ones.
    """
    path, args = entry["path"], dict(entry.get("args", {}))
    if path == AUDIT_FILTER_PATH:  # the audit's plan and policy get their detailed messages
        check_audit_filter_args(args, job=job, where=where)
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise MedPFLError(
            f"job {job}: {where}: cannot import {path}: {error}",
            fix="name an installed class by its full module path (e.g. medpfl_app.nvflare.filters.noise.LaplaceNoiseFilter)",
        ) from None
    defined_at = f"{cls.__module__}.{cls.__qualname__}"
    if defined_at != path:  # the exporter writes the defining module, and path-based checks must see that name
        raise MedPFLError(
            f"job {job}: {where}: {path} is defined as {defined_at}; the job folder would name it differently",
            fix=f"name the class by its defining module: {defined_at}",
        )
    try:
        component = cls(**args)
    except (MedPFLError, TypeError, ValueError) as error:
        problem = getattr(error, "problem", str(error))
        raise MedPFLError(
            f"job {job}: {where}: {class_name} refuses its arguments {args}: {problem}",
            fix=getattr(error, "fix", None) or f"correct the arguments of {class_name} in the job's spec",
        ) from None
    _check_round_trip(component, args, job=job, where=where)
    return component


def _check_round_trip(component: Any, args: dict[str, Any], *, job: str, where: str) -> None:
    # The exporter writes an argument only from an attribute of the same name (or "_name") holding a JSON builtin;
    # anything else would reach the site as a default or as a nested component instead of the value asked for.
    parameters = inspect.signature(type(component).__init__).parameters
    attributes = vars(component)
    for key, value in args.items():
        stored = attributes.get(key, attributes.get(f"_{key}", _MISSING))
        exportable = stored is None or type(stored).__module__ == "builtins"
        if key in ("name", "args", "kwargs") or key not in parameters or not exportable or stored != value:
            raise MedPFLError(
                f"job {job}: {where}: {type(component).__name__} argument {key}={value!r} would not be exported "
                f"as given (stored as {'nothing' if stored is _MISSING else repr(stored)})",
                fix=f"store constructor argument {key} unchanged as self.{key} (derived state under another name)",
            )
