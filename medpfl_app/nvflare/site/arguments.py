"""The site script's command line: the job's training settings, per-site overrides and the DP-SGD flags.

The job writes these arguments (``train_args``, `medpfl_app.nvflare.jobs`); the site validates them before it
loads any data, so a bad flag fails fast with one clear `MedPFLError`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from medpfl_app.errors import MedPFLError

if TYPE_CHECKING:
    from medpfl_app.defenses.dp_sgd import DPSGDConfig


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
