"""What a MedPFL job is, as frozen, validated data; the builder turns a spec into an NVFlare job folder."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from medpfl_app.errors import MedPFLError
from medpfl_app.models.networks import NETWORKS

_JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


@dataclass(frozen=True)
class TrainingSpec:
    """Local training that every site runs each round; where its data lives stays site-local.

    Args:
        network: Registered network name.
        num_classes: Number of classes; every site's labels must lie in [0, num_classes).
        image_size: Square input size every site resizes to (the global model's shapes may depend on it).
        in_channels: Image channels every site converts to.
        learning_rate: Local optimizer learning rate.
        optimizer: ``adam`` or ``sgd``.
        local_epochs: Local epochs per round.
        max_steps: Cap on local optimizer steps per round (-1: no cap).
        batch_size: Batch size for every site (0: each site's own configured batch size).
        seed: Seed of the initial global model and of local shuffling.
        dp_noise_multiplier: > 0 turns on sample-level DP-SGD (Opacus) at every site with this noise multiplier;
            BatchNorm is then replaced by GroupNorm in the global model too.
        dp_max_grad_norm: Per-sample gradient clipping norm for DP-SGD.
        dp_delta: δ for which sites report the DP-SGD ε.
    """

    network: str = "small_cnn"
    num_classes: int = 4
    image_size: int = 64
    in_channels: int = 1
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    local_epochs: int = 1
    max_steps: int = -1
    batch_size: int = 0
    seed: int = 0
    dp_noise_multiplier: float = 0.0
    dp_max_grad_norm: float = 1.0
    dp_delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise MedPFLError(f"unknown network {self.network!r}", fix=f"use one of: {', '.join(NETWORKS.names())}")
        if self.num_classes < 2:
            raise MedPFLError(f"num_classes must be >= 2, got {self.num_classes}", fix="set num_classes >= 2")
        if not self.learning_rate > 0:
            raise MedPFLError(f"learning_rate must be > 0, got {self.learning_rate}", fix="set a positive rate")
        if self.local_epochs < 1:
            raise MedPFLError(f"local_epochs must be >= 1, got {self.local_epochs}", fix="set local_epochs >= 1")
        if self.max_steps == 0 or self.max_steps < -1:
            raise MedPFLError(f"max_steps must be -1 or >= 1, got {self.max_steps}", fix="use -1 for no cap")
        if self.dp_noise_multiplier < 0 or not self.dp_max_grad_norm > 0 or not 0 < self.dp_delta < 1:
            raise MedPFLError(
                "DP-SGD needs dp_noise_multiplier >= 0, dp_max_grad_norm > 0 and 0 < dp_delta < 1",
                fix="use dp_noise_multiplier 0 to turn DP-SGD off, or e.g. 1.0 / 1.0 / 1e-5",
            )
        if self.batch_size < 0:
            raise MedPFLError(f"batch_size must be >= 0, got {self.batch_size}", fix="use 0 for the site's own")

    @property
    def dp_sgd(self) -> bool:
        return self.dp_noise_multiplier > 0

    def script_args(self) -> str:
        """The site entry's command line (``medpfl_app.training.site_entry``); DP-SGD flags only when it is on."""
        items = asdict(self)
        if not self.dp_sgd:
            items = {key: value for key, value in items.items() if not key.startswith("dp_")}
        return " ".join(f"--{key} {value}" for key, value in items.items())


@dataclass(frozen=True)
class JobSpec:
    """A FedAvg job over N sites with optional client and server filter chains on the ``train`` task.

    Args:
        name: Job folder and NVFlare job name.
        description: One line for ``jobs/README.md``.
        num_rounds: FedAvg rounds.
        min_clients: Sites that must join before training starts.
        training: What each site runs.
        client_result_filters: ``{"path": ..., "args": {...}}`` filters applied by every site to its update.
        server_result_filters: Filters the server applies to every received update.
        server_data_filters: Filters the server applies to every outgoing global model.
        scope: Privacy scope requested from the sites' ``privacy.json`` (None: each site's default scope).
        end_run_readiness_timeout: Seconds the server waits at the end for components that are not done.
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

    def __post_init__(self) -> None:
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
RECEIVED_UPDATE_RECORDER = {"path": "medpfl_app.filters.received.ReceivedUpdateRecorder", "args": {}}
DEMO_TRAINING = TrainingSpec(learning_rate=3e-3, local_epochs=3)

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
            client_result_filters=(
                {"path": "medpfl_app.filters.noise.LaplaceNoiseFilter", "args": {"scale": 0.01}},
            ),
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
                {"path": "medpfl_app.filters.batchnorm.DropBatchNormStatsFilter", "args": {}},
                {
                    "path": "medpfl_app.filters.client_dp.ClientDPFilter",
                    "args": {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-05, "epsilon_max": 30.0},
                },
            ),
            server_result_filters=(RECEIVED_UPDATE_RECORDER,),
        ),
        JobSpec(
            name="fedavg_dp_sgd",
            description=(
                "Training-side defense: sample-level DP-SGD through Opacus at every site (noise multiplier 1.0, "
                "per-sample clip 1.0, BatchNorm replaced by GroupNorm); (ε, δ)-DP at sample level, ε in the update meta."
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
        JobSpec(
            name="fedavg_densenet121",
            description="FedAvg of MONAI DenseNet121 over 3 sites, 3 rounds (needs >= 32 px images; slow on CPU).",
            training=TrainingSpec(network="densenet121", learning_rate=1e-4),
            server_result_filters=(RECEIVED_UPDATE_RECORDER,),
        ),
    )
}
