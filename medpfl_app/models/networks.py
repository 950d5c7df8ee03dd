"""Image-classification networks found by name.

``small_cnn`` and ``lenet_sigmoid`` suit 16–64 px images; ``densenet121`` and ``resnet18`` are MONAI's 2-D
networks with randomly initialised weights (nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from medpfl_app.errors import MedPFLError
from medpfl_app.registry import Registry

NetworkFactory = Callable[..., nn.Module]
NETWORKS: Registry[NetworkFactory] = Registry("network")


def build_network(name: str, *, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build the network registered as ``name`` for square ``image_size`` inputs with ``in_channels`` channels."""
    for label, value in (("in_channels", in_channels), ("num_classes", num_classes), ("image_size", image_size)):
        if int(value) < 1:
            raise MedPFLError(f"{label} must be a positive integer, got {value!r}", fix=f"set a positive {label}")
    if num_classes < 2:
        raise MedPFLError(f"num_classes must be at least 2, got {num_classes}", fix="classify at least two classes")
    return NETWORKS.get(name)(in_channels=in_channels, num_classes=num_classes, image_size=image_size)


@NETWORKS.register("small_cnn")
class SmallCNN(nn.Module):
    """Three conv–BatchNorm–ReLU blocks with max-pooling, global max pooling and a linear head.

    Global max (not average) pooling: lesions cover a few percent of a slice, and averaging washes them out.
    """

    def __init__(self, *, in_channels: int, num_classes: int, image_size: int, width: int = 16) -> None:
        super().__init__()
        del image_size  # global pooling makes the network size-agnostic
        blocks: list[nn.Module] = []
        channels = in_channels
        for out_channels in (width, 2 * width, 4 * width):
            blocks += [
                nn.Conv2d(channels, out_channels, kernel_size=3, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(torch.flatten(self.pool(self.features(images)), 1))
        return logits


@NETWORKS.register("lenet_sigmoid")
class SigmoidLeNet(nn.Module):
    """The sigmoid LeNet of DLG/iDLG/CPL and the seed paper: three 5×5 convolutions with sigmoid, one linear layer.

    Sigmoid activations and no pooling keep the gradient map close to injective, which is why these attacks
    succeed on it; it is the seed paper's victim, not a recommended production model.
    """

    def __init__(self, *, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 12, kernel_size=5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1),
            nn.Sigmoid(),
        )
        half = (image_size + 1) // 2  # two stride-2 convolutions, each ceil(side / 2)
        side = (half + 1) // 2
        self.classifier = nn.Linear(12 * side * side, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(torch.flatten(self.features(images), 1))
        return logits


def _require_min_size(network: str, image_size: int, minimum: int) -> None:
    if image_size < minimum:
        raise MedPFLError(
            f"{network} needs images of at least {minimum} px, got {image_size} px",
            fix=f"resize images to >= {minimum} px (image_size in the site data config) or use small_cnn",
        )


@NETWORKS.register("densenet121")
def _densenet121(*, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    from monai.networks.nets import DenseNet121

    _require_min_size("densenet121", image_size, 32)
    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)


@NETWORKS.register("resnet18")
def _resnet18(*, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    from monai.networks.nets import resnet18

    del image_size
    return resnet18(spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes, pretrained=False)
