"""Site preparation: from the job's arguments and the site's own data to a trainer, a model and data loaders.

The site finds its data through `medpfl_app.data.resolve_site_data` — site-local configuration, never a path
baked into the job — so the same job runs unchanged at every hospital. Per-site overrides from the job
(``--site_override``) apply to this site only; DP-SGD, when on, is charged to the site's own ledger
(`medpfl_app.nvflare.site.dp_ledger`). Bad flags fail before any data is read.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medpfl_app.nvflare.site.arguments import dp_sgd_config, parse_site_overrides
from medpfl_app.nvflare.site.dp_ledger import dp_sgd_site_ledger

if TYPE_CHECKING:
    from medpfl_app.defenses.dp_sgd import DPSGDConfig, SampleLevelLedger

logger = logging.getLogger("medpfl.site")


def prepare_site(args: argparse.Namespace, site: str) -> tuple[Any, Any, Any, Any]:
    """``(trainer, module, datamodule, training_set)``: what the rounds need, and how the training images were
    loaded (`medpfl_app.audit.round_samples.TrainingSet`, for the audit's round records).

    Raises:
        MedPFLError: Bad flags or unusable site data.
    """
    import pytorch_lightning as pl

    from medpfl_app.audit.round_samples import describe_training_set
    from medpfl_app.data import build_dataloaders, load_site_data
    from medpfl_app.training.datamodule import SiteDataModule

    dp_config = dp_sgd_config(args)  # before loading data: a bad flag should fail fast
    dp_ledger = (
        dp_sgd_site_ledger(args.dp_ledger, workspace_dir=os.environ.get("MEDPFL_SITE_WORKSPACE"), start=Path.cwd())
        if dp_config is not None
        else None
    )
    args = _with_site_overrides(args, site)
    settings, data_config = _site_data(args, site)
    site_data = load_site_data(settings.datalist, site=site, num_classes=args.num_classes)
    # As the images are read: the audit's scorer checks that it loads this very list, unchanged.
    training_set = describe_training_set(site_data.training, data_config, args.num_classes)
    train_loader, val_loader = build_dataloaders(site_data, data_config, site=site)

    pl.seed_everything(args.seed, workers=True, verbose=False)
    module = _classifier(args, data_config, dp_sgd=dp_config is not None)
    if dp_config is not None:
        train_loader = _enable_dp_sgd(module, train_loader, dp_config, dp_ledger, site)
    datamodule = SiteDataModule(train_loader, val_loader)
    trainer = _site_trainer(args, num_train_images=len(site_data.training), batch_size=data_config.batch_size)
    logger.info(
        "site %s: %d training / %d validation images from %s",
        site,
        len(site_data.training),
        len(site_data.validation),
        settings.datalist,
    )
    if dp_config is not None:
        logger.info(
            "site %s: sample-level DP-SGD on (noise multiplier %s, clipping norm %s, δ %s); ε adds up over the job",
            site,
            dp_config.noise_multiplier,
            dp_config.max_grad_norm,
            dp_config.delta,
        )
    return trainer, module, datamodule, training_set


def _with_site_overrides(args: argparse.Namespace, site: str) -> argparse.Namespace:
    """``args`` with this site's ``--site_override`` settings applied (other sites' are ignored)."""
    own = parse_site_overrides(args.site_override).get(site, {})
    if not own:
        return args
    logger.info("site %s: per-site training settings %s", site, own)
    return argparse.Namespace(**{**vars(args), **own})


def _site_data(args: argparse.Namespace, site: str) -> tuple[Any, Any]:
    """``(settings, data config)``: the site's own data settings, with the job's size and batch overrides."""
    from medpfl_app.data import resolve_site_data

    settings = resolve_site_data(site, workspace_dir=os.environ.get("MEDPFL_SITE_WORKSPACE"))
    overrides = {
        key: value
        for key, value in (
            ("image_size", args.image_size),
            ("in_channels", args.in_channels),
            ("batch_size", args.batch_size or None),
        )
        if value
    }
    return settings, replace(settings.data, **overrides) if overrides else settings.data


def _classifier(args: argparse.Namespace, data_config: Any, *, dp_sgd: bool) -> Any:
    """The job's network for the site's image size and channels."""
    from medpfl_app.training.lightning_module import ImageClassifier

    return ImageClassifier(
        network=args.network,
        in_channels=data_config.in_channels,
        num_classes=args.num_classes,
        image_size=data_config.image_size,
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        seed=args.seed,
        dp_sgd=dp_sgd,
    )


def _enable_dp_sgd(
    module: Any, train_loader: Any, dp_config: DPSGDConfig, dp_ledger: SampleLevelLedger | None, site: str
) -> Any:
    """Turn DP-SGD on once for the whole job: the same accountant then counts the local steps of every round,
    after the steps the site's ledger recorded in earlier jobs. Returns the private training loader."""
    train_loader = module.enable_dp_sgd(train_loader, dp_config, dp_ledger)
    logger.info(
        "site %s: DP-SGD ledger %s",
        site,
        dp_ledger.path if dp_ledger is not None else "none (ε counts this job only)",
    )
    return train_loader


def _site_trainer(args: argparse.Namespace, *, num_train_images: int, batch_size: int) -> Any:
    """The Lightning trainer of the rounds, with the callback that collects the training facts the audit needs."""
    from medpfl_app.training.facts import TrainingFactsCallback
    from medpfl_app.training.trainer import build_site_trainer

    facts = TrainingFactsCallback(
        num_train_images=num_train_images, configured_batch_size=batch_size, local_epochs=args.local_epochs
    )
    return build_site_trainer(max_epochs=args.local_epochs, max_steps=args.max_steps, callbacks=[facts])
