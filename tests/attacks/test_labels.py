"""Label recovery from the last layer's gradient is exact for one image and for batches of distinct labels."""

from __future__ import annotations

import pytest
import torch
from attack_cases import phantom, sigmoid_lenet

from medpfl_app.attacks import UpdateKind, recover_labels, recover_labels_from_update
from medpfl_app.attacks.labels import expected_probabilities
from medpfl_app.attacks.simulated_site import simulate_site_update
from medpfl_app.errors import MedPFLError
from medpfl_app.models import build_network


@pytest.mark.parametrize("label", [0, 1, 2, 3])
def test_idlg_label_exact_for_one_image(label: int) -> None:
    """iDLG's sign rule recovers the single image's label on the sigmoid LeNet."""
    model = sigmoid_lenet()
    site = simulate_site_update(model, phantom(label), torch.tensor([label]))

    recovered = recover_labels_from_update(model, site.update, 1, method="idlg")

    assert recovered.tolist() == [label]


@pytest.mark.parametrize("method", ["analytic", "yin", "bias-corrected", "whitebox"])
@pytest.mark.parametrize("network", ["lenet_sigmoid", "small_cnn"])
def test_distinct_batch_labels_exact(method: str, network: str) -> None:
    """Every method recovers a batch of four distinct labels (as a set) on sigmoid and ReLU networks."""
    torch.manual_seed(1)
    model = build_network(network, in_channels=1, num_classes=6, image_size=16)
    images = torch.cat([phantom(s) for s in range(4)])
    labels = torch.tensor([5, 0, 3, 1])
    site = simulate_site_update(model, images, labels)

    mean_probs = expected_probabilities(model, (1, 16, 16)) if method == "whitebox" else None

    recovered = recover_labels_from_update(model, site.update, 4, method=method, mean_probs=mean_probs)

    assert recovered.tolist() == sorted(labels.tolist())


def test_whitebox_handles_a_saturated_untrained_model() -> None:
    """The sign rule misses a present class the model already predicts (p̄ > n/B); whitebox counts recover it."""
    model = sigmoid_lenet()
    images = torch.cat([phantom(s) for s in range(3)])
    labels = torch.tensor([3, 1, 0])
    site = simulate_site_update(model, images, labels)
    mean_probs = expected_probabilities(model, (1, 16, 16))

    analytic = recover_labels_from_update(model, site.update, 3, method="analytic")
    whitebox = recover_labels_from_update(model, site.update, 3, mean_probs=mean_probs)

    assert analytic.tolist() != [0, 1, 3]  # the failure mode this method exists for
    assert whitebox.tolist() == [0, 1, 3]


def test_labels_from_weight_difference_are_exact() -> None:
    """−Δ/(η·S) of a small-step FedAvg update carries the same label signal as the gradient."""
    model = sigmoid_lenet()
    images = torch.cat([phantom(s) for s in range(3)])
    labels = torch.tensor([3, 1, 0])
    site = simulate_site_update(model, images, labels, kind=UpdateKind.WEIGHT_DIFF, local_steps=2, learning_rate=1e-3)
    approx_gradient = {k: -v / (2 * 1e-3) for k, v in site.update.items()}

    recovered = recover_labels_from_update(
        model, approx_gradient, 3, mean_probs=expected_probabilities(model, (1, 16, 16))
    )

    assert recovered.tolist() == [0, 1, 3]


def test_bias_corrected_counts_repeated_labels() -> None:
    """With a known bias gradient shape b = p̄ − n/B, repeated labels are counted correctly."""
    probs = torch.full((4,), 0.25)
    counts = torch.tensor([3.0, 0.0, 1.0, 0.0])
    bias = probs - counts / 4

    recovered = recover_labels(torch.zeros(4, 5), bias, 4, method="bias-corrected")

    assert recovered.tolist() == [0, 0, 0, 2]


def test_idlg_method_rejects_batches() -> None:
    """Asking iDLG for several labels is a clear error, not a wrong answer."""
    with pytest.raises(MedPFLError, match="one image"):
        recover_labels(torch.zeros(4, 5), None, 2, method="idlg")
