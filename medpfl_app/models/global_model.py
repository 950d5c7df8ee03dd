"""The global model as the server persists it: the bare network under ``net.``, without Lightning.

Its state dict has exactly the keys and initial values of `ImageClassifier`'s (both build the network with
`build_seeded_network`), so NVFlare's strict key checks pass, while the server process never imports
pytorch_lightning or torchmetrics (seconds of start-up on every job) just to hold weights.
"""

from __future__ import annotations

import torch
from torch import nn

from medpfl_app.errors import MedPFLError
from medpfl_app.models.networks import build_network


def build_seeded_network(
    network: str, *, in_channels: int, num_classes: int, image_size: int, seed: int, dp_sgd: bool
) -> nn.Module:
    """The registered network with seeded initial weights; DP-SGD-compatible (GroupNorm for BatchNorm) if asked."""
    if not isinstance(dp_sgd, bool):
        raise MedPFLError(f"dp_sgd must be true or false, got {dp_sgd!r}", fix="pass a boolean")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_network(network, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        if dp_sgd:
            from medpfl_app.models.dp_compatible import make_dp_compatible

            # At construction, not at the site's first round: the server builds its initial global model the same
            # way, and NVFlare loads it into the sites with strict key matching.
            net, _ = make_dp_compatible(net)
    return net


class GlobalNetwork(nn.Module):
    """Server-side holder of the global weights (same constructor arguments as `ImageClassifier`'s model part).

    Args are JSON builtins stored under attributes of the same names, for NVFlare's job exporter.
    """

    def __init__(
        self,
        network: str = "small_cnn",
        in_channels: int = 1,
        num_classes: int = 4,
        image_size: int = 64,
        seed: int = 0,
        dp_sgd: bool = False,
    ) -> None:
        super().__init__()
        self.network = network
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = image_size
        self.seed = seed
        self.dp_sgd = dp_sgd
        self.net = build_seeded_network(
            network, in_channels=in_channels, num_classes=num_classes, image_size=image_size, seed=seed, dp_sgd=dp_sgd
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(images)
        return logits
