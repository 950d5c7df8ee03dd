"""A malicious site in a real NVFlare simulator run tries to use the honest sites' audit scorers as oracles.

Three sites train the audited job (`medpfl_app.nvflare.jobs.spec.audited`) for two rounds on the tiny demo set; site-3 is
malicious: a client component shipped in the job (``app/custom/medpfl_malicious_site.py``) that, after each of its
own training tasks, sends score requests to site-1's and site-2's scorers over NVFlare's auxiliary channel, once
under its own name and then claiming the server's identity name in its peer context (which NVFlare lets a sender
write), replays that request several times, and tries to release their end-of-run wait. Every reply it gets is
written to its run folder. The job must finish; the honest sites' ledger records must be audited and scored; each
malicious act must be refused and logged at the victim.

Site-3 also corrupts what it sends, through a job-shipped result filter ahead of the digest filter (so it "really
sent" the corruption): in round 0 its training facts claim ``batch_size = 1e9`` and a NaN learning rate; in round 1
its update carries a NaN weight. The server must record each (``not_audited: invalid meta``, ``rejected_non_finite``)
and keep the NaN update out of aggregation, while the honest sites are audited and scored as usual. Flooding the
audit queue cannot be staged here (FedAvg takes one result per site and round); `test_audit_filter_abuse.py` tests
the per-site queue share.

What the simulator cannot stage, tested at unit level in ``test_scorer_access.py``: replaying the *server's* own
request (a client never sees it: server-to-site messages are not delivered to other sites), malformed arrays from
the server, and a sender that forges the cellnet origin (NVFlare's server authenticates origins in secure mode
only; the simulator runs unauthenticated, so the guarantee there holds against NVFlare's own APIs).

In both runs a read-only server probe filter (``app/custom/medpfl_digest_probe.py``) records the digest of each
update as it arrived, computed as the audit does; it must equal what the site recorded at send. The first run uses
the audited jobs' wire format (``params_exchange_format: pytorch`` in the script, NVFlare's default NumPy on the
wire); a second, honest run sends PyTorch tensors on the wire (``server_expected_format: pytorch``, the server's
persistor without NumPy conversion): the site's filter then digests tensors while the server digests NumPy copies.
Its scoring is an expected failure: `medpfl_app.nvflare.server.receiving.size_refusal` cannot size a tensor (see that test's reason).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from medpfl_app.audit.ledger import find_ledgers, read_ledger
from medpfl_app.audit.round_samples import SENT_FOLDER, SentUpdate
from medpfl_app.data import generate_demo_dataset
from medpfl_app.nvflare.jobs.builder import export_job
from medpfl_app.nvflare.jobs.simulate import SimulationResult, run_simulation
from medpfl_app.nvflare.jobs.spec import audited

pytestmark = [pytest.mark.nvflare_run, pytest.mark.slow]

SITES = ["site-1", "site-2", "site-3"]
ATTACKER = "site-3"
VICTIMS = ["site-1", "site-2"]
ROUNDS = (0, 1)
REPLAYS = 8
RESULTS_FILE = "medpfl_malicious_replies.json"

#: The malicious site's component: only NVFlare's public client APIs, as any site's own code could use them.
MALICIOUS_COMPONENT = '''
import json
import os

import numpy as np
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.shareable import Shareable


class ScorerOracleProbe(FLComponent):
    """After each own training task, ask other sites' scorers for scores, as ourselves and as 'the server'."""

    def __init__(self, attacker="site-3", victims=("site-1", "site-2"), replays=8, results_file="replies.json"):
        super().__init__()
        self.attacker = attacker
        self.victims = list(victims)
        self.replays = replays
        self.results_file = results_file
        self._replies = []
        self._tasks_done = 0

    def handle_event(self, event_type, fl_ctx):
        if event_type != EventType.AFTER_TASK_EXECUTION or fl_ctx.get_identity_name() != self.attacker:
            return
        if fl_ctx.get_prop(FLContextKey.TASK_NAME) == "train":  # not the pre-flight task before round 1
            try:
                self._attack(fl_ctx, self._tasks_done)  # one train task per round: the round just trained
            except Exception as error:
                self._replies.append({"act": "crashed", "error": repr(error)})
            self._tasks_done += 1
            self._save(fl_ctx)

    def _request(self, round_number):
        request = Shareable()
        request["round"] = round_number
        request["update_digest"] = "sha256:" + "0" * 64
        request["reconstructions"] = np.random.rand(1, 1, 32, 32).astype(np.float32)
        request["labels"] = np.zeros(1, np.int64)
        request["ssim_threshold"] = 0.9
        return request

    def _attack(self, fl_ctx, round_number):
        engine = fl_ctx.get_engine()
        peer = fl_ctx.get_peer_context()
        server_name = peer.get_identity_name() if peer is not None else "simulator_server"
        for victim in self.victims:
            with engine.new_context() as ctx:
                self._send(engine, ctx, victim, "medpfl.audit.score", self._request(round_number), "own_name",
                           round_number)
            with engine.new_context() as ctx:
                # The peer props are the sender's to write: claim to be the server.
                ctx.set_prop(ReservedKey.IDENTITY_NAME, server_name, private=False, sticky=False)
                request = self._request(round_number)
                for index in range(1 + self.replays):
                    act = "server_name" if index == 0 else "replay"
                    self._send(engine, ctx, victim, "medpfl.audit.score", Shareable(request), act, round_number)
                self._send(engine, ctx, victim, "medpfl.audit.release", Shareable(), "release", round_number)

    def _send(self, engine, ctx, victim, topic, request, act, round_number):
        replies = engine.send_aux_request(targets=[victim], topic=topic, request=request, timeout=30.0, fl_ctx=ctx)
        reply = (replies or {}).get(victim)
        entry = {"act": act, "victim": victim, "round": round_number, "topic": topic,
                 "claimed": ctx.get_identity_name(), "answered": reply is not None}
        if reply is not None:
            entry["rc"] = reply.get_return_code()
            entry["keys"] = sorted(k for k in reply.keys() if k != "__headers__")
            entry["scores"] = reply.get("scores")
            entry["refused"] = reply.get("refused")
        self._replies.append(entry)

    def _save(self, fl_ctx):
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        with open(os.path.join(run_dir, self.results_file), "w") as handle:
            json.dump(self._replies, handle, indent=1)
