"""What runs at each site inside NVFlare: receive the global model, validate it, train locally, send the update.

``custom/medpfl_site.py`` (shipped in every job's ``app/custom/``) only calls `main`. The site finds its data
through `medpfl_app.data.resolve_site_data` — site-local configuration, never a path baked into the job — so the
same job runs unchanged at every hospital. After each round's local training, before the update leaves, it writes
which training samples went into it to a site-local file in the job's client run folder
(`medpfl_app.audit.round_samples`), for the audit's site scorer; this works whether NVFlare runs the script in
the client job process or as an external process.
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
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback

    from medpfl_app.audit.round_samples import TrainingSet
    from medpfl_app.defenses.dp_sgd import DPSGDConfig, SampleLevelLedger
    from medpfl_app.training.facts import TrainingFactsCallback

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
    parser.add_argument(
        "--dp_noise_multiplier",
        type=float,
        default=0.0,
        help="> 0 turns on sample-level DP-SGD (Opacus) with this noise multiplier (0: off)",
    )
    parser.add_argument("--dp_max_grad_norm", type=float, default=1.0, help="DP-SGD per-sample clipping norm")
    parser.add_argument("--dp_delta", type=float, default=1e-5, help="δ for which DP-SGD's ε is reported")
    parser.add_argument(
        "--dp_ledger",
        default="auto",
        metavar="auto|none",
        help="auto: charge DP-SGD steps to the site's ledger (where the site keeps it, by default "
        "<site workspace>/medpfl/dp_sgd_ledger.json), so ε adds up over jobs and restarts; "
        "none: ε counts this job only, refused inside a site workspace (only for experiments "
        "outside any NVFlare site). A path is refused: the site decides where its ledger is",
    )
    parser.add_argument(
        "--site_override",
        action="append",
        default=[],
        metavar="SITE:KEY=VALUE[,KEY=VALUE]",
        help="per-site training settings (batch_size, max_steps, local_epochs, learning_rate), "
        "e.g. site-1:batch_size=1,max_steps=1; repeatable",
    )
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
            raise MedPFLError(
                f"bad --site_override {value!r}", fix="write SITE:KEY=VALUE[,KEY=VALUE], e.g. site-1:batch_size=1"
            )
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
        raise MedPFLError(
            f"--dp_noise_multiplier must be >= 0, got {noise}",
            fix="use 0 to turn DP-SGD off, or a positive noise multiplier such as 1.0",
        )
    if noise == 0:
        return None
    return DPSGDConfig(noise_multiplier=noise, max_grad_norm=args.dp_max_grad_norm, delta=args.dp_delta)


def site_workspace(workspace_dir: str | None, start: Path) -> Path | None:
    """The site's NVFlare workspace: ``workspace_dir`` if given, else the nearest folder at or above ``start``
    holding a ``startup`` folder (NVFlare's marker of a site workspace); None when there is none."""
    if workspace_dir:
        return Path(workspace_dir).expanduser().resolve()
    here = start.resolve()
    return next((folder for folder in (here, *here.parents) if (folder / "startup").is_dir()), None)


def dp_ledger_path(value: str, *, workspace_dir: str | None, start: Path) -> Path | None:
    """Where the DP-SGD ledger lives for ``--dp_ledger value``: the site's ledger, or None for ``none``.

    Raises:
        MedPFLError: a path (a job cannot move the site's ledger), ``none`` inside a site workspace (a DP-SGD run
            at a site is always charged to the site's ledger), or ``auto`` with no site workspace found.
    """
    from medpfl_app.defenses.accountant import SiteLedgers

    root = _dp_ledger_site(value, workspace_dir=workspace_dir, start=start)
    return None if root is None else SiteLedgers(root).ledger_path("dp_sgd")


def dp_sgd_site_ledger(value: str, *, workspace_dir: str | None, start: Path) -> SampleLevelLedger | None:
    """The site's anchored DP-SGD ledger for ``--dp_ledger value`` (None for ``none`` outside a site).

    Raises:
        MedPFLError: as `dp_ledger_path`.
    """
    from medpfl_app.defenses.accountant import SiteLedgers
    from medpfl_app.defenses.dp_sgd import site_dp_sgd_ledger

    root = _dp_ledger_site(value, workspace_dir=workspace_dir, start=start)
    return None if root is None else site_dp_sgd_ledger(SiteLedgers(root))


def _dp_ledger_site(value: str, *, workspace_dir: str | None, start: Path) -> Path | None:
    if value not in ("auto", "none"):
        raise MedPFLError(
            f"--dp_ledger {value!r}: a job cannot choose where the site's DP-SGD ledger is (a new file would restart "
            "ε at 0)",
            fix="drop --dp_ledger (auto: the site's own ledger in its workspace)",
        )
    root = site_workspace(workspace_dir, start)
    if value == "none":
        if root is not None:
            raise MedPFLError(
                f"--dp_ledger none is refused at a site ({root}): every DP-SGD run on a site's data is charged to "
                "the site's ledger, or ε would restart at 0",
                fix="drop --dp_ledger; to train without a privacy claim, turn DP-SGD off (dp_noise_multiplier 0)",
            )
        return None
    if root is None:
        raise MedPFLError(
            f"cannot find this site's workspace (no 'startup' folder at or above {start}) to keep the DP-SGD ledger",
            fix="set MEDPFL_SITE_WORKSPACE to the site's workspace, or, for an experiment outside any NVFlare site, "
            "pass --dp_ledger none (ε then counts this job's steps only)",
        )
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """Run the site's Client API loop until the server ends the job."""
    args = build_arg_parser().parse_args(argv)
    import nvflare.client.lightning as flare

    flare.init()
    site = flare.get_site_name()
    try:
        trainer, module, datamodule, training_set = _prepare_site(args, site)
    except MedPFLError as error:
        # One clear line in the site log instead of a traceback from deep inside NVFlare; the server sees this
        # site fail its task, and the persisted global model is untouched because nothing was sent.
        logger.error("MedPFL site %s cannot train: %s", site, error)
        print(f"MedPFL site {site} cannot train: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None

    from medpfl_app.training.facts import TrainingFactsCallback

    facts = next(cb for cb in trainer.callbacks if isinstance(cb, TrainingFactsCallback))
    job_id = flare.get_job_id()
    recorder = RoundSamplesRecorder(
        run_dir=_record_run_dir(job_id, site), job_id=job_id, site=site, training_set=training_set, facts=facts
    )
    # After the facts callback (it collects the positions), before NVFlare's FLCallback (flare.patch appends it
    # last, and it sends the update at the end of fit): the record exists before the update leaves the site.
    trainer.callbacks = [*trainer.callbacks, recorder.callback()]
    flare.patch(trainer)
    while flare.is_running():
        input_model = flare.receive()
        if input_model is None:
            break
        logger.info("site %s: round %s", site, input_model.current_round)
        recorder.round_number = input_model.current_round
        trainer.validate(module, datamodule=datamodule, verbose=False)
        trainer.fit(module, datamodule=datamodule)
        if module.dp_session is not None:
            logger.info(
                "site %s: DP-SGD ε = %.4g at δ = %g, cumulative over this job's local steps so far",
                site,
                module.dp_session.epsilon(),
                module.dp_session.config.delta,
            )


def _record_run_dir(job_id: str, site: str) -> Path | None:
    """The client's run folder of the job, where the round records go; None (with a warning) if not found."""
    from medpfl_app.audit.round_samples import find_client_run_dir

    try:
        return find_client_run_dir(job_id, site, cwd=Path.cwd(), script=sys.argv[0] if sys.argv else None)
    except MedPFLError as error:
        logger.warning(
            "MedPFL site %s keeps no record of its rounds' samples, so the audit cannot score this site's updates: %s",
            site,
            error,
        )
        return None


class RoundSamplesRecorder:
    """Writes, at the end of each round's local training, which training samples went into the update.

    The record (`medpfl_app.audit.round_samples`) stays in the client's run folder of the job and never leaves
    the site; the audit's site scorer reads it, in this process or in the client job process. A failed write is
    logged and costs only the audit's site scores of that round, never the training.

    Args:
        run_dir: The client's run folder of the job (None: record nothing).
        job_id: The job.
        site: This site.
        training_set: How the training images were loaded (`medpfl_app.audit.round_samples.TrainingSet`).
        facts: The trainer's `TrainingFactsCallback` (its ``last_positions`` after each fit).
    """

    def __init__(
        self, *, run_dir: Path | None, job_id: str, site: str, training_set: TrainingSet, facts: TrainingFactsCallback
    ) -> None:
        self.run_dir = run_dir
        self.job_id = job_id
        self.site = site
        self.training_set = training_set
        self.facts = facts
        #: The round being trained (set before each fit).
        self.round_number: int | None = None

    def record(self) -> Path | None:
        """Write the current round's record; None when there is nothing to record or the write failed."""
        from medpfl_app.audit.round_samples import RoundSamples, write_round_samples

        if self.run_dir is None or self.round_number is None:
            return None
        try:
            record = RoundSamples(
                job_id=self.job_id,
                site=self.site,
                round=int(self.round_number),
                positions=tuple(self.facts.last_positions),
                training_set=self.training_set,
            )
            return write_round_samples(self.run_dir, record)
        except (OSError, ValueError) as error:
            logger.warning(
                "MedPFL site %s: could not record the samples of round %s, so the audit cannot score it: %r",
                self.site,
                self.round_number,
                error,
            )
            return None

    def callback(self) -> Callback:
        """A Lightning callback that calls `record` at the end of every fit (after the facts callback's)."""
        from pytorch_lightning.callbacks import Callback

        recorder = self

        class _RecordRoundSamples(Callback):
            def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
                recorder.record()

        return _RecordRoundSamples()


def _prepare(args: argparse.Namespace, site: str):
    """The site's trainer, model and data module (see `_prepare_site`)."""
    trainer, module, datamodule, _ = _prepare_site(args, site)
    return trainer, module, datamodule


def _prepare_site(args: argparse.Namespace, site: str):
    """``(trainer, module, datamodule, training_set)``: what the rounds need, and how the training images were
    loaded (`medpfl_app.audit.round_samples.TrainingSet`, for the audit's round records).

    Raises:
        MedPFLError: Bad flags or unusable site data.
    """
    import pytorch_lightning as pl

    from medpfl_app.audit.round_samples import describe_training_set
    from medpfl_app.data import build_dataloaders, load_site_data, resolve_site_data
    from medpfl_app.training.datamodule import SiteDataModule
    from medpfl_app.training.facts import TrainingFactsCallback
    from medpfl_app.training.lightning_module import ImageClassifier
    from medpfl_app.training.trainer import build_site_trainer

    dp_config = dp_sgd_config(args)  # before loading data: a bad flag should fail fast
    dp_ledger = (
        dp_sgd_site_ledger(args.dp_ledger, workspace_dir=os.environ.get("MEDPFL_SITE_WORKSPACE"), start=Path.cwd())
        if dp_config is not None
        else None
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
    # As the images are read: the audit's scorer checks that it loads this very list, unchanged.
    training_set = describe_training_set(site_data.training, data_config, args.num_classes)
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
        # Once for the whole job: the same accountant then counts the local steps of every round, after the steps
        # the site's ledger recorded in earlier jobs.
        train_loader = module.enable_dp_sgd(train_loader, dp_config, dp_ledger)
        logger.info(
            "site %s: DP-SGD ledger %s",
            site,
            dp_ledger.path if dp_ledger is not None else "none (ε counts this job only)",
        )
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
    return trainer, module, datamodule, training_set
