"""The Lightning module learns, reports the training facts the audit needs, and builds identical initial weights."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from medpfl_app.errors import MedPFLError
from medpfl_app.training.facts import FL_META_ATTRIBUTE, TrainingFactsCallback
from medpfl_app.training.lightning_module import ImageClassifier
from medpfl_app.training.trainer import build_site_trainer


class _ToyImages(Dataset):
    """Two classes told apart by a bright square in the top-left or bottom-right corner."""

    def __init__(self, count: int, size: int = 16, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = 0.1 * torch.rand(count, 1, size, size, generator=generator)
        self.labels = torch.arange(count) % 2
        for index, label in enumerate(self.labels):
            corner = slice(0, 6) if label == 0 else slice(size - 6, size)
            self.images[index, 0, corner, corner] += 0.8

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "label": self.labels[index]}


def _trainer(epochs: int, callbacks: list) -> pl.Trainer:
    return build_site_trainer(max_epochs=epochs, callbacks=callbacks)


def _mean_loss(module: ImageClassifier, loader: DataLoader) -> float:
    module.eval()
    with torch.no_grad():
        loss = float(torch.stack([module.loss(module(b["image"]), b["label"]) for b in loader]).mean())
    module.train()
    return loss


def test_training_lowers_the_loss_on_a_toy_set() -> None:
    """Prepare a separable toy set; fit 8 epochs; the training loss falls by more than half."""
    pl.seed_everything(0, verbose=False)
    loader = DataLoader(_ToyImages(32), batch_size=8, shuffle=True)
    module = ImageClassifier(network="small_cnn", num_classes=2, image_size=16, learning_rate=1e-2)
    before = _mean_loss(module, loader)
    _trainer(8, []).fit(module, train_dataloaders=loader)
    after = _mean_loss(module, loader)
    assert after < 0.5 * before


def test_validate_then_fit_works_like_the_client_api_loop() -> None:
    """The Client API pattern validates the global model before fitting; that must not crash and must log metrics."""
    loader = DataLoader(_ToyImages(16), batch_size=8)
    module = ImageClassifier(network="small_cnn", num_classes=2, image_size=16)
    trainer = _trainer(1, [])
    metrics = trainer.validate(module, dataloaders=loader, verbose=False)[0]
    trainer.fit(module, train_dataloaders=loader)
    assert {"accuracy", "auroc", "val_loss"} <= set(metrics)
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_training_facts_describe_the_round() -> None:
    """After fit, the module carries the facts NVFlare sends as update meta: steps, batch size, lr, BN buffers."""
    loader = DataLoader(_ToyImages(10), batch_size=4)
    module = ImageClassifier(network="small_cnn", num_classes=2, image_size=16, learning_rate=0.05, optimizer="sgd")
    facts = TrainingFactsCallback(num_train_images=10, configured_batch_size=4, local_epochs=2)
    _trainer(2, [facts]).fit(module, train_dataloaders=loader)
    meta = getattr(module, FL_META_ATTRIBUTE)
    assert meta["local_steps"] == 6  # 2 epochs x ceil(10 / 4) batches
    assert meta["batch_sizes"] == [2, 4]
    assert meta["num_images_seen"] == 20
    assert meta["learning_rate"] == pytest.approx(0.05)
    assert meta["optimizer"] == "sgd"
    assert meta["bn_buffers_included"] is True
    assert meta["bn_momentum"] == pytest.approx(0.1)


def test_sigmoid_lenet_has_no_bn_buffers_to_report() -> None:
    module = ImageClassifier(network="lenet_sigmoid", num_classes=2, image_size=16)
    facts = TrainingFactsCallback(num_train_images=4, configured_batch_size=4, local_epochs=1)
    _trainer(1, [facts]).fit(module, train_dataloaders=DataLoader(_ToyImages(4), batch_size=4))
    assert getattr(module, FL_META_ATTRIBUTE)["bn_buffers_included"] is False


def test_same_seed_gives_the_same_initial_global_model() -> None:
    first = ImageClassifier(seed=3).state_dict()
    second = ImageClassifier(seed=3).state_dict()
    other = ImageClassifier(seed=4).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["net.classifier.weight"], other["net.classifier.weight"])
    assert all(key.startswith("net.") for key in first)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"optimizer": "rmsprop"}, "optimizer"), ({"learning_rate": 0.0}, "learning_rate"), ({"network": "vgg"}, "vgg")],
)
def test_bad_configuration_is_one_clear_error(kwargs: dict, fragment: str) -> None:
    with pytest.raises(MedPFLError, match=fragment):
        ImageClassifier(**kwargs)


@pytest.mark.parametrize("dp_sgd", [False, True])
def test_server_global_network_matches_the_site_module(dp_sgd: bool) -> None:
    """The server holds GlobalNetwork (no Lightning); its keys and initial weights equal the sites' module's."""
    from medpfl_app.models.global_model import GlobalNetwork

    server = GlobalNetwork(network="lenet_sigmoid", image_size=32, seed=5, dp_sgd=dp_sgd).state_dict()
    site = ImageClassifier(network="lenet_sigmoid", image_size=32, seed=5, dp_sgd=dp_sgd).state_dict()
    assert list(server) == list(site)
    assert all(torch.equal(server[key], site[key]) for key in server)
