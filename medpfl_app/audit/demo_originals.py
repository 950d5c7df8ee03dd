"""Site-side release of originals for report thumbnails: synthetic demo data only, decided by the site alone.

Ground-truth images never leave a site, with one exception a site may opt into: when its training data is the
embedded synthetic phantom set (`medpfl_app.data.demo.generate_demo_dataset`, whose ``manifest.json`` states
``"synthetic": true``), there is no patient behind the images, so the site's scorer may send small downsized copies
of the originals it scored, for the audit report to show next to the server's reconstructions. For any other data
the site refuses (`demo_data_refusal` gives the reason) and sends scalar scores only.

Pure functions; `medpfl_app.nvflare.site.scorer` is the NVFlare adapter. Refusal reasons name no path, sample or
image, so the site may send them to the server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpfl_app.errors import MedPFLError

#: Largest side of a released original, in pixels: enough to recognise a phantom, not a diagnostic image.
ORIGINAL_MAX_SIZE = 32
_DEMO_TRAINING_IMAGE = re.compile(r"images/train_\d{5}\.nii\.gz")


@dataclass(frozen=True)
class ReleasedOriginals:
    """Downsized originals matched to the server's reconstructions (synthetic demo data only).

    Attributes:
        reconstruction_indices: For each image, the index of the reconstruction it was paired with.
        images: ``(K, C, h, w)`` uint8, each side at most the requested maximum.
    """

    reconstruction_indices: tuple[int, ...]
    images: np.ndarray

    def to_payload(self) -> dict[str, Any]:
        """The aux-channel form (plain ints and one uint8 array)."""
        return {"reconstruction_indices": list(self.reconstruction_indices), "images": self.images}


def demo_data_refusal(datalist: str | Path, site: str) -> str | None:
    """Why ``datalist`` is not recognisably the synthetic demo set (None: it is, originals may be released).

    The demo generator writes ``<root>/<site>/datalist.json`` and ``<root>/manifest.json``. Recognised only when
    that manifest states ``"synthetic": true`` with the demo's dataset id and generator, lists this very datalist,
    and the datalist's training entries are the generator's own files (``images/train_NNNNN.nii.gz`` inside the
    site's folder) with the label counts the manifest recorded for it. Anything else counts as possibly real data.

    Args:
        datalist: The datalist the site trains from.
        site: The site name (only for the reason text).

    Returns:
        None for the synthetic demo set, else a short reason that names no path.
    """
    from medpfl_app.data.demo import DEMO_DATASET_ID, MANIFEST_NAME

    path = Path(datalist)
    if not path.is_file():
        return f"{site} trains from a folder, not a demo datalist: not recognisably synthetic demo data"
    manifest_path = path.parent.parent / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no demo {MANIFEST_NAME} beside {site}'s data folder: not recognisably synthetic demo data"
    except (OSError, ValueError):
        return f"{site}'s datalist or demo {MANIFEST_NAME} is unreadable: not recognisably synthetic demo data"
    if not isinstance(manifest, dict) or manifest.get("synthetic") is not True:
        return f"the {MANIFEST_NAME} beside {site}'s data does not state that the data is synthetic"
    if manifest.get("dataset") != DEMO_DATASET_ID or manifest.get("generator") != "medpfl_app.data.phantoms":
        return f"the {MANIFEST_NAME} beside {site}'s data is not the MedPFL demo set ({DEMO_DATASET_ID})"
    listed = None
    for entry in (manifest.get("sites") or {}).values():
        candidate = path.parent.parent / str((entry or {}).get("datalist", ""))
        if candidate.is_file() and candidate.resolve() == path.resolve():
            listed = entry
    if listed is None:
        return f"the demo {MANIFEST_NAME} does not list {site}'s datalist"
    training = entries.get("training") if isinstance(entries, dict) else None
    if not isinstance(training, list) or not training:
        return f"{site}'s datalist has no training entries"
    for item in training:
        image = item.get("image") if isinstance(item, dict) else None
        if not isinstance(image, str) or not _DEMO_TRAINING_IMAGE.fullmatch(image):
            return f"{site}'s datalist names training images the demo generator does not write"
    classes = manifest.get("classes") or []
    labels = [item.get("label") for item in training]
    if not classes or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(classes) for v in labels):
        return f"{site}'s training labels are not the demo classes"
    if np.bincount(labels, minlength=len(classes)).tolist() != (listed.get("label_counts") or {}).get("training"):
        return f"{site}'s training labels differ from the demo {MANIFEST_NAME}: the datalist was changed"
    return None


def downsize(images: torch.Tensor, max_size: int = ORIGINAL_MAX_SIZE) -> np.ndarray:
    """``(K, C, H, W)`` floats in [0, 1] → uint8, area-averaged so that no side exceeds ``max_size``.

    Raises:
        MedPFLError: ``max_size`` is below 4, or ``images`` is not 4-D.
    """
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 4:
        raise MedPFLError(f"max_size must be an integer >= 4, got {max_size!r}", fix="use e.g. 32")
    if images.ndim != 4:
        raise MedPFLError(f"expected (K, C, H, W) images, got shape {tuple(images.shape)}", fix="pass 2-D images")
    images = images.detach().float().clamp(0, 1)
    height, width = images.shape[-2:]
    scale = min(1.0, max_size / max(height, width))
    if scale < 1.0:  # area averaging: no aliasing, no detail the original did not have
        size = (max(1, int(height * scale)), max(1, int(width * scale)))
        images = torch.nn.functional.interpolate(images, size=size, mode="area")
    return (images * 255.0).round().to(torch.uint8).numpy()


def matched_originals(
    reconstructions: np.ndarray, used_images: torch.Tensor, *, max_size: int = ORIGINAL_MAX_SIZE
) -> ReleasedOriginals:
    """The used image paired with each reconstruction (the pairing the scores used), downsized to uint8.

    Call only after `demo_data_refusal` returned None: the result is ground truth.

    Args:
        reconstructions: ``(N, C, H, W)`` from the server, in [0, 1].
        used_images: ``(M, C, H, W)`` the images the site trained on in that round.
        max_size: Largest side of a released image.
    """
    from medpfl_app.audit.scoring import pair_reconstructions

    rows, cols = pair_reconstructions(reconstructions, used_images)
    order = sorted(range(len(rows)), key=lambda k: rows[k])
    return ReleasedOriginals(
        reconstruction_indices=tuple(int(rows[k]) for k in order),
        images=downsize(used_images[[cols[k] for k in order]], max_size),
    )


def accept_originals(payload: Any, num_reconstructions: int, *, max_size: int = 64) -> ReleasedOriginals:
    """Server side: check a site's originals payload before anything is written (defense in depth).

    Args:
        payload: The reply's originals (`ReleasedOriginals.to_payload` form).
        num_reconstructions: How many reconstructions the server sent.
        max_size: Largest side accepted.

    Raises:
        MedPFLError: Not the expected form: indices out of range or repeated, not uint8, too large.
    """
    if not isinstance(payload, dict):
        raise MedPFLError("the site's originals are not a mapping", fix="send ReleasedOriginals.to_payload()")
    images = payload.get("images")
    indices = payload.get("reconstruction_indices")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise MedPFLError("the site's originals are not a (K, C, h, w) uint8 array", fix="send downsized uint8")
    if max(images.shape[-2:]) > max_size or images.shape[1] not in (1, 3):
        raise MedPFLError(
            f"the site's originals have shape {images.shape}", fix=f"at most {max_size} px, 1 or 3 channels"
        )
    if not isinstance(indices, Sequence) or len(indices) != images.shape[0]:
        raise MedPFLError("the site's originals do not say which reconstruction each matches", fix="send indices")
    checked = [int(i) for i in indices if isinstance(i, (int, np.integer)) and not isinstance(i, bool)]
    if (
        len(checked) != len(indices)
        or len(set(checked)) != len(checked)
        or any(not 0 <= i < num_reconstructions for i in checked)
    ):
        raise MedPFLError("the site's original indices are not distinct reconstruction indices", fix="send 0..N-1")
    return ReleasedOriginals(reconstruction_indices=tuple(checked), images=images)
