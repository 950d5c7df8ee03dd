"""Seeded 2-D brain-MRI-like axial phantoms with and without lesions (pure NumPy, nothing downloaded).

Each phantom is an axial slice: a skull ring around brain tissue with smooth intensity variation and a bright
cortical ribbon, dark lateral ventricles, Rician-like noise, and per-subject variation of head shape, size,
rotation and position. The classes follow the seed paper's brain-MRI set; lesions are painted by functions found
by class name in `LESIONS`:

- ``no_tumor``: no lesion.
- ``glioma``: an irregular, intra-axial bright lesion with a dimmer oedema halo, away from the midline.
- ``meningioma``: a round, homogeneous, extra-axial lesion touching the inner skull.
- ``pituitary``: a small bright lesion near the centre-bottom (sellar region).

Lesions are large and bright enough for a small CNN to learn in a few epochs, but their position, size and shape
vary, so no single pixel decides the class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medpfl_app.errors import MedPFLError
from medpfl_app.registry import Registry

PHANTOM_CLASSES: tuple[str, ...] = ("no_tumor", "glioma", "meningioma", "pituitary")


@dataclass(frozen=True)
class _Head:
    """Per-subject geometry in normalised coordinates ([-1, 1] across the image)."""

    x: np.ndarray  # column coordinate of every pixel in the head frame
    y: np.ndarray  # row coordinate (down is positive)
    radius: np.ndarray  # elliptic radius: 1 at the outer skull surface
    brain: np.ndarray  # mask inside the inner skull surface
    inner: float  # elliptic radius of the inner skull surface
    semi_axes: tuple[float, float]  # (horizontal, vertical) semi-axes of the outer skull, image units


LesionPainter = Callable[[np.ndarray, _Head, np.random.Generator], None]
LESIONS: Registry[LesionPainter] = Registry("phantom class")


def generate_phantom(label: int | str, *, rng: np.random.Generator, image_size: int = 64) -> np.ndarray:
    """Draw one phantom.

    Args:
        label: Class index into `PHANTOM_CLASSES` or class name.
        rng: Source of all randomness (the same generator state gives the same pixels).
        image_size: Side length in pixels.

    Returns:
        A float32 ``[image_size, image_size]`` array spanning exactly [0, 1].
    """
    name = label
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(PHANTOM_CLASSES):
        name = PHANTOM_CLASSES[int(label)]
    if not isinstance(name, str) or name not in LESIONS:
        raise MedPFLError(
            f"unknown phantom class {label!r}",
            fix=f"use an index 0..{len(PHANTOM_CLASSES) - 1} or one of {', '.join(PHANTOM_CLASSES)}",
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise MedPFLError(f"phantom image_size must be an integer >= 16, got {image_size!r}", fix="use e.g. 64")
    head = _draw_head(image_size, rng)
    image = _brain_tissue(head, image_size, rng)
    LESIONS.get(name)(image, head, rng)
    return _finish(image, image_size, rng)


def generate_phantoms(labels: Sequence[int], *, seed: int = 0, image_size: int = 64) -> np.ndarray:
    """Draw one phantom per label; phantom ``i`` depends only on ``(seed, i, labels[i])``.

    Returns:
        A float32 ``[len(labels), image_size, image_size]`` array in [0, 1].
    """
    if not len(labels):
        return np.zeros((0, image_size, image_size), np.float32)
    return np.stack(
        [
            generate_phantom(int(label), rng=np.random.default_rng([seed, index]), image_size=image_size)
            for index, label in enumerate(labels)
        ]
    )


def _draw_head(size: int, rng: np.random.Generator) -> _Head:
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    centre = rng.uniform(-0.04, 0.04, size=2)
    angle = rng.uniform(-0.15, 0.15)
    cos, sin = np.cos(angle), np.sin(angle)
    x = cos * (cols - centre[1]) + sin * (rows - centre[0])
    y = -sin * (cols - centre[1]) + cos * (rows - centre[0])
    semi_axes = (float(rng.uniform(0.72, 0.82)), float(rng.uniform(0.86, 0.94)))
    radius = np.sqrt((x / semi_axes[0]) ** 2 + (y / semi_axes[1]) ** 2)
    inner = float(1.0 - rng.uniform(0.09, 0.13))
    return _Head(x=x, y=y, radius=radius, brain=radius < inner, inner=inner, semi_axes=semi_axes)


def _smooth_field(size: int, rng: np.random.Generator, sigma_fraction: float) -> np.ndarray:
    field: np.ndarray = ndimage.gaussian_filter(
        rng.standard_normal((size, size)), sigma=sigma_fraction * size, mode="reflect"
    )
    normalised: np.ndarray = field / (np.abs(field).max() + 1e-12)
    return normalised


def _brain_tissue(head: _Head, size: int, rng: np.random.Generator) -> np.ndarray:
    image = np.zeros((size, size))
    skull = (head.radius >= head.inner) & (head.radius < 1.0)
    scalp = (head.radius >= 1.0) & (head.radius < 1.05)
    image[skull] = rng.uniform(0.68, 0.8)
    image[scalp] = rng.uniform(0.3, 0.4)
    # White matter in the middle, a brighter grey-matter ribbon folded into gyri near the cortex.
    base = rng.uniform(0.4, 0.48) + 0.06 * _smooth_field(size, rng, 0.12)
    angle = np.arctan2(head.y, head.x)
    folds = rng.integers(9, 14)
    depth = head.inner - head.radius + 0.04 * np.sin(folds * angle + rng.uniform(0, 2 * np.pi))
    ribbon = np.clip(1.0 - depth / 0.12, 0.0, 1.0)
    tissue = base + rng.uniform(0.08, 0.14) * ribbon
    image[head.brain] = tissue[head.brain]
    # Cerebrospinal fluid between brain and skull.
    csf = head.brain & (head.radius > head.inner - 0.035)
    image[csf] *= 0.6
    _paint_ventricles(image, head, rng)
    # Falx: a thin darker line along the midline.
    falx = head.brain & (np.abs(head.x) < 0.015) & (np.abs(head.y) > 0.22)
    image[falx] *= 0.75
    return image


def _paint_ventricles(image: np.ndarray, head: _Head, rng: np.random.Generator) -> None:
    spread = rng.uniform(0.08, 0.12)
    width, height = rng.uniform(0.06, 0.09), rng.uniform(0.2, 0.28)
    tilt = rng.uniform(0.25, 0.45)
    level = rng.uniform(0.1, 0.18)
    offset_y = rng.uniform(-0.12, -0.02)
    for side in (-1.0, 1.0):
        dx = head.x - side * spread
        dy = head.y - offset_y
        # Tilted ellipses form the butterfly shape of the frontal horns.
        u = np.cos(side * tilt) * dx + np.sin(side * tilt) * dy
        v = -np.sin(side * tilt) * dx + np.cos(side * tilt) * dy
        image[((u / width) ** 2 + (v / height) ** 2 < 1.0) & head.brain] = level


def _blob(
    head: _Head, centre: tuple[float, float], radius: float, rng: np.random.Generator, roughness: float
) -> np.ndarray:
    """Distance to a (possibly irregular) blob, in units of its radius: < 1 inside."""
    dx, dy = head.x - centre[0], head.y - centre[1]
    angle = np.arctan2(dy, dx)
    wobble = np.ones_like(angle)
    for harmonic in (2, 3, 5):
        wobble += roughness * rng.uniform(0.3, 1.0) / harmonic * np.sin(harmonic * angle + rng.uniform(0, 2 * np.pi))
    return np.sqrt(dx**2 + dy**2) / (radius * wobble)


@LESIONS.register("no_tumor")
def _no_lesion(image: np.ndarray, head: _Head, rng: np.random.Generator) -> None:
    del image, head, rng


@LESIONS.register("glioma")
def _glioma(image: np.ndarray, head: _Head, rng: np.random.Generator) -> None:
    # Ring-enhancing tumour: bright irregular rim, dark necrotic core, oedema halo brighter than tissue.
    side = rng.choice((-1.0, 1.0))
    centre = (side * rng.uniform(0.25, 0.4), rng.uniform(-0.35, 0.3))
    radius = rng.uniform(0.16, 0.23)
    distance = _blob(head, centre, radius, rng, roughness=0.6)
    halo = head.brain & (distance < 1.6)
    image[halo] = np.maximum(image[halo], rng.uniform(0.66, 0.72))
    rim = head.brain & (distance < 1.0)
    image[rim] = rng.uniform(0.92, 1.0)
    necrosis = head.brain & (distance < rng.uniform(0.45, 0.6))
    image[necrosis] = rng.uniform(0.25, 0.35)


@LESIONS.register("meningioma")
def _meningioma(image: np.ndarray, head: _Head, rng: np.random.Generator) -> None:
    # Convexity or lateral skull (image up is negative y), never the skull base where pituitary lesions sit.
    angle = rng.uniform(-np.pi - 0.3, 0.3)
    radius = rng.uniform(0.15, 0.22)
    # Centre on the inner skull surface, pulled inwards by less than the radius so the lesion touches the skull.
    surface = head.inner * np.array([head.semi_axes[0] * np.cos(angle), head.semi_axes[1] * np.sin(angle)])
    pull = 1.0 - 0.6 * radius / np.linalg.norm(surface)
    centre = (float(surface[0] * pull), float(surface[1] * pull))
    distance = _blob(head, centre, radius, rng, roughness=0.05)
    lesion = (distance < 1.0) & (head.radius < head.inner + 0.02)
    image[lesion] = rng.uniform(0.95, 1.0)
    rim = (distance >= 1.0) & (distance < 1.15) & head.brain
    image[rim] *= 0.7


@LESIONS.register("pituitary")
def _pituitary(image: np.ndarray, head: _Head, rng: np.random.Generator) -> None:
    centre = (rng.uniform(-0.12, 0.12), rng.uniform(0.3, 0.52))
    radius = rng.uniform(0.07, 0.1)
    distance = _blob(head, centre, radius, rng, roughness=0.15)
    image[(distance < 1.0) & head.brain] = rng.uniform(0.95, 1.0)


def _finish(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    # Mild blur (partial-volume effect), bias field, then Rician noise as in magnitude MR images.
    image = ndimage.gaussian_filter(image, sigma=0.5 * size / 64)
    image = image * (1.0 + 0.08 * _smooth_field(size, rng, 0.25))
    sigma = rng.uniform(0.015, 0.03)
    real = image + sigma * rng.standard_normal(image.shape)
    imaginary = sigma * rng.standard_normal(image.shape)
    image = np.sqrt(real**2 + imaginary**2)
    low, high = image.min(), image.max()
    finished: np.ndarray = ((image - low) / (high - low)).astype(np.float32)
    return finished
