"""Building attacker knowledge from what a server receives, and one clear error for each kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attack_cases import SIZE, phantom, sigmoid_lenet

from medpfl_app.attacks import UpdateKind, build_attack, knowledge_from_update
from medpfl_app.attacks.simulated_site import simulate_site_update
from medpfl_app.errors import MedPFLError
from medpfl_app.models import build_network

SHAPE = (1, SIZE, SIZE)


def _numpy(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, np.ndarray]:
    return {prefix + k: v.numpy() for k, v in state.items()}


def _bn_site():
    torch.manual_seed(0)
    model = build_network("small_cnn", in_channels=1, num_classes=4, image_size=SIZE)
    images = torch.cat([phantom(1), phantom(2)])
    site = simulate_site_update(
        model, images, torch.tensor([0, 1]), kind=UpdateKind.WEIGHT_DIFF, local_steps=3, learning_rate=0.01
    )
    return model, site


def test_lightning_prefix_numpy_arrays_and_meta_are_understood() -> None:
    """An NVFlare-style update (numpy, 'net.' prefix, BN buffers, metric states, meta) becomes full knowledge."""
    model, site = _bn_site()
    update = _numpy(site.update, "net.")
    update["train_acc.total"] = np.array(5.0)  # a Lightning metric state: not part of the network
    meta = {"batch_size": 2, "learning_rate": 0.01, "NUM_STEPS_CURRENT_ROUND": 3, "num_train_images": 2}

    knowledge = knowledge_from_update(model, _numpy(site.global_weights, "net."), update, meta, image_shape=SHAPE)

    assert knowledge.kind is UpdateKind.WEIGHT_DIFF and knowledge.local_steps == 3 and knowledge.batch_size == 2
    assert knowledge.ignored_keys == ("train_acc.total",)
    assert set(knowledge.update) == {n for n, _ in model.named_parameters()}
    assert knowledge.bn_running_stats and "features.1.running_mean" in knowledge.bn_running_stats
    expected = site.global_weights["features.1.running_mean"] + site.update["features.1.running_mean"]
    assert torch.allclose(knowledge.bn_running_stats["features.1.running_mean"], expected)
    assert knowledge.assumed == ("optimizer",)


def test_missing_meta_is_assumed_worst_case_and_steps_inferred_from_bn() -> None:
    """Without meta, the batch size is assumed (and listed) while BN's step counter gives the local steps."""
    model, site = _bn_site()

    knowledge = knowledge_from_update(model, site.global_weights, site.update, None, image_shape=SHAPE)

    assert knowledge.local_steps == 3  # from num_batches_tracked
    assert set(knowledge.assumed) == {"batch_size", "learning_rate", "optimizer"}
    assert knowledge.threat_model()["assumed_worst_case"] == list(knowledge.assumed)


def _lenet_site():
    model = sigmoid_lenet()
    return model, simulate_site_update(model, phantom(0), torch.tensor([1]))


def test_empty_update_is_rejected() -> None:
    model, site = _lenet_site()
    with pytest.raises(MedPFLError, match="update is empty"):
        knowledge_from_update(model, site.global_weights, {}, site.meta, image_shape=SHAPE)


def test_shape_mismatch_is_rejected() -> None:
    model, site = _lenet_site()
    update = dict(site.update)
    update["classifier.weight"] = torch.zeros(3, 7)
    with pytest.raises(MedPFLError, match=r"classifier\.weight.*shape"):
        knowledge_from_update(
            model, site.global_weights, update, site.meta, image_shape=SHAPE, kind=UpdateKind.GRADIENT
        )


def test_update_of_another_architecture_is_rejected() -> None:
    model, site = _lenet_site()
    with pytest.raises(MedPFLError, match="not a tensor of the model"):
        knowledge_from_update(
            model, site.global_weights, {"net.head.weight": np.zeros(3)}, site.meta, image_shape=SHAPE, prefix="net."
        )


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_update_is_rejected(bad: float) -> None:
    model, site = _lenet_site()
    update = dict(site.update)
    update["features.0.bias"] = update["features.0.bias"].clone()
    update["features.0.bias"][0] = bad
    with pytest.raises(MedPFLError, match="NaN or Inf"):
        knowledge_from_update(
            model, site.global_weights, update, site.meta, image_shape=SHAPE, kind=UpdateKind.GRADIENT
        )


def test_unknown_attack_name_is_rejected() -> None:
    with pytest.raises(MedPFLError, match="unknown attack 'deepleak'") as error:
        build_attack("deepleak")
    assert "idlg" in error.value.fix


def test_unknown_attack_option_is_rejected() -> None:
    with pytest.raises(MedPFLError, match="unknown attack option"):
        build_attack("idlg", iterationz=3)


def test_unknown_line_search_is_rejected() -> None:
    with pytest.raises(MedPFLError, match="unknown line_search 'armijo'") as error:
        build_attack("idlg", line_search="armijo")
    assert "strong_wolfe" in error.value.fix


@pytest.mark.parametrize("limit", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_time_limit_is_rejected(limit: float) -> None:
    with pytest.raises(MedPFLError, match="time_limit_s must be a positive, finite number of seconds"):
        build_attack("gradinv", time_limit_s=limit)


def test_required_meta_missing_is_rejected() -> None:
    model, site = _lenet_site()
    with pytest.raises(MedPFLError, match="lacks the required fact 'learning_rate'"):
        knowledge_from_update(
            model, site.global_weights, site.update, {}, image_shape=SHAPE, require_meta=("learning_rate",)
        )


def test_unrolled_inversion_without_learning_rate_is_rejected() -> None:
    """Unrolling needs η; without it in the meta the attack says so instead of guessing."""
    model, site = _lenet_site()
    knowledge = knowledge_from_update(model, site.global_weights, site.update, {"local_steps": 2}, image_shape=SHAPE)
    with pytest.raises(MedPFLError, match="learning rate"):
        build_attack("fedavg", iterations=1, update_mode="unrolled").run(knowledge)


def test_bn_attack_without_bn_buffers_is_rejected() -> None:
    model, site = _lenet_site()
    knowledge = knowledge_from_update(model, site.global_weights, site.update, site.meta, image_shape=SHAPE)
    with pytest.raises(MedPFLError, match="BatchNorm running statistics"):
        build_attack("bn_prior", iterations=1).run(knowledge)


def test_bad_budget_is_rejected() -> None:
    with pytest.raises(MedPFLError, match="positive budget"):
        build_attack("gradinv", iterations=0)


def test_bn_buffers_reveal_exact_batch_statistics_after_one_step() -> None:
    """One local step: the momentum inversion returns the batch's exact per-channel mean and unbiased variance."""
    from medpfl_app.attacks.bn_report import bn_statistics_report

    torch.manual_seed(0)
    model = build_network("small_cnn", in_channels=1, num_classes=4, image_size=SIZE)
    images = torch.cat([phantom(1), phantom(2), phantom(3)])
    site = simulate_site_update(model, images, torch.tensor([0, 1, 2]), kind=UpdateKind.WEIGHT_DIFF, local_steps=1)
    knowledge = knowledge_from_update(model, site.global_weights, site.update, site.meta, image_shape=SHAPE)

    report = bn_statistics_report(knowledge, originals=images)

    assert report.exact and len(report.layers) == 3
    for layer in report.layers:
        assert layer.mean_rel_error < 1e-4 and layer.var_rel_error < 1e-4
    assert report.to_dict()["numbers_revealed"] == 2 * (16 + 32 + 64)
