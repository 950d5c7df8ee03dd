"""Reconstruction thumbnails: opt-in only, because reconstructions of real data are patient data.

Ground truth never leaves a site, so the server can only show what its own attack reconstructed. The audit stores
those images (when its policy lets it) as ``<folder>/<site>/round_<n>/*.png``; `collect_thumbnails` downsizes
copies into the report folder with owner-only permissions (files 0600, folders 0700). Nothing here runs unless the
caller names the folder (``medpfl report --open-thumbnails FOLDER``).
"""

from __future__ import annotations

import base64
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from medpfl_app.atomic_io import write_atomic
from medpfl_app.errors import MedPFLError

THUMBNAIL_SIZE = 96
THUMBNAILS_DIR = "thumbnails"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ROUND_DIR = re.compile(r"round_(\d+)")


@dataclass(frozen=True)
class Thumbnail:
    """One downsized reconstruction copied into the report folder."""

    site: str
    round: int
    name: str
    path: Path
    data_uri: str


@dataclass(frozen=True)
class ThumbnailSet:
    """The thumbnails written, and the files of the folder that were not used (with why)."""

    thumbnails: tuple[Thumbnail, ...]
    ignored: tuple[str, ...]


def _owner_only(path: Path) -> None:
    os.chmod(path, 0o600)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def collect_thumbnails(folder: str | os.PathLike[str], out_dir: Path) -> ThumbnailSet:
    """Downsize every ``<site>/round_<n>/*.png`` of ``folder`` into ``out_dir/thumbnails`` (owner-only).

    Args:
        folder: Where the audit stored the server's reconstructions.
        out_dir: The report folder.

    Returns:
        The thumbnails (each also as a ``data:`` URI so the HTML stays self-contained) and what was ignored.

    Raises:
        MedPFLError: ``folder`` is not a folder.
    """
    from PIL import Image, UnidentifiedImageError  # Pillow only when thumbnails are asked for

    source = Path(folder)
    if not source.is_dir():
        raise MedPFLError(
            f"reconstruction folder {source} does not exist",
            fix="pass the folder where the audit stored reconstructions (<site>/round_<n>/*.png), or omit "
            "--open-thumbnails",
        )
    target = out_dir / THUMBNAILS_DIR
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    thumbnails: list[Thumbnail] = []
    ignored: list[str] = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = path.relative_to(source)
        match = _ROUND_DIR.fullmatch(relative.parent.name) if len(relative.parts) == 3 else None
        if match is None or path.suffix.lower() != ".png":
            ignored.append(f"{relative}: not <site>/round_<n>/<name>.png")
            continue
        with open(path, "rb") as handle:
            if handle.read(8) != PNG_SIGNATURE:
                ignored.append(f"{relative}: not a PNG file")
                continue
        try:
            with Image.open(path) as image:
                image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            ignored.append(f"{relative}: unreadable PNG ({error})")
            continue
        site, round_number = relative.parts[0], int(match.group(1))
        folder_out = target / _safe(site) / f"round_{round_number}"
        folder_out.mkdir(parents=True, exist_ok=True)
        for made in (target / _safe(site), folder_out):
            os.chmod(made, 0o700)
        content = buffer.getvalue()

        def write(temp: Path, content: bytes = content) -> None:
            temp.write_bytes(content)
            _owner_only(temp)

        written = write_atomic(folder_out / _safe(path.name), write)
        thumbnails.append(Thumbnail(
            site=site,
            round=round_number,
            name=path.name,
            path=written,
            data_uri="data:image/png;base64," + base64.b64encode(content).decode("ascii"),
        ))
    return ThumbnailSet(thumbnails=tuple(thumbnails), ignored=tuple(ignored))
