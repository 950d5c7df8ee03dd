"""Originals for the report's thumbnails: only the site decides, and only for synthetic demo data.

With ``release_demo_originals`` on (default off) and a server request that asks for them (`REQUEST_ORIGINALS`),
the site checks that its training data is the embedded synthetic demo set
(`medpfl_app.audit.demo_originals.demo_data_refusal`, from the demo's ``manifest.json``) and then adds small downsized
originals, matched to the reconstructions, to the scalar scores (`REPLY_ORIGINALS`). For any other data, or with
the option off, it refuses: the reason is logged at the site and sent as one short string
(`REPLY_ORIGINALS_REFUSED`) beside the scalar scores, and no image leaves.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from nvflare.apis.shareable import Shareable

from medpfl_app.contracts.score import REQUEST_RECONSTRUCTIONS
from medpfl_app.nvflare.site.protocol import REPLY_ORIGINALS, REPLY_ORIGINALS_REFUSED
from medpfl_app.nvflare.site.round_scoring import RoundImages


def release_originals(found: RoundImages | str, request: Shareable, refusal: str | None, max_size: int) -> Any:
    """Downsized originals matched to the request's reconstructions, or the reason none are released.

    Args:
        found: The round's images, or the reason the site has none.
        request: The server's score request.
        refusal: The site's verdict on its data (`medpfl_app.audit.demo_originals.demo_data_refusal`); None only for the
            synthetic demo set.
        max_size: Largest side of a released image.

    Returns:
        `medpfl_app.audit.demo_originals.ReleasedOriginals`, or a short reason string (no path, no sample).
    """
    import numpy as np

    from medpfl_app.audit.demo_originals import matched_originals

    if refusal is not None:
        return refusal
    if isinstance(found, str):
        return found
    try:
        reconstructions = np.asarray(request.get(REQUEST_RECONSTRUCTIONS), dtype=np.float32)
        return matched_originals(reconstructions, found.pool[list(found.positions)], max_size=max_size)
    except Exception as error:  # noqa: BLE001 - a failed release costs the thumbnails, never the scores
        return f"matching the originals failed: {type(error).__name__}"


class DemoDataCheck:
    """Whether this site's training data is the synthetic demo set, checked once per job (the data is fixed)."""

    def __init__(self) -> None:
        self._checked = False
        self._refusal: str | None = None

    def refusal(self, site: str, *, allowed: bool) -> str | None:
        """Why ``site`` releases no originals (None: ``allowed`` and synthetic demo data)."""
        if not allowed:
            return f"{site} does not release originals (release_demo_originals is off)"
        if not self._checked:
            from medpfl_app.audit.demo_originals import demo_data_refusal
            from medpfl_app.data.site_config import resolve_site_data

            try:
                # The same resolution as the training script (medpfl_app.nvflare.site.client).
                settings = resolve_site_data(site, workspace_dir=os.environ.get("MEDPFL_SITE_WORKSPACE"))
                self._refusal = demo_data_refusal(settings.datalist, site)
            except Exception as error:  # noqa: BLE001 - unknown data is never released
                self._refusal = f"{site} could not identify its training data ({type(error).__name__})"
            self._checked = True
        return self._refusal


def add_originals(
    reply: Shareable,
    released: Any,
    round_number: Any,
    log_info: Callable[[str], None],
) -> None:
    """Put `release_originals`' result on the reply: the originals' payload, or the reason none are released."""
    if isinstance(released, str):
        log_info(f"MedPFL audit: originals of round {round_number} not released: {released}")
        reply[REPLY_ORIGINALS_REFUSED] = released
        return
    log_info(
        f"MedPFL audit: released {len(released.reconstruction_indices)} downsized "
        f"synthetic demo originals of round {round_number} for the report"
    )
    reply[REPLY_ORIGINALS] = released.to_payload()
