"""Reconstruction thumbnails: shown only when a job opted in or a folder is named, as they may be patient data.

Ground truth never leaves a site, so the server normally shows only what its own attack reconstructed. The audit
stores those images (when its policy lets it, `medpfl_app.audit.thumbnail_store`) as
``<folder>/<site>/round_<n>/recon_<i>.png``, plus ``original_<i>.png`` where a site released the matching original
(synthetic demo data only). `collect_thumbnails` downsizes copies into the report folder with owner-only permissions
(files 0600, folders 0700); other PNG names count as reconstructions. Nothing here runs unless the caller names the
folder (``medpfl report --open-thumbnails FOLDER``), or the run itself stored them beside its ledger
(``<ledger folder>/thumbnails``, written only by a job that turned ``store_reconstructions`` on, which is meant for
the synthetic demo data); ``medpfl report --no-thumbnails`` shows none even then.
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
_KINDS = (
    ("original", re.compile(r"original_(\d+)\.png", re.IGNORECASE)),
    ("reconstruction", re.compile(r"recon_(\d+)\.png", re.IGNORECASE)),
)


@dataclass(frozen=True)
class Thumbnail:
    """One downsized image in the report folder.

    Attributes:
        kind: ``"original"`` (a site-released synthetic demo original) or ``"reconstruction"``.
        index: The reconstruction index from ``recon_<i>`` / ``original_<i>`` (pairs the two), else None.
    """

    site: str
    round: int
    name: str
    path: Path
    data_uri: str
    kind: str = "reconstruction"
    index: int | None = None


def _kind(name: str) -> tuple[str, int | None]:
    for kind, pattern in _KINDS:
        match = pattern.fullmatch(name)
        if match:
            return kind, int(match.group(1))
    return "reconstruction", None


@dataclass(frozen=True)
class ThumbnailSet:
    """The thumbnails written, and the files of the folder that were not used (with why)."""

    thumbnails: tuple[Thumbnail, ...]
    ignored: tuple[str, ...]


def stored_any(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is a folder holding at least one PNG (a run's own store of reconstructions)."""
    path = Path(folder)
    return path.is_dir() and any(p.is_file() for p in path.rglob("*.png"))


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
    # The audit's own store is the report folder's thumbnails folder: embed those files, do not copy onto them.
    in_place = source.resolve() == target.resolve()
    thumbnails: list[Thumbnail] = []
    ignored: list[str] = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = path.relative_to(source)
        match = _ROUND_DIR.fullmatch(relative.parent.name) if len(relative.parts) == 3 else None
        if match is None or path.suffix.lower() != ".png":
            ignored.append(f"{relative}: not <site>/round_<n>/<name>.png")
            continue
        content = _downsized(path)
        if isinstance(content, str):
            ignored.append(f"{relative}: {content}")
            continue
        site, round_number = relative.parts[0], int(match.group(1))
        written = path if in_place else _copy_out(target, site, round_number, path.name, content)
        if in_place:
            for made in (path.parent.parent, path.parent):
                os.chmod(made, 0o700)
            _owner_only(path)
        kind, index = _kind(path.name)
        thumbnails.append(
            Thumbnail(
                site=site,
                round=round_number,
                name=path.name,
                path=written,
                data_uri="data:image/png;base64," + base64.b64encode(content).decode("ascii"),
                kind=kind,
                index=index,
            )
        )
    return ThumbnailSet(thumbnails=tuple(thumbnails), ignored=tuple(ignored))


def _downsized(path: Path) -> bytes | str:
    """The PNG at ``path`` shrunk to `THUMBNAIL_SIZE`, or why it cannot be used."""
    from PIL import (  # Pillow only when thumbnails are asked for
        Image,
        UnidentifiedImageError,
    )

    with open(path, "rb") as handle:
        if handle.read(8) != PNG_SIGNATURE:
            return "not a PNG file"
    try:
        with Image.open(path) as image:
            image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        return f"unreadable PNG ({error})"
    return buffer.getvalue()


def _copy_out(target: Path, site: str, round_number: int, name: str, content: bytes) -> Path:
    """Write a thumbnail to ``target/<site>/round_<n>/<name>`` atomically, every folder and file owner-only."""
    folder_out = target / _safe(site) / f"round_{round_number}"
    folder_out.mkdir(parents=True, exist_ok=True)
    for made in (target / _safe(site), folder_out):
        os.chmod(made, 0o700)

    def write(temp: Path) -> None:
        temp.write_bytes(content)
        _owner_only(temp)

    return write_atomic(folder_out / _safe(name), write)


def thumbnail_rows(thumbnails: ThumbnailSet | None) -> list[dict]:
    """Per site and round: the originals (may be empty) above the reconstructions, paired by index.

    Returns:
        ``[{"site", "round", "originals": [Thumbnail | None, ...], "reconstructions": [...], "pairs": [(original,
        reconstruction), ...]}]``: both lists have
        one column per index, so an original sits above the reconstruction it was scored against; columns without
        an original hold None, and ``originals`` is empty when the site released none.
    """
    groups: dict[tuple[str, int], list[Thumbnail]] = {}
    for thumb in thumbnails.thumbnails if thumbnails else ():
        groups.setdefault((thumb.site, thumb.round), []).append(thumb)
    rows = []
    for (site, round_number), items in sorted(groups.items()):
        originals = {t.index: t for t in items if t.kind == "original"}
        recons = sorted(
            (t for t in items if t.kind == "reconstruction"), key=lambda t: (t.index is None, t.index or 0, t.name)
        )
        columns = [(originals.pop(t.index, None) if t.index is not None else None, t) for t in recons]
        columns += [(o, None) for _, o in sorted(originals.items())]  # an original without its reconstruction
        has_originals = any(o is not None for o, _ in columns)
        rows.append(
            {
                "site": site,
                "round": round_number,
                "originals": [o for o, _ in columns] if has_originals else [],
                "reconstructions": [r for _, r in columns],
                "pairs": columns,
            }
        )
    return rows
