"""Site privacy policy: the shipped template is valid for NVFlare, installs atomically, bad policies are refused."""

from __future__ import annotations

import copy
import json

import pytest
from nvflare.apis.workspace import Workspace
from nvflare.private.fed.app.fl_conf import create_privacy_manager

from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.filters.batchnorm import DropBatchNormStatsFilter
from medpfl_app.nvflare.filters.client_dp import ClientDPFilter
from medpfl_app.nvflare.filters.reference import GlobalModelRecorder
from medpfl_app.nvflare.privacy_policy import (
    dp_scopes,
    install_privacy_policy,
    load_privacy_template,
    validate_privacy_policy,
)


def _site(tmp_path):
    site = tmp_path / "site-1"
    (site / "startup").mkdir(parents=True)
    return site


def test_default_template_installs_and_nvflare_builds_every_scope(tmp_path) -> None:
    """private < strict, default private, both client-level DP (no public scope); NVFlare's own parser builds the
    MedPFL filters of each scope."""
    site = _site(tmp_path)
    written = install_privacy_policy(site)
    assert written == site / "local" / "privacy.json"
    assert json.loads(written.read_text()) == load_privacy_template("default")
    manager = create_privacy_manager(Workspace(str(site), "site-1"), names_only=False)
    assert set(manager.name_to_scopes) == {"private", "strict"}
    assert manager.default_scope.name == "private"
    assert dp_scopes(load_privacy_template()) == ["private", "strict"]
    levels = [manager.get_scope(n).props["medpfl_protection"] for n in ("private", "strict")]
    assert levels == sorted(levels) and len(set(levels)) == 2
    for name in ("private", "strict"):
        scope = manager.get_scope(name)
        out = scope.task_result_filters["out"]
        assert [type(f) for f in out] == [DropBatchNormStatsFilter, ClientDPFilter]
        assert isinstance(scope.task_data_filters["in"][0], GlobalModelRecorder)
    assert (
        manager.get_scope("strict").task_result_filters["out"][1].noise_multiplier
        > manager.get_scope("private").task_result_filters["out"][1].noise_multiplier
    )
    assert not list((site / "local").glob("*.tmp"))


def test_reinstall_keeps_a_different_existing_policy_as_backup(tmp_path) -> None:
    """Nothing is lost: a hand-edited privacy.json is copied aside before the new one replaces it."""
    site = _site(tmp_path)
    (site / "local").mkdir()
    (site / "local" / "privacy.json").write_text('{"scopes": []}')
    install_privacy_policy(site, default_scope="strict")
    backups = list((site / "local").glob("privacy.json.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == '{"scopes": []}'
    assert json.loads((site / "local" / "privacy.json").read_text())["default_scope"] == "strict"


def _mutated(edit):
    policy = copy.deepcopy(load_privacy_template())
    edit(policy)
    return policy


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda p: p["scopes"][0]["task_result_filters"].append({"path": "medpfl_app.nvflare.filters.nope.X"}),
            "cannot import",
        ),
        (lambda p: p["scopes"][1]["task_result_filters"][1]["args"].update(clip_norm=0), "clip_norm"),
        (lambda p: p["scopes"][0]["task_result_filters"][0].update(name="x"), "unsupported keys"),
        (lambda p: p.update(default_scope="secret"), "default_scope"),
        (lambda p: p["scopes"].append(copy.deepcopy(p["scopes"][0])), "defined twice"),
        (lambda p: p["scopes"][0]["task_result_filters"].append({"path": "json.JSONDecoder"}), "not an NVFlare Filter"),
        (lambda p: p["scopes"][0].update(tasks=["train"]), "unsupported keys"),
        (
            lambda p: p["scopes"][0]["task_result_filters"][1]["args"].update(ledger_path="other.json"),
            "different ledgers",
        ),
    ],
    ids=[
        "unknown-path",
        "bad-args",
        "name-key",
        "unknown-default",
        "duplicate",
        "not-a-filter",
        "task-list",
        "split-ledgers",
    ],
)
def test_bad_policies_are_refused_with_one_clear_error(edit, match) -> None:
    """Each mistake yields a MedPFLError naming the scope/filter and the fix."""
    with pytest.raises(MedPFLError, match=match):
        validate_privacy_policy(_mutated(edit))


def test_nothing_is_written_for_a_bad_policy_or_a_non_site_folder(tmp_path) -> None:
    """A refused policy leaves the site untouched; a folder without startup/ is not a site."""
    site = _site(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_mutated(lambda p: p.update(default_scope="nope"))))
    with pytest.raises(MedPFLError):
        install_privacy_policy(site, bad)
    assert not (site / "local" / "privacy.json").exists()
    with pytest.raises(MedPFLError, match="not an NVFlare site"):
        install_privacy_policy(tmp_path / "elsewhere")
    with pytest.raises(MedPFLError, match="not found"):
        install_privacy_policy(site, "no-such-template")


def test_installed_private_scope_defends_a_full_weights_result_end_to_end(tmp_path) -> None:
    """The NVFlare-built 'private' scope: task data recorded, BN stats dropped, local − global clipped and noised,
    ε charged to <site>/medpfl/client_dp_ledger.json and written to the meta."""
    import numpy as np
    from nvflare.apis.dxo import DXO, DataKind, from_shareable
    from nvflare.apis.fl_constant import FLContextKey, ReservedKey
    from nvflare.apis.fl_context import FLContext

    site = _site(tmp_path)
    install_privacy_policy(site)
    scope = create_privacy_manager(Workspace(str(site), "site-1"), names_only=False).get_scope("private")

    class _Engine:
        def get_workspace(self) -> Workspace:
            return Workspace(str(site), "site-1")

        def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
            del event_type, fl_ctx

    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, _Engine(), private=True, sticky=True)
    ctx.set_prop(ReservedKey.RUN_NUM, "job-7", private=False, sticky=True)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, "site-1", private=False, sticky=True)
    ctx.set_prop(FLContextKey.TASK_ID, "t-1", private=True, sticky=False)
    rng = np.random.default_rng(0)
    global_model = {
        "fc.weight": rng.normal(size=(3, 4)).astype(np.float32),
        "bn.running_mean": np.zeros(4, np.float32),
        "bn.running_var": np.ones(4, np.float32),
    }
    data = DXO(DataKind.WEIGHTS, global_model).to_shareable()
    for f in scope.task_data_filters["in"]:
        data = f.process(data, ctx)
    local = {k: v + 0.5 for k, v in global_model.items()}
    result = DXO(DataKind.WEIGHTS, local).to_shareable()
    for f in scope.task_result_filters["out"]:
        result = f.process(result, ctx)
    out = from_shareable(result)
    assert set(out.data) == {"fc.weight"}
    assert [e["defense"] for e in out.meta["medpfl_defenses"]] == ["drop_bn_stats", "client_dp"]
    dp = out.meta["medpfl_defenses"][1]
    assert dp["applied_to"] == "difference to recorded global model" and dp["epsilon_total"] > 0
    ledger = json.loads((site / "medpfl" / "client_dp_ledger.json").read_text())
    assert ledger["history"] == [[1.0, 1.0, 1]] and ledger["releases"][0]["job_id"] == "job-7"
