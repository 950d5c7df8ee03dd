"""Server side: the audit's reconstructions (and released demo originals) as owner-only PNGs for the report.

Reconstructions are patient data when the sites train on real data, so nothing here runs unless the job turns
`medpfl_app.nvflare.server.audit_filter.AuditFilter`'s ``store_reconstructions`` on. Files go to
``<run dir>/medpfl/thumbnails/<site>/round_<n>/recon_<i>.png`` and, when the site released them (synthetic demo data
only, see `medpfl_app.audit.demo_originals`), ``original_<i>.png`` beside them with the same ``i``. Files are 0600 and
every folder from ``thumbnails`` down 0700, whatever the umask; `medpfl_app.reports.thumbnails` reads this layout.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np

from medpfl_app.atomic_io import write_atomic
from medpfl_app.audit.demo_originals import ReleasedOriginals
from medpfl_app.errors import MedPFLError

THUMBNAILS_FOLDER = "thumbnails"
RECONSTRUCTION_PREFIX = "recon_"
ORIGINAL_PREFIX = "original_"


def safe_site(site: str) -> str:
    """A folder name for ``site`` (NVFlare names are already safe; anything else is replaced, never a path)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(site)).lstrip(".") or "_"


def to_uint8(images: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` floats in [0, 1] (or uint8) → uint8 of the same shape."""
    array = np.asarray(images)
    if array.dtype == np.uint8:
        return array
    return np.round(np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """One ``(C, H, W)`` uint8 image as PNG (1 channel: grey, 3: RGB, else the first channel)."""
    from PIL import Image

    if image.ndim != 3:
        raise MedPFLError(f"expected a (C, H, W) image, got shape {image.shape}", fix="pass one image at a time")
    picture = (
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)), "RGB")
        if image.shape[0] == 3
        else (Image.fromarray(np.ascontiguousarray(image[0]), "L"))
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _private_folder(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask, and an existing folder keeps its own


def _write_private(path: Path, content: bytes) -> Path:
    def write(temp: Path) -> None:
        temp.write_bytes(content)
        os.chmod(temp, 0o600)

    return write_atomic(path, write)


def store_round(
    folder: str | os.PathLike[str],
    site: str,
    round_number: int,
    reconstructions: np.ndarray,
    originals: ReleasedOriginals | None = None,
) -> list[Path]:
    """Write one site-round's reconstructions (and released originals) as owner-only PNGs.

    Args:
        folder: The thumbnails folder (``<run dir>/medpfl/thumbnails``).
        site: The site whose update was attacked.
        round_number: The round.
        reconstructions: ``(N, C, H, W)`` in [0, 1].
        originals: Downsized originals the site released (synthetic demo data only), matched by index.

    Returns:
        The files written.

    Raises:
        MedPFLError: A negative round or images that are not ``(N, C, H, W)``.
    """
    if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 0:
        raise MedPFLError(f"round must be a non-negative integer, got {round_number!r}", fix="pass the round")
    recon = to_uint8(reconstructions)
    if recon.ndim != 4:
        raise MedPFLError(f"expected (N, C, H, W) reconstructions, got {recon.shape}", fix="pass a batch of images")
    root = Path(folder)
    target = root / safe_site(site) / f"round_{round_number}"
    for made in (root, root / safe_site(site), target):
        _private_folder(made)
    written = [
        _write_private(target / f"{RECONSTRUCTION_PREFIX}{index}.png", png_bytes(image))
        for index, image in enumerate(recon)
    ]
    if originals is not None:
        for index, image in zip(originals.reconstruction_indices, originals.images):
            written.append(_write_private(target / f"{ORIGINAL_PREFIX}{index}.png", png_bytes(image)))
    return written


def stored_any(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds any stored PNG (the report then embeds them)."""
    path = Path(folder)
    return path.is_dir() and any(path.rglob("*.png"))
