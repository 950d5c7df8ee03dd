"""The site-local record of which training samples went into each round's update (for the audit's scorer).

After each round's local training, before the update leaves, the training script writes the round's sample
positions to a file in the job's client run folder (`medpfl_app.audit.round_samples`); the site's scorer
(`medpfl_app.nvflare.site.scorer`) reads it, whether NVFlare runs the script in the client job process or as an
external process. The record never leaves the site.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from medpfl_app.errors import MedPFLError

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback

    from medpfl_app.audit.round_samples import TrainingSet
    from medpfl_app.training.facts import TrainingFactsCallback

logger = logging.getLogger("medpfl.site")


def record_run_dir(job_id: str, site: str) -> Path | None:
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
