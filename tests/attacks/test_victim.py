"""The vectorised victim reproduces the site's computation exactly, including BatchNorm in train mode."""

from __future__ import annotations

import copy

import pytest
import torch
from attack_cases import SIZE, phantom
from torch import nn

from medpfl_app.attacks import UpdateKind, build_attack, knowledge_from_update
from medpfl_app.attacks.simulated_site import simulate_site_update
from medpfl_app.attacks.victim import BatchStatisticsNorm, Victim
from medpfl_app.models import build_network


class _DenseBN(nn.Module):
    """BatchNorm1d on flat features, without affine parameters: the other shapes BatchNorm comes in."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(SIZE * SIZE, 12)
        self.bn = nn.BatchNorm1d(12, affine=False)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(images.flatten(1)))))


def _native_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    reference = copy.deepcopy(model).train()
    loss = nn.functional.cross_entropy(reference(images), labels)
    names = [n for n, _ in reference.named_parameters()]
    return dict(zip(names, torch.autograd.grad(loss, list(reference.parameters()))))


@pytest.mark.parametrize("network", ["small_cnn", "dense_bn"])
def test_simulated_gradient_equals_torch_with_batchnorm_in_train_mode(network: str) -> None:
    """Every restart's simulated gradient equals the native module's gradient on the same images."""
    torch.manual_seed(0)
    model = (
        build_network("small_cnn", in_channels=1, num_classes=3, image_size=SIZE)
        if network == "small_cnn"
        else _DenseBN()
    )
    images = torch.cat([phantom(s) for s in range(2)])  # batch of 2: the statistics couple the images
    labels = torch.tensor([0, 2])
    site = simulate_site_update(model, images, labels, kind=UpdateKind.GRADIENT)
    knowledge = knowledge_from_update(
        model, site.global_weights, site.update, site.meta, image_shape=(1, SIZE, SIZE), kind=UpdateKind.GRADIENT
    )
    victim = Victim(knowledge)
    assert any(isinstance(m, BatchStatisticsNorm) for m in victim.module.modules())
    restarts = torch.stack([images, images.flip(-1)])  # two restarts with different images

    simulated = victim.simulate(restarts, labels, mode="gradient").update

    for r in range(2):
        native = _native_gradient(model, restarts[r], labels)
        # Biases followed by BN have a zero gradient in exact arithmetic: compare on the gradient's overall scale.
        scale = max(float(v.abs().max()) for v in native.values())
        for name, value in native.items():
            torch.testing.assert_close(simulated[name][r], value, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize(
    ("network", "channels", "size", "batch", "steps", "bn_train"),
    [
        ("densenet121", 3, 32, 2, 1, True),  # MONAI DenseNet, RGB, BN in train mode (nested BN layers swapped)
        ("resnet18", 1, 32, 1, 2, False),  # MONAI ResNet with BN in eval mode (running statistics used)
        ("small_cnn", 3, 224, 1, 2, True),  # the largest image size the issue names
        ("lenet_sigmoid", 1, 32, 16, 2, True),  # the largest batch
    ],
)
def test_attacks_run_on_the_pipeline_networks_channels_sizes_and_batches(
    network: str, channels: int, size: int, batch: int, steps: int, bn_train: bool
) -> None:
    """Two iterations of FedAvg-update inversion (unrolled where S > 1) on each network the pipeline offers."""
    torch.manual_seed(0)
    model = build_network(network, in_channels=channels, num_classes=3, image_size=size)
    images = torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(batch) % 3
    site = simulate_site_update(
        model,
        images,
        labels,
        kind=UpdateKind.WEIGHT_DIFF,
        local_steps=steps,
        learning_rate=0.01,
        bn_train_mode=bn_train,
    )
    knowledge = knowledge_from_update(
        model, site.global_weights, site.update, site.meta, image_shape=(channels, size, size), bn_train_mode=bn_train
    )

    result = build_attack("fedavg", iterations=2, restarts=1).run(knowledge)

    assert result.reconstructions.shape == images.shape and result.labels.shape == (batch,)
    assert result.iterations == 2 and 0.0 <= result.matching_loss <= 2.0  # cosine distance, finite
    assert bool(torch.isfinite(result.reconstructions).all())
