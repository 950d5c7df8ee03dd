"""The Lightning trainer every site uses, in one place so tests train exactly as sites do."""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


def build_site_trainer(*, max_epochs: int, max_steps: int = -1, callbacks: Sequence[Callback] = ()) -> pl.Trainer:
    """A quiet CPU trainer for the Client API's validate-then-fit rounds.

    Args:
        max_epochs: Local epochs per round (NVFlare's FLCallback raises the limit each round).
        max_steps: Cap on optimizer steps per round (-1: none).
        callbacks: Callbacks that must run before NVFlare's (``flare.patch`` appends its own last).
    """
    return pl.Trainer(
        max_epochs=max_epochs,
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        inference_mode=False,  # validate-then-fit with torchmetrics breaks under inference mode
        deterministic=True,
    )
