"""Each attack recovers one 16×16 image from a tiny sigmoid network within a small, fixed budget."""

from __future__ import annotations

import json

import pytest
import torch
from attack_cases import SIZE, SigmoidBNNet, phantom, sigmoid_lenet

from medpfl_app.attacks import ATTACKS, UpdateKind, build_attack, knowledge_from_update
from medpfl_app.attacks.simulated_site import simulate_site_update
from medpfl_app.metrics import evaluate_reconstruction, ssim

LABEL = torch.tensor([2])


def _gradient_knowledge(model: torch.nn.Module, image: torch.Tensor, **kwargs: object):
    site = simulate_site_update(model, image, LABEL, kind=UpdateKind.GRADIENT)
    return knowledge_from_update(
        model,
        site.global_weights,
        site.update,
        site.meta,
        image_shape=(1, SIZE, SIZE),
        kind=UpdateKind.GRADIENT,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("name", "budget"),
    [
        ("idlg", {"iterations": 60}),
        ("idlg", {"iterations": 10, "lbfgs_max_iter": 20, "line_search": "strong_wolfe", "init": "randn"}),
        ("cpl", {"iterations": 60}),
        ("dlg", {"iterations": 60, "restarts": 2}),
        ("gradinv", {"iterations": 300, "restarts": 2, "tv": 0.0}),
    ],
)
def test_attack_recovers_single_image_from_gradient(name: str, budget: dict, image: torch.Tensor) -> None:
    """A gradient of one image on the seed paper's sigmoid LeNet is inverted to SSIM >= 0.9 with the right label."""
    knowledge = _gradient_knowledge(sigmoid_lenet(), image)

    result = build_attack(name, **budget).run(knowledge)

    assert float(ssim(result.reconstructions[None][0], image)[0]) >= 0.9
    assert result.labels.tolist() == LABEL.tolist()
    assert result.iterations <= budget["iterations"]


def test_fedavg_inversion_recovers_single_image_from_weight_difference(image: torch.Tensor) -> None:
    """Unrolled FedAvg inversion recovers one image from a 2-step SGD weight difference."""
    model = sigmoid_lenet()
    site = simulate_site_update(model, image, LABEL, kind=UpdateKind.WEIGHT_DIFF, local_steps=2, learning_rate=0.1)
    knowledge = knowledge_from_update(model, site.global_weights, site.update, site.meta, image_shape=(1, SIZE, SIZE))

    result = build_attack("fedavg", iterations=300, restarts=2, tv=0.0).run(knowledge)

    assert result.config["resolved_update_mode"] == "unrolled"
    assert float(ssim(result.reconstructions, image)[0]) >= 0.9


def test_unrolled_beats_approximate_gradient_on_three_step_update() -> None:
    """On a 3-step update with a large local learning rate, simulating the steps beats treating Δ as a gradient."""
    model = sigmoid_lenet()
    images = torch.cat([phantom(1), phantom(2), phantom(3)])
    labels = torch.tensor([0, 1, 2])
    site = simulate_site_update(
        model, images, labels, kind=UpdateKind.WEIGHT_DIFF, local_steps=3, learning_rate=1.0, batch_size=1
    )
    knowledge = knowledge_from_update(
        model, site.global_weights, site.update, site.meta, image_shape=(1, SIZE, SIZE), labels=labels
    )
    assert knowledge.images == 3 and knowledge.local_steps == 3

    scores = {}
    for mode in ("approximate", "unrolled"):
        result = build_attack("fedavg", iterations=200, restarts=1, tv=0.0, update_mode=mode).run(knowledge)
        # The attacker knows the step order, so the i-th reconstruction belongs to the i-th image.
        scores[mode] = float(ssim(result.reconstructions, images).mean())

    assert scores["unrolled"] > scores["approximate"] + 0.05, scores


def test_bn_prior_recovers_image_and_bn_only_reveals_less(image: torch.Tensor) -> None:
    """With BN buffers shared, the BN prior attack recovers the image; BN statistics alone give a weaker match."""
    torch.manual_seed(0)
    model = SigmoidBNNet()
    site = simulate_site_update(model, image, LABEL, kind=UpdateKind.WEIGHT_DIFF, local_steps=1, learning_rate=0.1)
    knowledge = knowledge_from_update(model, site.global_weights, site.update, site.meta, image_shape=(1, SIZE, SIZE))
    assert knowledge.bn_running_stats and knowledge.local_steps == 1

    full = build_attack("bn_prior", iterations=300, restarts=2, tv=0.0).run(knowledge)
    alone = build_attack("bn_only", iterations=150, restarts=1).run(knowledge)

    assert float(ssim(full.reconstructions, image)[0]) >= 0.9
    assert float(ssim(alone.reconstructions, image)[0]) < float(ssim(full.reconstructions, image)[0])


