"""Client-side defenses really run inside NVFlare, and the server sees what was applied to each update."""

from __future__ import annotations

import json

import pytest

from .conftest import SIM_SITES, received_updates

pytestmark = [pytest.mark.nvflare_run, pytest.mark.slow]


def test_server_sees_the_job_filter_chain_on_every_update(simulated_job_defenses) -> None:
    """Laplace → drop BN stats → client DP ran at both sites in both rounds, in that order, installed by the job."""
    records = [r for r in received_updates(simulated_job_defenses.workspace) if r.get("data_kind")]
    assert sorted((r["site"], r["round"]) for r in records) == sorted((s, n) for s in SIM_SITES for n in (0, 1))
    for record in records:
        chain = [entry["defense"] for entry in record["medpfl_defenses"]]
        assert chain == ["laplace_noise", "drop_bn_stats", "client_dp"]
        assert {entry["installed_by"] for entry in record["medpfl_defenses"]} == {"job"}
        assert record["filter_history"][-3:] == ["LaplaceNoiseFilter", "DropBatchNormStatsFilter", "ClientDPFilter"]
        assert not [key for key in record["entries"] if "running_" in key], "BN statistics must not leave the site"
        assert record["training_facts"]["local_steps"] >= 1


def test_client_dp_epsilon_accumulates_per_site(simulated_job_defenses) -> None:
    records = [r for r in received_updates(simulated_job_defenses.workspace) if r.get("data_kind")]
    for site in SIM_SITES:
        costs = [
            next(e for e in r["medpfl_defenses"] if e["defense"] == "client_dp")
            for r in sorted((r for r in records if r["site"] == site), key=lambda r: r["round"])
        ]
        assert costs[0]["epsilon_total"] > 0
        assert costs[1]["epsilon_total"] > costs[0]["epsilon_total"]
        assert costs[0]["guarantee"] == "(ε, δ)-DP at client level"


def test_dp_sgd_sites_report_a_growing_sample_level_epsilon(simulated_dp_sgd) -> None:
    """With Opacus DP-SGD at the sites, every update states its ε, it grows over rounds, and no BN stats travel."""
    records = [r for r in received_updates(simulated_dp_sgd.workspace) if r.get("data_kind")]
    assert sorted((r["site"], r["round"]) for r in records) == sorted((s, n) for s in SIM_SITES for n in (0, 1))
    for site in SIM_SITES:
        facts = [r["training_facts"]["dp_sgd"] for r in sorted(records, key=lambda r: r["round"]) if r["site"] == site]
        assert facts[0]["guarantee"] == "(ε, δ)-DP at sample level"
        assert 0 < facts[0]["epsilon"] < facts[1]["epsilon"]
        assert facts[1]["epsilon_scope"] == "site ledger"
    assert all(not [k for k in r["entries"] if "running_" in k] for r in records)
    # Each site kept its steps in its own workspace's ledger (found from the run folder), one release per round.
    ledgers = {
        path.parent.parent.name: json.loads(path.read_text())
        for path in simulated_dp_sgd.workspace.rglob("medpfl/dp_sgd_ledger.json")
    }
    assert sorted(ledgers) == sorted(SIM_SITES)
    assert all(len(state["releases"]) == 2 for state in ledgers.values())
