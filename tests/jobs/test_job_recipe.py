"""The Recipe API build says exactly what each spec says: same filters, arguments, tasks, rounds, sites, model, script
arguments and scope; an argument the exporter could not write back unchanged is refused before anything is written."""

from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from nvflare.apis.filter import Filter
from nvflare.fuel.utils.class_utils import get_component_init_parameters

from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.jobs import JOB_CATALOG, JobSpec
from medpfl_app.nvflare.jobs.builder import export_job

REPO = Path(__file__).resolve().parents[2]


def _with_defaults(path: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` as the class sees them: the exporter leaves out arguments equal to their default."""
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    parameters = get_component_init_parameters(cls.__new__(cls))  # the exporter's view: the whole class hierarchy
    defaults = {key: p.default for key, p in parameters.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **args}


def _same_components(exported: list[dict], declared: tuple[dict, ...]) -> bool:
    return [f["path"] for f in exported] == [f["path"] for f in declared] and all(
        _with_defaults(e["path"], e["args"]) == _with_defaults(d["path"], d.get("args", {}))
        for e, d in zip(exported, declared)
    )


def _chain(config: dict, key: str, default_direction: str) -> list[dict]:
    """The filters of the one ``train`` chain (none: no chain); its direction is NVFlare's default for ``key``."""
    chains = config[key]
    if not chains:
        return []
    (chain,) = chains
    assert chain["tasks"] == ["train"] and chain.get("direction", default_direction) == default_direction, chain
    return chain["filters"]


def _check_preflight(spec, workflows: list[dict], executors: list[dict]) -> None:
    """The pre-flight workflow (first) and the sites' executor of its task only, both with the job's script args."""
    if spec.preflight is None:
        assert workflows == [] and executors == []
        return
    (workflow,) = workflows
    (executor,) = executors
    assert workflow["path"] == "medpfl_app.nvflare.preflight.controller.PreflightController"
    args = workflow["args"]
    assert args["task_script_args"] == spec.training.script_args() and args["min_clients"] == spec.min_clients
    assert args["job_defenses"] == [dict(entry) for entry in spec.client_result_filters]
    assert {key: args[key] for key in spec.preflight} == spec.preflight
    assert executor["tasks"] == ["medpfl_preflight"]  # an exact name: routed before the training executor's "*"
    assert executor["executor"]["args"] == {"task_script_args": spec.training.script_args()}


@pytest.mark.parametrize("name", sorted(JOB_CATALOG))
def test_every_committed_job_expresses_its_spec(name: str) -> None:
    spec, job = JOB_CATALOG[name], REPO / "jobs" / name
    meta = json.loads((job / "meta.json").read_text())
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    client = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    assert (meta["min_clients"], meta.get("scope"), meta["description"]) == (
        spec.min_clients,
        spec.scope,
        spec.description,
    )
    *preflight, workflow = server["workflows"]  # the pre-flight, when the job has one, runs first
    fedavg = _with_defaults(workflow["path"], workflow["args"])
    assert (fedavg["num_rounds"], fedavg["num_clients"], fedavg["task_name"]) == (
        spec.num_rounds,
        spec.min_clients,
        "train",
    )
    persistor = next(c for c in server["components"] if c["id"] == "persistor")
    model = persistor["args"]["model"]
    training = spec.training
    expected_model = {
        "network": training.network,
        "in_channels": training.in_channels,
        "num_classes": training.num_classes,
    }
    expected_model |= {"image_size": training.image_size, "seed": training.seed, "dp_sgd": training.dp_sgd}
    assert _with_defaults(model["path"], model["args"]) == expected_model
    executor, *preflight_executor = client["executors"]
    assert executor["tasks"] == ["*"]  # executors take patterns; filter chains do not
    _check_preflight(spec, preflight, preflight_executor)
    runner = executor["executor"]["args"]
    assert runner["task_script_args"] == training.script_args()
    assert runner["execution_mode"] == ("external_process" if spec.launch_external_process else "in_process")
    assert _same_components(_chain(client, "task_result_filters", "out"), spec.client_result_filters)
    assert _same_components(_chain(server, "task_result_filters", "in"), spec.server_result_filters)
    assert _same_components(_chain(server, "task_data_filters", "out"), spec.server_data_filters)
    assert client["task_data_filters"] == []
    ours = [c for c in client["components"] if c["path"].startswith("medpfl_app.")]
    assert [c["id"] for c in ours] == [c["id"] for c in spec.client_components]
    assert _same_components(ours, spec.client_components)
    assert server.get("end_run_readiness_timeout") == spec.end_run_readiness_timeout
    assert client.get("end_run_readiness_timeout") == spec.client_end_run_readiness_timeout


class RenamingFilter(Filter):
    """Keeps its argument under another name: the exporter would silently drop it."""

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__()
        self._scaled_strength = strength * 2

    def process(self, shareable, fl_ctx):
        return shareable


#: Another name for the same class: the exporter would write the defining name, not this one.
AliasFilter = RenamingFilter


def _small_job(**changes: Any) -> JobSpec:
    return replace(JOB_CATALOG["fedavg_small_cnn"], name="bad_filter", **changes)


def test_an_argument_that_would_not_export_unchanged_is_refused(tmp_path: Path) -> None:
    renaming = {"path": f"{__name__}.RenamingFilter", "args": {"strength": 0.5}}
    with pytest.raises(
        MedPFLError, match=r"job bad_filter: .*RenamingFilter argument strength=0.5 would not be exported"
    ):
        export_job(_small_job(client_result_filters=(renaming,)), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"path": "medpfl_app.nvflare.filters.noise.NoSuchFilter", "args": {}}, r"cannot import .*NoSuchFilter"),
        (
            {"path": f"{__name__}.AliasFilter", "args": {}},
            r"\S+\.AliasFilter is defined as \S+\.RenamingFilter; the job folder would name it differently",
        ),
        (
            {"path": "medpfl_app.nvflare.filters.noise.LaplaceNoiseFilter", "args": {"scale": -1.0}},
            r"LaplaceNoiseFilter refuses its arguments \{'scale': -1.0\}",
        ),
        (
            {"path": "medpfl_app.nvflare.filters.noise.LaplaceNoiseFilter", "args": {"sigma": 1.0}},
            r"LaplaceNoiseFilter refuses its arguments",
        ),
    ],
)
def test_a_bad_filter_entry_is_one_clear_error_naming_job_and_file(tmp_path: Path, entry: dict, expected: str) -> None:
    with pytest.raises(MedPFLError, match=r"job bad_filter: app/config/config_fed_client.json: " + expected) as error:
        export_job(_small_job(client_result_filters=(entry,)), tmp_path)
    assert error.value.fix
    assert list(tmp_path.iterdir()) == []
