"""This job's round records at this site, and the training images they name (site-local, never sent).

Which images a round used comes from the site-local record the training script writes before each update leaves
(`medpfl_app.audit.round_samples`, ``<client run dir>/medpfl/round_samples/round_<n>.json``), so scoring works
whether the script runs in the client job process or as an external process. The images themselves are loaded
through the training script's own data resolution and transforms, with the settings the record names, and kept
for the rest of the job. What is missing is given as a short reason that names no path or sample.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from medpfl_app.nvflare.site.request_checks import quoted
from medpfl_app.nvflare.site.round_scoring import RoundImages


class SiteRounds:
    """The round records of one job at one site, and the site's training images, loaded once per training set.

    Args:
        logger: Where a missing record's detail is logged (the detail never leaves the site).
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        # This job at this site (set on START_RUN): where the training script's round records are.
        self.site: str | None = None
        self.job_id: str | None = None
        self.run_dir: Path | None = None
        # The site's training images, loaded once per training set (`round_samples.TrainingPool`).
        self._pool: Any = None
        self._pool_lock = threading.Lock()

    def bind(self, site: str, job_id: str, run_dir: Path) -> None:
        """Serve ``site``'s records of ``job_id``, kept under the client's run folder ``run_dir``."""
        self.site, self.job_id, self.run_dir = site, job_id, Path(run_dir)

    @property
    def bound(self) -> bool:
        """Whether the scorer started in a job (else it has no records to read)."""
        return self.site is not None and self.job_id is not None and self.run_dir is not None

    def recorded_rounds(self) -> tuple[int, ...]:
        """The rounds the training script recorded in this job (none before the scorer started)."""
        from medpfl_app.audit.round_samples import recorded_rounds

        return recorded_rounds(self.run_dir) if self.run_dir is not None else ()

    def sent_update(self, round_number: int) -> Any:
        """The site's record of the update it sent in ``round_number`` (`SentUpdate`), or the reason there is none."""
        from medpfl_app.audit.round_samples import RoundSamplesUnavailable, read_sent_update

        try:
            return read_sent_update(self.run_dir, round_number, job_id=self.job_id, site=self.site)  # type: ignore[arg-type]
        except RoundSamplesUnavailable as unavailable:
            self.log_unavailable(round_number, unavailable)
            return unavailable.reason

    def round_record(self, round_number: Any) -> Any:
        """The training script's record of ``round_number`` (`RoundSamples`), or the reason there is none."""
        from medpfl_app.audit.round_samples import RoundSamplesUnavailable, read_round_samples

        if not self.bound:
            return "the site's scorer has not started (no job)"
        try:
            return read_round_samples(self.run_dir, round_number, job_id=self.job_id, site=self.site)  # type: ignore[arg-type]
        except RoundSamplesUnavailable as unavailable:
            self.log_unavailable(round_number, unavailable)
            return unavailable.reason

    def images_of(self, record: Any, load_pool: Callable[[Any], Any]) -> RoundImages | str:
        """The site's images behind a round record, or the reason there are none (no path, no sample)."""
        from medpfl_app.audit.round_samples import RoundSamplesUnavailable

        try:
            pool = load_pool(record.training_set)
        except RoundSamplesUnavailable as unavailable:
            self.log_unavailable(record.round, unavailable)
            return unavailable.reason
        return RoundImages(pool=pool.images, labels=pool.labels, positions=record.positions)

    def warm_up(self, load_pool: Callable[[Any], Any]) -> None:
        """Load the images of the latest recorded round, if not loaded yet; failures wait for a request."""
        try:
            rounds = self.recorded_rounds()
            if rounds:
                record = self.round_record(rounds[-1])  # a reason (no images) is given again when a request asks
                if not isinstance(record, str):
                    self.images_of(record, load_pool)
        except Exception as error:  # noqa: BLE001 - a background warm-up must never take the site down
            self._logger.warning(f"MedPFL audit: could not load the site's training images ahead: {error!r}")

    def training_pool(self, training_set: Any) -> Any:
        """The site's training images for ``training_set``, loaded once and kept for the job.

        Raises:
            RoundSamplesUnavailable: The images cannot be loaded as training saw them.
        """
        from medpfl_app.audit.round_samples import load_training_pool

        with self._pool_lock:
            if self._pool is None or self._pool.training_set != training_set:
                # The same data resolution as the training script (medpfl_app.nvflare.site.client).
                self._pool = load_training_pool(
                    cast(str, self.site), training_set, workspace_dir=os.environ.get("MEDPFL_SITE_WORKSPACE")
                )
            return self._pool

    def log_unavailable(self, round_number: Any, unavailable: Any) -> None:
        """Log the site-local detail of a missing record (the reply carries only the short reason)."""
        if unavailable.detail:
            self._logger.warning(
                f"MedPFL audit: {self.site} cannot score round {quoted(round_number, 30)}: "
                f"{unavailable.reason} ({unavailable.detail})"
            )
