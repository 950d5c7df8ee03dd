"""The Lightning module every site trains: a registered network, cross-entropy, Adam/SGD, torchmetrics validation."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

from medpfl_app.errors import MedPFLError
from medpfl_app.models.networks import build_network

OPTIMIZERS = ("adam", "sgd")


class ImageClassifier(pl.LightningModule):
    """Image classification over a network from `medpfl_app.models.networks`.

    Constructor arguments are JSON builtins stored under attributes of the same names, because NVFlare's job
    exporter writes a server-side model component by matching parameter names to attributes. The network lives
    under ``self.net``, so every key of the exchanged state dict starts with ``net.``.

    Args:
        network: Registered network name (``small_cnn``, ``lenet_sigmoid``, ``densenet121``, ``resnet18``).
        in_channels: Image channels.
        num_classes: Number of classes.
        image_size: Square input size in pixels.
        learning_rate: Optimizer learning rate.
        optimizer: ``adam`` or ``sgd`` (SGD without momentum, the FedAvg textbook client).
        seed: Seed for the initial weights, so every process builds the same initial global model.
    """

    def __init__(
        self,
        network: str = "small_cnn",
        in_channels: int = 1,
        num_classes: int = 4,
        image_size: int = 64,
        learning_rate: float = 1e-3,
        optimizer: str = "adam",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise MedPFLError(f"unknown optimizer {optimizer!r}", fix=f"use one of: {', '.join(OPTIMIZERS)}")
        if not learning_rate > 0:
            raise MedPFLError(f"learning_rate must be > 0, got {learning_rate}", fix="set a positive learning rate")
        self.network = network
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = image_size
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.seed = seed
        self.save_hyperparameters()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = build_network(network, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        self.loss = nn.CrossEntropyLoss()
        self.val_accuracy = MulticlassAccuracy(num_classes=num_classes)
        self.val_auroc = MulticlassAUROC(num_classes=num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["label"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["image"])
        labels = batch["label"]
        self.val_accuracy.update(logits, labels)
        self.val_auroc.update(logits.softmax(dim=1), labels)
        self.log("val_loss", self.loss(logits, labels), on_epoch=True, batch_size=len(labels))

    def on_validation_epoch_end(self) -> None:
        self.log("accuracy", self.val_accuracy.compute())
        self.log("auroc", self.val_auroc.compute())
        self.val_accuracy.reset()
        self.val_auroc.reset()

    def configure_optimizers(self) -> Any:
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.learning_rate)
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)
