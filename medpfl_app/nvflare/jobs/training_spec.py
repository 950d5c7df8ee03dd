"""What every site runs each round, as frozen, validated data (the site entry's command line)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from medpfl_app.errors import MedPFLError
from medpfl_app.models.networks import NETWORKS


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
        site_overrides: Per-site training settings, ``"SITE:KEY=VALUE[,KEY=VALUE]"`` with keys ``batch_size``,
            ``max_steps``, ``local_epochs``, ``learning_rate`` (e.g. the demo's high-risk site).
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
    site_overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from medpfl_app.nvflare.site.client import parse_site_overrides

        object.__setattr__(self, "site_overrides", tuple(self.site_overrides))
        parse_site_overrides(self.site_overrides)  # raises MedPFLError on a malformed entry
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
        """The site entry's command line (``medpfl_app.nvflare.site.client``); DP-SGD flags only when it is on."""
        items = asdict(self)
        overrides = items.pop("site_overrides")
        if not self.dp_sgd:
            items = {key: value for key, value in items.items() if not key.startswith("dp_")}
        args = [f"--{key} {value}" for key, value in items.items()]
        args += [f"--site_override {value}" for value in overrides]
        return " ".join(args)
