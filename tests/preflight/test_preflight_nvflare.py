"""The pre-flight's NVFlare adapters without a running system: the site executor's reply and the controller."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from nvflare.apis.client import Client
from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from medpfl_app.audit.preflight import site_risk_facts
from medpfl_app.contracts.preflight import FACTS_KEY, PREFLIGHT_TASK
from medpfl_app.nvflare.preflight.controller import PreflightController, _reply_data
from medpfl_app.nvflare.preflight.executor import PROBLEM_KEY, PreflightExecutor, scope_defenses

SCRIPT_ARGS = (
    "--network lenet_sigmoid --num_classes 4 --image_size 16 --in_channels 1 --learning_rate 0.05 --optimizer sgd "
    "--local_epochs 1 --max_steps -1 --batch_size 0 --seed 0 --site_override site-1:batch_size=1,max_steps=1"
)


def _context(site: str) -> FLContext:
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    return fl_ctx


@pytest.fixture(scope="module")
def site_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medpfl_app.data.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("preflight_sites")
    generate_demo_dataset(root, num_sites=1, train_per_site=8, val_per_site=4, image_size=16, seed=0)
    return root


def test_the_site_replies_with_counts_and_settings_only(site_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDPFL_DATA_ROOT", str(site_data))
    monkeypatch.setenv("MEDPFL_SITE_WORKSPACE", str(site_data / "no-workspace"))
    monkeypatch.delenv("MEDPFL_SITE_DATA_CONFIG", raising=False)

    reply = PreflightExecutor(SCRIPT_ARGS).execute(PREFLIGHT_TASK, Shareable(), _context("site-1"), Signal())

    dxo = from_shareable(reply)
    assert dxo.data_kind == DataKind.METRICS
    facts = dxo.data[FACTS_KEY]
    assert facts["site"] == "site-1" and facts["num_train_images"] == 8
    assert (facts["batch_size"], facts["local_steps"]) == (1, 1)  # the job's per-site override
    assert "datalist" not in json.dumps(facts) and str(site_data) not in json.dumps(facts)


def test_a_site_without_data_replies_with_its_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDPFL_DATA_ROOT", raising=False)
    monkeypatch.delenv("MEDPFL_SITE_DATA_CONFIG", raising=False)
    monkeypatch.setenv("MEDPFL_SITE_WORKSPACE", str(tmp_path))

    reply = PreflightExecutor(SCRIPT_ARGS).execute(PREFLIGHT_TASK, Shareable(), _context("site-7"), Signal())

    assert "no data configuration" in from_shareable(reply).data[PROBLEM_KEY]


def test_scope_defenses_are_read_from_the_site_privacy_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from nvflare.app_common.filters.exclude_vars import ExcludeVars
    from nvflare.private.privacy_manager import PrivacyManager, PrivacyService, Scope

    from medpfl_app.nvflare.filters.batchnorm import DropBatchNormStatsFilter
    from medpfl_app.nvflare.filters.client_dp import ClientDPFilter

    scope = Scope()
    scope.set_name("strict")
    for chain_filter in (
        DropBatchNormStatsFilter(),
        ClientDPFilter(clip_norm=2.0, noise_multiplier=1.5),
        ExcludeVars(["x"]),
    ):
        scope.add_task_result_filter(chain_filter, "out")
    monkeypatch.setattr(PrivacyService, "manager", PrivacyManager([scope], "strict", None))

    declared = scope_defenses(_context("site-1"))

    assert [d.key for d in declared] == ["drop_bn_stats", "client_dp", "other:ExcludeVars"]
    assert declared[1].params == {"clip_norm": 2.0, "noise_multiplier": 1.5}


def test_reply_data_reads_only_metrics_dicts() -> None:
    good = DXO(DataKind.METRICS, data={FACTS_KEY: {"a": 1}}).to_shareable()

    assert _reply_data(good) == {FACTS_KEY: {"a": 1}}
    assert _reply_data(None) == {} and _reply_data(Shareable()) == {}


class _Recorder:
    def __init__(self) -> None:
        self.panics: list[str] = []


def _run_controller(tmp_path: Path, replies: dict[str, Shareable], monkeypatch: pytest.MonkeyPatch, **kwargs):
    controller = PreflightController(task_script_args=SCRIPT_ARGS, min_clients=len(replies), **kwargs)
    recorder = _Recorder()

    def broadcast_and_wait(task: Task, fl_ctx, min_responses, abort_signal=None, **_):
        for site, result in replies.items():
            client_task = ClientTask(Client(site, None), task)
            client_task.result = result
            task.client_tasks.append(client_task)

    monkeypatch.setattr(controller, "broadcast_and_wait", broadcast_and_wait)
    monkeypatch.setattr(controller, "system_panic", lambda reason, fl_ctx: recorder.panics.append(reason))
    workspace = SimpleNamespace(get_run_dir=lambda job_id: str(tmp_path / job_id))
    fl_ctx = FLContext()
    fl_ctx.set_prop(
        ReservedKey.ENGINE,
        SimpleNamespace(
            get_workspace=lambda: workspace,
            fire_event=lambda *args: None,
            get_clients=lambda: [Client(site, None) for site in [*replies, "site-9"]],
        ),
        private=False,
        sticky=False,
    )
    fl_ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=False, sticky=False)
    controller.control_flow(Signal(), fl_ctx)
    written = tmp_path / "job-1" / "medpfl" / "preflight.json"
    return (json.loads(written.read_text()) if written.exists() else None), recorder.panics


def _facts_reply(site: str, batch_size: int) -> Shareable:
    facts = site_risk_facts(site, [6, 6, 6, 6], batch_size=batch_size, local_epochs=1, max_steps=1)
    return DXO(DataKind.METRICS, data={FACTS_KEY: facts.to_json()}).to_shareable()


@pytest.mark.slow
def test_the_controller_writes_the_preflight_and_refuses_only_by_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies = {
        "site-1": _facts_reply("site-1", 1),
        "site-2": DXO(DataKind.METRICS, data={PROBLEM_KEY: "no data configuration"}).to_shareable(),
        "site-3": Shareable(),
    }
    # A probe limit far beyond the iteration budget: the verdict rests on iterations, not on the machine's speed.
    written, panics = _run_controller(
        tmp_path, replies, monkeypatch, refuse_high_risk=True, probe_time_limit_s=1e6, time_limit_s=1e6, what_ifs=False
    )

    assert written is not None and written["schema"] == "medpfl.preflight/1"
    by_site = {entry["site"]: entry for entry in written["sites"]}
    assert "no data configuration" in by_site["site-2"]["problem"]
    assert by_site["site-3"]["problem"] == "the site could not compute its facts: its reply held no pre-flight facts"
    assert by_site["site-1"]["level"] == "high", by_site["site-1"]["summary"]
    assert by_site["site-9"]["problem"] == "the site sent no pre-flight facts"  # connected, silent
    assert written["refused"] and panics and "site-1" in panics[0]


def test_without_the_policy_a_high_site_does_not_stop_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("medpfl_app.nvflare.preflight.controller.PreflightController._assess", _fake_high)

    written, panics = _run_controller(tmp_path, {"site-1": _facts_reply("site-1", 1)}, monkeypatch)

    assert written is not None and written["high_risk_sites"] == ["site-1"] and not written["refused"]
    assert panics == []


def test_a_failing_assessment_never_stops_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, replies, problems, connected):
        raise RuntimeError("probe crashed")

    monkeypatch.setattr("medpfl_app.nvflare.preflight.controller.PreflightController._assess", broken)

    written, panics = _run_controller(
        tmp_path, {"site-1": _facts_reply("site-1", 1)}, monkeypatch, refuse_high_risk=True
    )

    assert written is None and panics == []


def _fake_high(self, replies, problems, connected):
    from medpfl_app.audit.preflight import JobPreflight, JobTraining, ProbeResult, SitePreflight
    from medpfl_app.contracts.preflight import SiteRiskFacts
    from medpfl_app.contracts.verdict import RiskLevel, Verdict

    probe = ProbeResult(Verdict(RiskLevel.HIGH, "reconstructed"), 0.99, 1.0, 1.0, "gradinv", 1, 0.1)
    facts = SiteRiskFacts.from_json(replies["site-1"])
    job = JobTraining(network="lenet_sigmoid")
    return JobPreflight(
        job=job, sites=(SitePreflight("site-1", facts, probe=probe),), refuse_high_risk=self.refuse_high_risk
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"refuse_high_risk": "yes"}, "refuse_high_risk must be true or false"),
        ({"probe_time_limit_s": 0}, "probe_time_limit_s must be a positive number"),
        ({"min_clients": True}, "min_clients must be a positive number"),
    ],
)
def test_a_hand_edited_controller_argument_is_refused_at_construction(args: dict, words: str) -> None:
    from medpfl_app.errors import MedPFLError

    with pytest.raises(MedPFLError, match=words):
        PreflightController(task_script_args=SCRIPT_ARGS, **args)
