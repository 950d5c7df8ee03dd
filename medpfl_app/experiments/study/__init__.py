"""The privacy–utility study (``medpfl study``): real in-process FedAvg per defense setting, audited as the server does.

- `config`: frozen cell/run/study configurations, the engine (`Engine`) and the cell key of the resumable store.
- `presets`: ``small``, ``seed``, ``full``.
- `federated`: FedAvg over K sites on seeded phantoms with the NVFlare filters' defense objects.
- `evaluate`: one cell: utility (torchmetrics), the audit of the received updates, formal ε.
- `store`, `runner`: the resumable JSONL store and the loop with its progress bar.
- `outputs`, `plot`, `page`: ``study.csv`` / ``study.json`` / ``frontier.svg`` / ``study.html``.

The simulator engine (each cell an NVFlare job in the simulator) lives in `medpfl_app.nvflare.study_cells`: this
package never imports NVFlare.
"""

from medpfl_app.experiments.study.config import (
    AuditBudget,
    CellConfig,
    DefenseKind,
    DefenseSetting,
    Engine,
    RunConfig,
    StudyConfig,
    WeightInit,
    cell_key,
)
from medpfl_app.experiments.study.presets import Preset, preset
from medpfl_app.experiments.study.result import CellResult, SiteLeakage
from medpfl_app.experiments.study.runner import StudyOutcome, run_study

__all__ = [
    "AuditBudget",
    "CellConfig",
    "CellResult",
    "DefenseKind",
    "DefenseSetting",
    "Engine",
    "Preset",
    "RunConfig",
    "SiteLeakage",
    "StudyConfig",
    "StudyOutcome",
    "WeightInit",
    "cell_key",
    "preset",
    "run_study",
]
