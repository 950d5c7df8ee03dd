"""NVFlare job definitions: specs in Python, exported to the ready-to-submit folders under ``jobs/``."""

from medpfl_app.nvflare.jobs.spec import JOB_CATALOG, JobSpec
from medpfl_app.nvflare.jobs.training_spec import TrainingSpec

__all__ = ["JOB_CATALOG", "JobSpec", "TrainingSpec"]
