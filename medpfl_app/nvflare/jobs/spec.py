"""What a MedPFL job is, as frozen, validated data, and the catalog of MedPFL's jobs.

`medpfl_app.nvflare.jobs.recipe` turns a spec into an NVFlare ``FedAvgRecipe``; the builder exports it as a job folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.jobs.training_spec import TrainingSpec

_JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


@dataclass(frozen=True)
class JobSpec:
    """A FedAvg job over N sites with optional client and server filter chains on the ``train`` task.

    Args:
        name: Job folder and NVFlare job name.
        description: One line for ``jobs/README.md``.
        num_rounds: FedAvg rounds.
        min_clients: Sites that must join before training starts.
        training: What each site runs.
        client_result_filters: ``{"path": ..., "args": {...}}`` filters applied by every site to its update, in
            order (the recipe builds each as ``path(**args)``; its arguments must export back unchanged).
        server_result_filters: Filters the server applies to every received update.
        server_data_filters: Filters the server applies to every outgoing global model.
        scope: Privacy scope requested from the sites' ``privacy.json`` (None: each site's default scope).
        end_run_readiness_timeout: Seconds the server waits at the end for components that are not done.
        client_components: ``{"id": ..., "path": ..., "args": {...}}`` components added to every site's app
            (e.g. the audit's site scorer).
        client_end_run_readiness_timeout: Seconds each site waits at the end for its components (None: NVFlare's).
        launch_external_process: Run the site script as an external process launched by the client job
            (NVFlare's ``ClientAPIExecutor(execution_mode="external_process")``) instead of inside the client job
            process (default). The audit's site scorer works in both modes.
        preflight: Arguments of the pre-flight workflow that runs before round 1
            (`medpfl_app.nvflare.preflight.controller.PreflightController`: ``refuse_high_risk``,
            ``probe_time_limit_s``, ``time_limit_s``, ``what_ifs``); None: no pre-flight.
    """

    name: str
    description: str
    num_rounds: int = 3
    min_clients: int = 3
    training: TrainingSpec = field(default_factory=TrainingSpec)
    client_result_filters: tuple[dict[str, Any], ...] = ()
    server_result_filters: tuple[dict[str, Any], ...] = ()
    server_data_filters: tuple[dict[str, Any], ...] = ()
    scope: str | None = None
    end_run_readiness_timeout: float | None = None
    client_components: tuple[dict[str, Any], ...] = ()
    client_end_run_readiness_timeout: float | None = None
    launch_external_process: bool = False
    preflight: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.launch_external_process, bool):
            raise MedPFLError(
                f"job {self.name}: launch_external_process must be true or false, got {self.launch_external_process!r}",
                fix="set launch_external_process to true (external process) or false (in the client job process)",
            )
        ids = [component.get("id") for component in self.client_components]
        if any(not isinstance(i, str) or not i for i in ids) or len(set(ids)) != len(ids):
            raise MedPFLError(f"job {self.name}: every client component needs a unique 'id'", fix="add unique ids")
        if not _JOB_NAME.match(self.name):
            raise MedPFLError(
                f"job name {self.name!r} is not a valid folder name",
                fix="use lower-case letters, digits, '-' and '_'",
            )
        if self.num_rounds < 1 or self.min_clients < 1:
            raise MedPFLError(
                f"job {self.name}: num_rounds and min_clients must be >= 1",
                fix="set num_rounds >= 1 and min_clients >= 1",
            )


#: Server-side, read-only: records each received update's defense history and training facts (never blocks).
RECEIVED_UPDATE_RECORDER: dict[str, Any] = {
    "path": "medpfl_app.nvflare.filters.received.ReceivedUpdateRecorder",
    "args": {},
}
DEMO_TRAINING = TrainingSpec(learning_rate=3e-3, local_epochs=3)
#: The seed paper's heuristic defense, and client-level DP (clip, Gaussian noise, RDP ε at δ=1e-5, refused past 30).
LAPLACE_FILTER: dict[str, Any] = {
    "path": "medpfl_app.nvflare.filters.noise.LaplaceNoiseFilter",
    "args": {"scale": 0.01},
}
CLIENT_DP_FILTER: dict[str, Any] = {
    "path": "medpfl_app.nvflare.filters.client_dp.ClientDPFilter",
    "args": {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-05, "epsilon_max": 30.0},
}

#: The server-side audit: a read-only global-weights cache on outgoing models, the audit filter on
#: received updates, and each site's scorer component (ground truth stays at the site).
AUDIT_WEIGHTS_CACHE: dict[str, Any] = {
    "path": "medpfl_app.nvflare.server.global_weights.GlobalWeightsCache",
    "args": {},
}
AUDIT_FILTER: dict[str, Any] = {"path": "medpfl_app.nvflare.server.audit_filter.AuditFilter", "args": {}}
AUDIT_SITE_SCORER: dict[str, Any] = {
    "id": "medpfl_audit_scorer",
    "path": "medpfl_app.nvflare.site.scorer.AuditSiteScorer",
    "args": {},
}
#: Client-side, read-only, LAST in the result chain: records the digest of the update as it leaves the site, so the
#: site's scorer answers only for its own sent updates (site privacy.json filters run before job filters).
AUDIT_SENT_DIGEST: dict[str, Any] = {"path": "medpfl_app.nvflare.filters.sent_digest.SentUpdateDigest", "args": {}}
#: Audited jobs train the seed paper's sigmoid LeNet at 32 px with plain SGD, and site-1 is the literature's
#: high-risk configuration (one image per step, one local step per round) next to two ordinary sites.
AUDIT_HIGH_RISK_SITE = "site-1"
AUDIT_TRAINING = TrainingSpec(
    network="lenet_sigmoid",
    image_size=32,
    optimizer="sgd",
    learning_rate=0.05,
    local_epochs=1,
    site_overrides=(f"{AUDIT_HIGH_RISK_SITE}:batch_size=1,max_steps=1",),
)

#: Audited jobs open with the pre-flight: each site's coarse facts and a short probe attack per site before round 1
#: (the report's first section); it refuses nothing unless a job sets ``refuse_high_risk``.
AUDIT_PREFLIGHT: dict[str, Any] = {"probe_time_limit_s": 5.0, "time_limit_s": 60.0}
PREFLIGHT_SENTENCE = (
    "Before round 1 a pre-flight check (each site's coarse facts, a probe attack on synthetic data) writes "
    "preflight.json, the report's first section."
)


def audited(
    name: str,
    description: str,
    client_result_filters: tuple[dict[str, Any], ...] = (),
    *,
    demo_thumbnails: bool = False,
    on_high_risk: str = "report",
    num_rounds: int = 2,
    launch_external_process: bool = False,
    preflight: dict[str, Any] | None = None,
) -> JobSpec:
    """A FedAvg job with the server-side audit on (see `AUDIT_TRAINING` for the sites' training).

    Args:
        name: Job name.
        description: One line for ``jobs/README.md``.
        client_result_filters: The sites' defenses; `AUDIT_SENT_DIGEST` is appended after them, last.
        demo_thumbnails: Store the reconstructions (server) and release matching originals (sites) for the
            report's thumbnails. Only for jobs meant for the synthetic demo data: reconstructions of real data
            are patient data, and each site still refuses originals of anything but the demo set.
        on_high_risk: The audit's policy action (`medpfl_app.nvflare.server.audit_filter.AuditFilter`): ``report``,
            ``stop_job`` or ``exclude_site``.
        num_rounds: FedAvg rounds.
        launch_external_process: Run the site script as an external process (`JobSpec.launch_external_process`).
        preflight: Pre-flight arguments (default `AUDIT_PREFLIGHT`: before round 1, report only).
    """
    # A 16-update queue holds every update of a 5-round, 3-site job (LeNet updates are ~10k parameters); the
    # default 8 makes the last round's updates "not_audited: queue full" on a 2-core machine.
    # The audit rebuilds the network from the job's own model, never from what a site declares.
    model = {key: getattr(AUDIT_TRAINING, key) for key in ("network", "image_size", "in_channels", "num_classes")}
    audit_filter = {**AUDIT_FILTER, "args": {**AUDIT_FILTER["args"], "max_queue": 16, "model": model}}
    scorer = AUDIT_SITE_SCORER
    if on_high_risk != "report":
        audit_filter = {**audit_filter, "args": {**audit_filter["args"], "on_high_risk": on_high_risk}}
    if demo_thumbnails:
        audit_filter = {**audit_filter, "args": {**audit_filter["args"], "store_reconstructions": True}}
        scorer = {**AUDIT_SITE_SCORER, "args": {**AUDIT_SITE_SCORER["args"], "release_demo_originals": True}}
    return JobSpec(
        name=name,
        description=f"{description} {PREFLIGHT_SENTENCE}",
        num_rounds=num_rounds,
        training=AUDIT_TRAINING,
        client_result_filters=(*client_result_filters, AUDIT_SENT_DIGEST),
        server_result_filters=(RECEIVED_UPDATE_RECORDER, audit_filter),
        server_data_filters=(AUDIT_WEIGHTS_CACHE,),
        client_components=(scorer,),
        end_run_readiness_timeout=300.0,
        client_end_run_readiness_timeout=300.0,
        launch_external_process=launch_external_process,
        preflight=AUDIT_PREFLIGHT if preflight is None else preflight,
    )


JOB_CATALOG: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec(
            name="fedavg_small_cnn",
            description="FedAvg of a small CNN over 3 sites, 3 rounds, no job-level defense (the baseline).",
            training=DEMO_TRAINING,
            server_result_filters=(RECEIVED_UPDATE_RECORDER,),
        ),
        JobSpec(
            name="fedavg_laplace",
            description=(
                "Job-level defense: every site adds Laplace noise b=0.01 to its update (the seed paper's defense; "
                "heuristic, no formal guarantee)."
            ),
            training=DEMO_TRAINING,
            client_result_filters=(LAPLACE_FILTER,),
            server_result_filters=(RECEIVED_UPDATE_RECORDER,),
        ),
        JobSpec(
            name="fedavg_client_dp",
            description=(
                "Job-level defense: BN statistics stay local, then client-level DP (clip L2 1.0, Gaussian z=1.0, "
                "RDP-accounted ε at δ=1e-5, refused beyond ε=30): (ε, δ)-DP at client level."
            ),
            training=DEMO_TRAINING,
            client_result_filters=(
                {"path": "medpfl_app.nvflare.filters.batchnorm.DropBatchNormStatsFilter", "args": {}},
                CLIENT_DP_FILTER,
            ),
            server_result_filters=(RECEIVED_UPDATE_RECORDER,),
        ),
        JobSpec(
            name="fedavg_dp_sgd",
            description=(
                "Training-side defense: sample-level DP-SGD through Opacus at every site (noise multiplier 1.0, "
                "per-sample clip 1.0, BatchNorm replaced by GroupNorm); (ε, δ)-DP at sample level, ε in the update meta "
                "and carried over jobs in each site's <workspace>/medpfl/dp_sgd_ledger.json."
            ),
            training=replace(DEMO_TRAINING, dp_noise_multiplier=1.0, dp_max_grad_norm=1.0),
            server_result_filters=(RECEIVED_UPDATE_RECORDER,),
        ),
        JobSpec(
            name="fedavg_site_strict",
            description=(
                "Site-enforced defense: no job filters; asks for the sites' `strict` privacy scope, whose filters "
                "each site's privacy.json installs and no job can disable."
            ),
            training=DEMO_TRAINING,
            server_result_filters=(RECEIVED_UPDATE_RECORDER,),
            scope="strict",
        ),
        audited(
            "fedavg_audit",
            "Server-side audit, no defense: every received update is screened and attacked whole (labels, "
            "gradient-inversion ladder), scored at its site, and written to the audit ledger; site-1 trains one "
            "image per round. "
            "For the synthetic demo data only: the report shows the reconstructions (stored 0600) under the "
            "originals the sites release for demo data.",
            demo_thumbnails=True,
        ),
        audited(
            "fedavg_audit_laplace",
            "Server-side audit of the seed paper's Laplace noise (b=0.01 on every update; heuristic, no formal "
            "guarantee); site-1 trains one image per round.",
            (LAPLACE_FILTER,),
        ),
        audited(
            "fedavg_audit_client_dp",
            "Server-side audit of client-level DP (clip L2 1.0, Gaussian z=1.0, RDP ε at δ=1e-5): the audit "
            "attacks the noised updates exactly as received; site-1 trains one image per round.",
            (CLIENT_DP_FILTER,),
        ),
        audited(
            "fedavg_audit_exclude",
            "Server-side audit with the exclude_site policy, no defense, 4 rounds: once the audit rates a site's "
            "update high risk, that site's later updates are still audited but kept out of aggregation (ledger and "
            "report say so; the job stops if no site is left). The audit runs behind training, so the exclusion "
            "starts from the first update received after the finding; site-1 trains one image per round.",
            on_high_risk="exclude_site",
            num_rounds=4,
        ),
        JobSpec(
            name="fedavg_densenet121",
            description="FedAvg of MONAI DenseNet121 over 3 sites, 3 rounds (needs >= 32 px images; slow on CPU).",
            training=TrainingSpec(network="densenet121", learning_rate=1e-4),
            server_result_filters=(RECEIVED_UPDATE_RECORDER,),
        ),
    )
}
