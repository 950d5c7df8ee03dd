"""The Lightning module every site trains: a registered network, cross-entropy, Adam/SGD, torchmetrics validation.

Optionally with sample-level DP-SGD (Opacus, `medpfl_app.defenses.dp_sgd`): construct with ``dp_sgd=True`` (BatchNorm
is replaced by GroupNorm at construction, on the server's initial model as on every site's), then call
`ImageClassifier.enable_dp_sgd` once with the site's training loader and train on the loader it returns. Opacus is
attached once and kept for the whole job, so the accountant counts every local step of every FL round.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytorch_lightning as pl
import torch
from opacus.data_loader import CollateFnWithEmpty
from torch import nn
from torch.utils.data import DataLoader, default_collate
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

from medpfl_app.defenses.dp_sgd import DPSGDConfig, DPSGDSession, SampleLevelLedger, make_private
from medpfl_app.errors import MedPFLError
from medpfl_app.models.global_model import build_seeded_network

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
        dp_sgd: Make the network DP-SGD compatible (Opacus' validators: BatchNorm → GroupNorm) so sites can train
            it with `enable_dp_sgd`. The server must build its initial global model with the same value, so that
            parameter names and shapes match; the model then has no BatchNorm running statistics at all.

    Notes:
        ``dp_sgd=True`` alone protects nothing: the guarantee comes from `enable_dp_sgd` at the site. Training a
        DP-enabled module on any loader other than the one `enable_dp_sgd` returned is refused, because the
        accountant's sampling analysis would no longer describe the steps taken.
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
        dp_sgd: bool = False,
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
        self.dp_sgd = dp_sgd
        self.save_hyperparameters()
        self.net = build_seeded_network(
            network, in_channels=in_channels, num_classes=num_classes, image_size=image_size, seed=seed, dp_sgd=dp_sgd
        )
        # Opacus state (hooks, DP optimizer, Poisson loader, accountant); set once by `enable_dp_sgd`, kept for
        # the whole job so ε accumulates over all rounds.
        self.dp_session: DPSGDSession | None = None
        # The site's persistent record of DP-SGD steps (None: ε counts this job's steps only).
        self.dp_ledger: SampleLevelLedger | None = None
        self.loss = nn.CrossEntropyLoss()
        self.val_accuracy = MulticlassAccuracy(num_classes=num_classes)
        self.val_auroc = MulticlassAUROC(num_classes=num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(images)
        return logits

    def enable_dp_sgd(
        self, train_loader: DataLoader[Any], config: DPSGDConfig, ledger: SampleLevelLedger | None = None
    ) -> DataLoader[Any]:
        """Attach Opacus (per-sample clipping, Gaussian noise, accountant) once for the whole job.

        Args:
            train_loader: The site's training loader.
            config: The DP-SGD configuration.
            ledger: The site's persistent DP-SGD ledger: its recorded steps are restored into the accountant now,
                and `TrainingFactsCallback` records the steps of every round before the update leaves, so ε adds
                up over jobs and restarts. None: ε covers this job's steps only.

        Returns:
            The Poisson-sampling loader to train on, in every round (``trainer.fit`` refuses any other).

        Raises:
            MedPFLError: the module was not built with ``dp_sgd=True``, or DP-SGD is already attached.

        Notes:
            Noise and batch sampling are drawn from a generator seeded from OS entropy, not from the job's seed:
            the server knows that seed, and noise it could replay would protect nothing. Training is therefore not
            bit-reproducible under DP-SGD. Without ``config.secure_mode`` the noise is not hardened against
            floating-point attacks (Opacus' caveat).
        """
        if not self.dp_sgd:
            raise MedPFLError(
                "DP-SGD needs a DP-compatible network, but this module was built with dp_sgd=False",
                fix="build ImageClassifier(..., dp_sgd=True) at the server and at every site",
            )
        if self.dp_session is not None:
            raise MedPFLError(
                "DP-SGD is already attached to this module",
                fix="call enable_dp_sgd once per site; a second accountant would restart ε at 0",
            )
        session = make_private(self.net, self._make_optimizer, train_loader, config)
        if session.module is not self.net:  # cannot happen after make_dp_compatible at construction; keep keys safe
            raise MedPFLError(
                "Opacus had to change the network after construction",
                fix="report this: the DP-compatible network should not need another fix",
            )
        if not config.secure_mode:
            # Opacus' default draws noise from the global RNG and sampling from the loader's generator, both
            # seeded from the job configuration in this pipeline; reseed them from OS entropy (see Notes).
            session.optimizer.generator = torch.Generator().manual_seed(secrets.randbits(63))
            sampler = getattr(session.data_loader, "batch_sampler", None)
            if sampler is not None and hasattr(sampler, "generator"):
                sampler.generator = torch.Generator().manual_seed(secrets.randbits(63))
        _prime_empty_batch_structure(session.data_loader, train_loader)
        if ledger is not None:
            ledger.restore(session)
        self.dp_session, self.dp_ledger = session, ledger
        return session.data_loader

    def on_train_start(self) -> None:
        if self.dp_session is not None and self.trainer.train_dataloader is not self.dp_session.data_loader:
            raise MedPFLError(
                "DP-SGD is attached but training runs on another loader than enable_dp_sgd returned",
                fix="train on the loader returned by enable_dp_sgd; its Poisson sampling is what the "
                "accountant assumes",
            )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits: torch.Tensor = self(batch["image"])
        labels = batch["label"]
        if len(labels) == 0:
            # Poisson sampling (DP-SGD) can draw an empty batch. The step must still happen (noise only: the
            # accountant counts it, and skipping it would reveal the batch was empty), but a mean over nothing is
            # NaN, so backpropagate an exact zero through the graph instead and log nothing.
            return logits.sum() * 0.0
        loss: torch.Tensor = self.loss(logits, labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels))
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
        if self.dp_session is not None:
            # Lightning calls this at every fit (every FL round): hand back the one DP optimizer, whose accountant
            # and inner optimizer state live across rounds.
            return self.dp_session.optimizer
        return self._make_optimizer(self.parameters())

    def _make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.learning_rate)
        return torch.optim.Adam(params, lr=self.learning_rate)


def _prime_empty_batch_structure(dp_loader: DataLoader[Any], train_loader: DataLoader[Any]) -> None:
    """Give Opacus' empty-batch collator the batch structure before the first batch is drawn.

    Opacus builds an empty batch from the first non-empty one; if the very first Poisson draw is empty it falls back
    to the shapes of ``dataset[0]`` iterated as a sequence, which for our dict samples (``{"image", "label"}``)
    yields the keys and fails. A one-sample batch through the loader's own collate gives the right structure; only
    its shapes and dtypes are used.
    """
    collate = getattr(dp_loader, "collate_fn", None)
    if isinstance(collate, CollateFnWithEmpty) and collate.first_batch is None:
        collate.first_batch = (train_loader.collate_fn or default_collate)([train_loader.dataset[0]])
