"""What runs at each site inside NVFlare: receive the global model, validate it, train locally, send the update.

``custom/medpfl_site.py`` (shipped in every job's ``app/custom/``) only calls `main`. The site finds its data
through `medpfl_app.data.resolve_site_data` — site-local configuration, never a path baked into the job — so the
same job runs unchanged at every hospital (`medpfl_app.nvflare.site.preparation`). After each round's local
training, before the update leaves, it writes which training samples went into it to a site-local file in the
job's client run folder (`medpfl_app.nvflare.site.round_recorder`), for the audit's site scorer; this works whether
NVFlare runs the script in the client job process or as an external process.

The command line is `medpfl_app.nvflare.site.arguments`; the DP-SGD ledger's place is
`medpfl_app.nvflare.site.dp_ledger`. Their names are re-exported here for the job tools and the tests.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.site.arguments import (
    SITE_OVERRIDE_KEYS,
    build_arg_parser,
    dp_sgd_config,
    parse_site_overrides,
)
from medpfl_app.nvflare.site.dp_ledger import dp_ledger_path, dp_sgd_site_ledger, site_workspace
from medpfl_app.nvflare.site.preparation import prepare_site
from medpfl_app.nvflare.site.round_recorder import RoundSamplesRecorder, record_run_dir

__all__ = [
    "SITE_OVERRIDE_KEYS",
    "RoundSamplesRecorder",
    "build_arg_parser",
    "dp_ledger_path",
    "dp_sgd_config",
    "dp_sgd_site_ledger",
    "main",
    "parse_site_overrides",
    "site_workspace",
]

logger = logging.getLogger("medpfl.site")


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
        run_dir=record_run_dir(job_id, site), job_id=job_id, site=site, training_set=training_set, facts=facts
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


def _prepare(args: argparse.Namespace, site: str) -> tuple[Any, Any, Any]:
    """The site's trainer, model and data module (see `_prepare_site`)."""
    trainer, module, datamodule, _ = _prepare_site(args, site)
    return trainer, module, datamodule


def _prepare_site(args: argparse.Namespace, site: str) -> tuple[Any, Any, Any, Any]:
    """``(trainer, module, datamodule, training_set)`` (`medpfl_app.nvflare.site.preparation.prepare_site`).

    Raises:
        MedPFLError: Bad flags or unusable site data.
    """
    return prepare_site(args, site)