'''


#: Site-3's corrupting result filter (job-shipped; a no-op at every other site).
MALICIOUS_FILTER = """
import numpy as np
from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.app_common.app_constant import AppConstants


class CorruptWhatISend(Filter):
    def __init__(self, attacker="site-3"):
        super().__init__()
        self.attacker = attacker

    def process(self, shareable, fl_ctx):
        if fl_ctx.get_identity_name() != self.attacker:
            return shareable
        dxo = from_shareable(shareable)
        round_number = shareable.get_header(AppConstants.CURRENT_ROUND)
        if round_number == 0:
            dxo.meta["batch_size"] = 10**9
            dxo.meta["learning_rate"] = float("nan")
        else:
            name = sorted(dxo.data)[0]
            value = np.array(dxo.data[name], dtype=np.float32, copy=True)
            value.flat[0] = np.nan
            dxo.data[name] = value
        dxo.update_shareable(shareable)
        return shareable
"""


#: A read-only server result filter (first in the chain) that records the digest of each update as it arrived.
SERVER_DIGEST_PROBE = """
import json
import os

from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.app_common.app_constant import AppConstants

from medpfl_app.audit.update_audit import copy_arrays
from medpfl_app.audit.update_digest import update_digest


class ReceivedDigestProbe(Filter):
    def process(self, shareable, fl_ctx):
        data = from_shareable(shareable).data
        line = {
            "site": fl_ctx.get_peer_context().get_identity_name(),
            "round": shareable.get_header(AppConstants.CURRENT_ROUND),
            "types": sorted({type(v).__module__.split(".")[0] for v in data.values()}),
            "digest": update_digest(copy_arrays(data)),  # what the audit filter keeps and digests
        }
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        with open(os.path.join(run_dir, "received_digests.jsonl"), "a") as handle:
            handle.write(json.dumps(line) + "\\n")
        return shareable
"""
RECEIVED_DIGESTS = "received_digests.jsonl"


def _add_server_probe(job: Path) -> None:
    (job / "app" / "custom" / "medpfl_digest_probe.py").write_text(SERVER_DIGEST_PROBE)
    path = job / "app" / "config" / "config_fed_server.json"
    config = json.loads(path.read_text())
    (chain,) = config["task_result_filters"]
    chain["filters"].insert(0, {"path": "medpfl_digest_probe.ReceivedDigestProbe", "args": {}})
    path.write_text(json.dumps(config, indent=4))


def _received_vs_sent(simulation: SimulationResult, sites: list[str]) -> tuple[dict, dict, set]:
    """``(received digests, sent digests, value types)`` by (site, round), from the server probe and the sites."""
    lines = (simulation.server_run_dir / RECEIVED_DIGESTS).read_text().splitlines()
    received = [json.loads(line) for line in lines if line.strip()]
    sent = {}
    for site in sites:
        for path in (simulation.workspace / site / "simulate_job" / SENT_FOLDER).glob("round_*.json"):
            record = SentUpdate.from_dict(json.loads(path.read_text()))
            sent[(record.site, record.round)] = record.digest
    types = {kind for line in received for kind in line["types"]}
    return {(line["site"], line["round"]): line["digest"] for line in received}, sent, types


def _demo(tmp_path_factory: pytest.TempPathFactory, sites: int):
    root = tmp_path_factory.mktemp(f"demo_{sites}")
    return generate_demo_dataset(root, num_sites=sites, train_per_site=16, val_per_site=4, image_size=32, seed=2)


def _export(root: Path, name: str, sites: list[str]) -> Path:
    spec = replace(audited(name, "audited job under attack", num_rounds=len(ROUNDS)), min_clients=len(sites))
    return export_job(spec, root / "jobs")


def _client_config(job: Path) -> tuple[Path, dict]:
    path = job / "app" / "config" / "config_fed_client.json"
    return path, json.loads(path.read_text())


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> SimulationResult:
    """The audited job with site-3's oracle probe, 3 sites x 2 rounds."""
    data = _demo(tmp_path_factory, len(SITES))
    root = tmp_path_factory.mktemp("sim_malicious_site")
    job = _export(root, "sim_malicious_site", SITES)
    (job / "app" / "custom" / "medpfl_malicious_site.py").write_text(MALICIOUS_COMPONENT)
    path, config = _client_config(job)
    config["components"].append(
        {
            "id": "oracle_probe",
            "path": "medpfl_malicious_site.ScorerOracleProbe",
            "args": {"attacker": ATTACKER, "victims": VICTIMS, "replays": REPLAYS, "results_file": RESULTS_FILE},
        }
    )
    (job / "app" / "custom" / "medpfl_corrupt_filter.py").write_text(MALICIOUS_FILTER)
    (chain,) = config["task_result_filters"]
    chain["filters"].insert(0, {"path": "medpfl_corrupt_filter.CorruptWhatISend", "args": {"attacker": ATTACKER}})
    path.write_text(json.dumps(config, indent=4))
    _add_server_probe(job)
    return run_simulation(job, root / "workspace", sites=SITES, timeout_s=900, env={"MEDPFL_DATA_ROOT": str(data.root)})


def _records(simulation: SimulationResult) -> list[dict]:
    (ledger,) = list(find_ledgers(simulation.server_run_dir))
    contents = read_ledger(ledger)
    assert contents.skipped_lines == ()
    return list(contents.records)


def _site_log(simulation: SimulationResult, site: str) -> str:
    return (simulation.workspace / site / "log.txt").read_text(errors="replace")


def _probe_replies(simulation: SimulationResult) -> list[dict]:
    return json.loads((simulation.workspace / ATTACKER / "simulate_job" / RESULTS_FILE).read_text())


def test_the_job_finishes_and_the_honest_sites_scores_are_intact(attacked) -> None:
    records = _records(attacked)
    assert sorted((r["site"], r["round"]) for r in records) == sorted((s, n) for s in SITES for n in ROUNDS)
    for record in records:
        if record["site"] in VICTIMS:
            assert record["status"] == "audited", record["reason"]
            assert record["site_scores"]["status"] == "scored", record["site_scores"]
            assert isinstance(record["site_scores"]["ssim_max"], float)


def test_the_attackers_corrupted_updates_are_recorded_and_the_nan_one_never_aggregated(attacked) -> None:
    """Invalid facts: one not_audited record naming the fact. A NaN weight: rejected, recorded, emptied for FedAvg."""
    by_round = {r["round"]: r for r in _records(attacked) if r["site"] == ATTACKER}
    assert by_round[0]["status"] == "not_audited" and by_round[0]["reason"].startswith("invalid meta (batch_size")
    assert by_round[1]["status"] == "not_audited" and "NaN or Inf" in by_round[1]["reason"]
    assert by_round[1]["policy_action"]["action"] == "rejected_non_finite"
    logs = "".join(path.read_text(errors="replace") for path in attacked.workspace.rglob("log.txt"))
    assert f"Empty result from client {ATTACKER}, skipping" in logs  # NVFlare's FedAvg did not aggregate it


def test_every_malicious_request_was_answered_with_a_refusal_only(attacked) -> None:
    replies = _probe_replies(attacked)
    assert not [r for r in replies if r["act"] == "crashed"], replies
    scored = [r for r in replies if r["topic"] == "medpfl.audit.score"]
    assert len(scored) == len(ROUNDS) * len(VICTIMS) * (2 + REPLAYS), len(scored)
    for reply in scored:
        assert reply["answered"] and reply["rc"] == "OK", reply
        assert reply["keys"] == ["refused", "scores"], reply  # nothing but the refusal
        assert reply["scores"] == {"status": "unavailable", "reason": reply["refused"]}, reply
        assert reply["refused"] == "refused: the request did not come from the server", reply
    # It did write the server's identity name into its peer context for all but the first request to each victim.
    assert {r["claimed"] for r in scored if r["act"] != "own_name"} == {"simulator_server"}
    assert {r["claimed"] for r in scored if r["act"] == "own_name"} == {ATTACKER}
    assert sorted({(r["victim"], r["round"]) for r in scored}) == sorted((v, n) for v in VICTIMS for n in ROUNDS)


def test_each_malicious_act_is_logged_and_counted_at_its_victim(attacked) -> None:
    """One warning line per refused request (no traceback), one per ignored release, a count at the end; the
    server's own requests were all answered."""
    attacker_cell = f"'{ATTACKER}.simulate_job'"
    score_requests = len(ROUNDS) * (2 + REPLAYS)
    for victim in VICTIMS:
        lines = _site_log(attacked, victim).splitlines()
        refused = [line for line in lines if f"MedPFL audit: {victim} refused a score request" in line]
        assert len(refused) == score_requests, refused[:3]
        assert all(f"from cell {attacker_cell}" in line and "[not_server; " in line for line in refused)
        assert sum(f"{victim} ignored a release from cell {attacker_cell}" in line for line in lines) == len(ROUNDS)
        total = score_requests + len(ROUNDS)
        assert any(
            f"{victim} refused {total} score or release requests in this job: {{'not_server': {total}}}" in line
            for line in lines
        )
        # One line each: what follows a refusal is never a traceback (NVFlare prints the end-of-run waits with one)
        follows = [lines[i + 1] for i, line in enumerate(lines[:-1]) if "refused a score request" in line]
        assert not [line for line in follows if "Traceback" in line]
        assert not [line for line in lines if "could not handle" in line]
        answered = [line for line in lines if "scored the server's reconstructions" in line]
        assert len(answered) == len(ROUNDS) and all("from cell 'server" in line for line in answered), answered


def test_the_sites_recorded_what_they_sent(attacked) -> None:
    """Each site's last result filter recorded one digest per round it trained, owner-only, at the site."""
    for site in SITES:
        folder = attacked.workspace / site / "simulate_job" / SENT_FOLDER
        records = [SentUpdate.from_dict(json.loads(p.read_text())) for p in sorted(folder.glob("round_*.json"))]
        assert [r.round for r in records] == list(ROUNDS)
        assert {r.site for r in records} == {site} and all(r.server_identity == "simulator_server" for r in records)
        assert all((p.stat().st_mode & 0o777) == 0o600 for p in folder.iterdir())


@pytest.fixture(scope="module")
def torch_exchange(tmp_path_factory: pytest.TempPathFactory) -> SimulationResult:
    """The audited job, honest, 2 sites x 2 rounds, updates sent as PyTorch tensors instead of NumPy arrays."""
    sites = SITES[:2]
    data = _demo(tmp_path_factory, len(sites))
    root = tmp_path_factory.mktemp("sim_torch_exchange")
    job = _export(root, "sim_torch_exchange", sites)
    path, config = _client_config(job)
    executor, _preflight = config["executors"]  # training ("*") first, then the pre-flight task's executor
    executor["executor"]["args"]["server_expected_format"] = "pytorch"
    path.write_text(json.dumps(config, indent=4))
    # The server then keeps and sends PyTorch tensors too (its persistor would otherwise hand out NumPy arrays).
    server_path = job / "app" / "config" / "config_fed_server.json"
    server = json.loads(server_path.read_text())
    (persistor,) = [c for c in server["components"] if c["id"] == "persistor"]
    persistor["args"]["allow_numpy_conversion"] = False
    server_path.write_text(json.dumps(server, indent=4))
    _add_server_probe(job)
    return run_simulation(job, root / "workspace", sites=sites, timeout_s=900, env={"MEDPFL_DATA_ROOT": str(data.root)})


def test_numpy_exchange_the_server_digests_exactly_what_each_site_recorded_sending(attacked) -> None:
    """NVFlare's default NumPy exchange: the server's digest of each arrival equals the site's digest at send."""
    received, sent, types = _received_vs_sent(attacked, SITES)
    assert types == {"numpy"}
    assert sorted(received) == sorted((s, n) for s in SITES for n in ROUNDS)
    assert received == sent


def test_pytorch_exchange_the_server_digests_exactly_what_each_site_recorded_sending(torch_exchange) -> None:
    """PyTorch exchange: the site's filter digests tensors, the server its NumPy copies of them; they agree."""
    received, sent, types = _received_vs_sent(torch_exchange, SITES[:2])
    assert types == {"torch"}
    assert sorted(received) == sorted((s, n) for s in SITES[:2] for n in ROUNDS)
    assert received == sent


def test_pytorch_exchange_updates_are_scored(torch_exchange) -> None:
    """Updates that travel as torch tensors are audited and scored like NumPy ones."""
    records = _records(torch_exchange)
    assert sorted((r["site"], r["round"]) for r in records) == sorted((s, n) for s in SITES[:2] for n in ROUNDS)
    for record in records:
        assert record["status"] == "audited", record["reason"]
        assert record["site_scores"]["status"] == "scored", record["site_scores"]
    for site in SITES[:2]:
        assert "refused a score request" not in _site_log(torch_exchange, site)
