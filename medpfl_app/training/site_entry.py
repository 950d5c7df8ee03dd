"""What runs at each site inside NVFlare: receive the global model, validate it, train locally, send the update.

``custom/medpfl_site.py`` (shipped in every job's ``app/custom/``) only calls `main`. The site finds its data
through `medpfl_app.data.resolve_site_data` — site-local configuration, never a path baked into the job — so the
same job runs unchanged at every hospital.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from medpfl_app.errors import MedPFLError

if TYPE_CHECKING:
    from medpfl_app.defenses.dp_sgd import DPSGDConfig

logger = logging.getLogger("medpfl.site")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="MedPFL site training entry (run by NVFlare's Client API)")
    parser.add_argument("--network", default="small_cnn")
    parser.add_argument("--num_classes", type=int, default=4)
    parser.add_argument("--image_size", type=int, default=None, help="override the site's configured image size")
    parser.add_argument("--in_channels", type=int, default=None, help="override the site's configured channels")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--local_epochs", type=int, default=1)
    parser.add_argument("--max_steps", type=int, default=-1, help="cap local optimizer steps per round (-1: no cap)")
    parser.add_argument("--batch_size", type=int, default=0, help="override the site's batch size (0: site's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dp_noise_multiplier", type=float, default=0.0,
                        help="> 0 turns on sample-level DP-SGD (Opacus) with this noise multiplier (0: off)")
    parser.add_argument("--dp_max_grad_norm", type=float, default=1.0, help="DP-SGD per-sample clipping norm")
    parser.add_argument("--dp_delta", type=float, default=1e-5, help="δ for which DP-SGD's ε is reported")
    parser.add_argument("--dp_ledger", default="auto", metavar="PATH|auto|none",
                        help="the site's persistent DP-SGD ledger, so ε adds up over jobs and restarts; auto: "
                             "<site workspace>/medpfl/dp_sgd_ledger.json; none: ε counts this job only")
    parser.add_argument("--site_override", action="append", default=[], metavar="SITE:KEY=VALUE[,KEY=VALUE]",
                        help="per-site training settings (batch_size, max_steps, local_epochs, learning_rate), "
                             "e.g. site-1:batch_size=1,max_steps=1; repeatable")
    return parser


SITE_OVERRIDE_KEYS = {"batch_size": int, "max_steps": int, "local_epochs": int, "learning_rate": float}


def parse_site_overrides(values: Sequence[str]) -> dict[str, dict[str, int | float]]:
    """``["site-1:batch_size=1,max_steps=1"]`` → ``{"site-1": {"batch_size": 1, "max_steps": 1}}``.

    Raises:
        MedPFLError: a malformed entry, an unknown key or a value of the wrong type.
    """
    parsed: dict[str, dict[str, int | float]] = {}
    for value in values:
        site, sep, body = str(value).partition(":")
        if not sep or not site or not body:
            raise MedPFLError(f"bad --site_override {value!r}", fix="write SITE:KEY=VALUE[,KEY=VALUE], e.g. site-1:batch_size=1")
        for pair in body.split(","):
            key, eq, raw = pair.partition("=")
            if not eq or key not in SITE_OVERRIDE_KEYS:
                raise MedPFLError(f"bad --site_override entry {pair!r}", fix=f"use keys {sorted(SITE_OVERRIDE_KEYS)}")
            try:
                parsed.setdefault(site, {})[key] = SITE_OVERRIDE_KEYS[key](raw)
            except ValueError:
                raise MedPFLError(f"--site_override {key}={raw!r} is not a number", fix="give a number") from None
    return parsed


def dp_sgd_config(args: argparse.Namespace) -> DPSGDConfig | None:
    """The DP-SGD configuration from the command line, or ``None`` when ``--dp_noise_multiplier`` is 0.

    Raises:
        MedPFLError: a negative noise multiplier, or (with DP-SGD on) a bad clipping norm or δ.
    """
    from medpfl_app.defenses.dp_sgd import DPSGDConfig

    noise = args.dp_noise_multiplier
    if not noise >= 0:  # also catches NaN
        raise MedPFLError(f"--dp_noise_multiplier must be >= 0, got {noise}",
                          fix="use 0 to turn DP-SGD off, or a positive noise multiplier such as 1.0")
    if noise == 0:
        return None
    return DPSGDConfig(noise_multiplier=noise, max_grad_norm=args.dp_max_grad_norm, delta=args.dp_delta)


DP_SGD_LEDGER = Path("medpfl") / "dp_sgd_ledger.json"


def site_workspace(workspace_dir: str | None, start: Path) -> Path | None:
    """The site's NVFlare workspace: ``workspace_dir`` if given, else the nearest folder at or above ``start``
    holding a ``startup`` folder (NVFlare's marker of a site workspace); None when there is none."""
    if workspace_dir:
        return Path(workspace_dir).expanduser().resolve()
    here = start.resolve()
    return next((folder for folder in (here, *here.parents) if (folder / "startup").is_dir()), None)


def dp_ledger_path(value: str, *, workspace_dir: str | None, start: Path) -> Path | None:
    """Where the DP-SGD ledger lives for ``--dp_ledger value`` (None for ``none``)."""
    if value == "none":
        return None
    if value != "auto":
        return Path(value).expanduser()
    root = site_workspace(workspace_dir, start)
    if root is None:
        raise MedPFLError(
            f"cannot find this site's workspace (no 'startup' folder at or above {start}) to keep the DP-SGD ledger",
            fix="set MEDPFL_SITE_WORKSPACE to the site's workspace, pass --dp_ledger PATH, or --dp_ledger none "
            "(ε then counts this job's steps only)",
        )
    return root / DP_SGD_LEDGER


def main(argv: Sequence[str] | None = None) -> None:
    """Run the site's Client API loop until the server ends the job."""
    args = build_arg_parser().parse_args(argv)
    import nvflare.client.lightning as flare

    flare.init()
    site = flare.get_site_name()
    try:
        trainer, module, datamodule = _prepare(args, site)
    except MedPFLError as error:
        # One clear line in the site log instead of a traceback from deep inside NVFlare; the server sees this
        # site fail its task, and the persisted global model is untouched because nothing was sent.
        logger.error("MedPFL site %s cannot train: %s", site, error)
        print(f"MedPFL site {site} cannot train: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None

    from medpfl_app.audit import site_record
    from medpfl_app.training.facts import TrainingFactsCallback

    facts = next(cb for cb in trainer.callbacks if isinstance(cb, TrainingFactsCallback))
    # In-process only, for the audit's site scorer in this client process: the images stay here.
    site_record.register_training_data(site, datamodule.train_dataloader().dataset)
    flare.patch(trainer)
    while flare.is_running():
        input_model = flare.receive()
        if input_model is None:
            break
        logger.info("site %s: round %s", site, input_model.current_round)
        trainer.validate(module, datamodule=datamodule, verbose=False)
        trainer.fit(module, datamodule=datamodule)
        if input_model.current_round is not None:
            site_record.record_round(site, int(input_model.current_round), facts.last_positions)
        if module.dp_session is not None:
            logger.info("site %s: DP-SGD ε = %.4g at δ = %g, cumulative over this job's local steps so far", site,
                        module.dp_session.epsilon(), module.dp_session.config.delta)


def _prepare(args: argparse.Namespace, site: str):
    import pytorch_lightning as pl

    from medpfl_app.data import build_dataloaders, load_site_data, resolve_site_data
    from medpfl_app.models.lightning_module import ImageClassifier
    from medpfl_app.training.datamodule import SiteDataModule
    from medpfl_app.training.facts import TrainingFactsCallback
    from medpfl_app.training.trainer import build_site_trainer

    dp_config = dp_sgd_config(args)  # before loading data: a bad flag should fail fast
    ledger_path = (
        dp_ledger_path(args.dp_ledger, workspace_dir=os.environ.get("MEDPFL_SITE_WORKSPACE"), start=Path.cwd())
        if dp_config is not None else None
    )
    own = parse_site_overrides(args.site_override).get(site, {})
    if own:
        args = argparse.Namespace(**{**vars(args), **own})
        logger.info("site %s: per-site training settings %s", site, own)
    settings = resolve_site_data(site, workspace_dir=os.environ.get("MEDPFL_SITE_WORKSPACE"))
    data_config = settings.data
    overrides = {
        key: value
        for key, value in (
            ("image_size", args.image_size),
            ("in_channels", args.in_channels),
            ("batch_size", args.batch_size or None),
        )
        if value
    }
    if overrides:
        data_config = replace(data_config, **overrides)
    site_data = load_site_data(settings.datalist, site=site, num_classes=args.num_classes)
    train_loader, val_loader = build_dataloaders(site_data, data_config, site=site)

    pl.seed_everything(args.seed, workers=True, verbose=False)
    module = ImageClassifier(
        network=args.network,
        in_channels=data_config.in_channels,
        num_classes=args.num_classes,
        image_size=data_config.image_size,
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        seed=args.seed,
        dp_sgd=dp_config is not None,
    )
    if dp_config is not None:
        from medpfl_app.defenses.dp_sgd import SampleLevelLedger

        ledger = SampleLevelLedger(ledger_path) if ledger_path is not None else None
        # Once for the whole job: the same accountant then counts the local steps of every round, after the steps
        # the site's ledger recorded in earlier jobs.
        train_loader = module.enable_dp_sgd(train_loader, dp_config, ledger)
        logger.info("site %s: DP-SGD ledger %s", site, ledger_path or "none (ε counts this job only)")
    datamodule = SiteDataModule(train_loader, val_loader)
    facts = TrainingFactsCallback(
        num_train_images=len(site_data.training),
        configured_batch_size=data_config.batch_size,
        local_epochs=args.local_epochs,
    )
    trainer = build_site_trainer(max_epochs=args.local_epochs, max_steps=args.max_steps, callbacks=[facts])
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
    return trainer, module, datamodule

