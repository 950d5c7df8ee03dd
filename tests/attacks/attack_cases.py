"""Tiny seeded victims and images shared by the attack tests (imported by name: tests/attacks is on sys.path)."""

from __future__ import annotations

import torch
from torch import nn

from medpfl_app.attacks.simulated_site import init_uniform_
from medpfl_app.models import build_network

SIZE = 16


def phantom(seed: int, size: int = SIZE, channels: int = 1) -> torch.Tensor:
    """A smooth brain-like test image ``(1, C, size, size)`` in [0, 1]: an ellipse with a bright blob."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    cx, cy, level = (torch.rand(3, generator=generator) - 0.5) * 0.8
    image = ((xx**2 / 0.7 + yy**2 / 0.9) < 0.8).float() * (0.5 + level / 2)
    image = image + ((xx - cx) ** 2 + (yy - cy) ** 2 < 0.08).float() * 0.4
    return image.clamp(0, 1).expand(channels, -1, -1)[None].clone()


def sigmoid_lenet(size: int = SIZE, num_classes: int = 4, seed: int = 0) -> nn.Module:
    """The seed paper's sigmoid LeNet with its U(−0.5, 0.5) initialisation."""
    torch.manual_seed(seed)
    return init_uniform_(
        build_network("lenet_sigmoid", in_channels=1, num_classes=num_classes, image_size=size), seed=seed
    )


class SigmoidBNNet(nn.Module):
    """A tiny sigmoid network with one BatchNorm layer, for the BN-statistics attacks."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.Sigmoid()
        self.fc = nn.Linear(8 * (SIZE // 2) ** 2, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.act(self.bn(self.conv(images))), 1))