def test_batched_restarts_match_sequential_restarts(image: torch.Tensor) -> None:
    """The vmap fast path computes the same optimisation as running the restarts one after another."""
    knowledge = _gradient_knowledge(sigmoid_lenet(), image)
    options = {"iterations": 5, "restarts": 3}

    batched = build_attack("gradinv", batched=True, **options).run(knowledge)
    sequential = build_attack("gradinv", batched=False, **options).run(knowledge)

    assert torch.allclose(torch.tensor(batched.restart_losses), torch.tensor(sequential.restart_losses), atol=1e-5)
    assert torch.allclose(batched.reconstructions, sequential.reconstructions, atol=1e-4)


def test_early_stopping_ends_before_budget(image: torch.Tensor) -> None:
    """iDLG stops once the matching loss falls below its tolerance instead of spending the whole budget."""
    knowledge = _gradient_knowledge(sigmoid_lenet(), image)

    result = build_attack("idlg", iterations=200, stop_loss=1e-4).run(knowledge)

    assert result.stopped_early and result.iterations < 200 and result.matching_loss < 1e-4


def test_result_saves_json_and_png(tmp_path, image: torch.Tensor) -> None:
    """The result writes its numbers, config and threat model as JSON and a PNG grid."""
    knowledge = _gradient_knowledge(sigmoid_lenet(), image)
    result = build_attack("cpl", iterations=2).run(knowledge)
    report = evaluate_reconstruction(result.reconstructions, image, recovered_labels=result.labels, true_labels=LABEL)

    json_path, png_path = result.save(tmp_path / "out", originals=image, metrics=report.summary)

    payload = json.loads(json_path.read_text())
    assert payload["attack"] == "cpl" and payload["threat_model"]["update_kind"] == "gradient"
    assert payload["metrics"]["label_accuracy"] == 1.0 and payload["config"]["init"] == "patterned"
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_registry_lists_every_attack() -> None:
    """All attacks of issue 3 are found by name."""
    assert {"dlg", "idlg", "cpl", "gradinv", "fedavg", "fedavg_approx", "bn_prior", "bn_only"} <= set(ATTACKS.names())


@pytest.mark.parametrize("victim", ["sigmoid_lenet", "small_cnn_bn_train"])
def test_engine_matches_the_straightforward_reference_loop(victim: str, image: torch.Tensor) -> None:
    """The vmap-batched engine and the sequential create_graph loop follow the same optimisation path (with BN in
    train mode the reference runs torch's fused batch norm, the engine its var_mean form)."""
    from medpfl_app.attacks.engine import _initial_images
    from medpfl_app.attacks.reference_loop import reference_gradinv
    from medpfl_app.models import build_network

    torch.manual_seed(0)
    model = (
        sigmoid_lenet()
        if victim == "sigmoid_lenet"
        else build_network("small_cnn", in_channels=1, num_classes=4, image_size=SIZE)
    )
    knowledge = _gradient_knowledge(model, image, labels=LABEL)
    attack = build_attack("gradinv", iterations=8, restarts=3)
    initial = _initial_images(attack.config, (3, 1, 1, SIZE, SIZE), None, torch.Generator().manual_seed(0))

    engine = attack.run(knowledge)
    reference_images, reference_losses = reference_gradinv(knowledge, attack.config, initial, LABEL)

    assert torch.allclose(torch.tensor(engine.restart_losses), reference_losses, atol=1e-4)
    assert torch.allclose(engine.reconstructions, reference_images, atol=1e-3)


def test_time_limit_stops_the_attack_and_says_so(image: torch.Tensor) -> None:
    """A wall-clock limit ends the attack after the step that crosses it (any step takes longer than 1 µs)."""
    knowledge = _gradient_knowledge(sigmoid_lenet(), image)

    result = build_attack("gradinv", iterations=50, restarts=1, time_limit_s=1e-6).run(knowledge)

    assert result.iterations == 1 and result.stop_reason == "time_limit" and not result.stopped_early
    assert result.to_dict()["stop_reason"] == "time_limit"
    unlimited = build_attack("gradinv", iterations=3, restarts=1).run(knowledge)
    assert unlimited.iterations == 3 and unlimited.stop_reason == "budget"
