"""The privacy–utility frontier as a small hand-written SVG scatter (no plotting library).

x: leakage, the worst audited site's best-reconstruction SSIM (0: nothing recovered, 1: an exact image);
y: utility, the global model's validation AUC. One point per cell; colour = defense, marker = formal guarantee
(filled circle: client-level DP or DP-SGD, labelled with ε; hollow square: heuristic or none). Cells the audit could not
score (no reconstruction) are drawn at x = 0 with a dashed outline.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

WIDTH, HEIGHT = 720, 480
LEFT, RIGHT, TOP, BOTTOM = 70, 200, 30, 60
COLOURS: dict[str, str] = {
    "none": "#222222",
    "laplace_noise": "#1f77b4",
    "gaussian_noise": "#17becf",
    "client_dp": "#d62728",
    "top_k": "#2ca02c",
    "uniform_quantization": "#9467bd",
    "drop_bn_stats": "#ff7f0e",
    "dp_sgd": "#8c564b",
}


def _x(value: float) -> float:
    return LEFT + value * (WIDTH - LEFT - RIGHT)


def _y(value: float) -> float:
    return HEIGHT - BOTTOM - value * (HEIGHT - TOP - BOTTOM)


def _axes() -> list[str]:
    parts = [
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}" '
        'fill="none" stroke="#999"/>'
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, y = _x(tick), _y(tick)
        parts += [
            f'<line x1="{x:.1f}" y1="{HEIGHT - BOTTOM}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM + 5}" stroke="#555"/>',
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">{tick:g}</text>',
            f'<line x1="{LEFT - 5}" y1="{y:.1f}" x2="{LEFT}" y2="{y:.1f}" stroke="#555"/>',
            f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>',
        ]
    parts += [
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 15}" text-anchor="middle">'
        "leakage: worst site's best-reconstruction SSIM (lower is more private)</text>",
        f'<text transform="translate(18 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" text-anchor="middle">'
        "utility: validation AUC</text>",
    ]
    return parts


def _unit(value: float | None) -> float:
    """``value`` clamped to [0, 1]; a missing value (not scored) sits at 0."""
    return 0.0 if value is None else min(max(float(value), 0.0), 1.0)


def _point(row: dict[str, Any]) -> str:
    ssim = row.get("ssim_max")
    x, y = _x(_unit(ssim)), _y(_unit(row.get("auc")))
    colour = COLOURS.get(str(row["defense"]), "#777")
    title = escape(
        f"{row['setting']}, B={row['batch_size']}, S={row['local_steps']}, {row['attack']}: AUC {row['auc']}, "
        f"SSIM {ssim}, verdict {row['verdict']}" + (f", ε={row['epsilon']:.3g}" if row.get("epsilon") else "")
    )
    dash = ' stroke-dasharray="2 2"' if ssim is None else ""
    if row.get("epsilon") is not None:
        mark = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{colour}" stroke="#000"{dash}><title>{title}</title></circle>'
        label = f'<text x="{x + 8:.1f}" y="{y - 6:.1f}" font-size="10">ε={row["epsilon"]:.3g}</text>'
        return mark + label
    return (
        f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="none" stroke="{colour}" '
        f'stroke-width="2"{dash}><title>{title}</title></rect>'
        f'<text x="{x + 7:.1f}" y="{y + 12:.1f}" font-size="9" fill="#555">B{row["batch_size"]}S{row["local_steps"]}</text>'
    )


def _legend(rows: Sequence[dict[str, Any]]) -> list[str]:
    present = [d for d in COLOURS if any(r["defense"] == d for r in rows)]
    parts = []
    for i, defense in enumerate(present):
        y = TOP + 14 + 18 * i
        parts += [
            f'<rect x="{WIDTH - RIGHT + 15}" y="{y - 9}" width="10" height="10" fill="{COLOURS[defense]}"/>',
            f'<text x="{WIDTH - RIGHT + 30}" y="{y}">{escape(defense)}</text>',
        ]
    y = TOP + 14 + 18 * len(present) + 10
    parts += [
        f'<text x="{WIDTH - RIGHT + 15}" y="{y}" font-size="10">● formal DP (ε)</text>',
        f'<text x="{WIDTH - RIGHT + 15}" y="{y + 14}" font-size="10">□ heuristic / none</text>',
        f'<text x="{WIDTH - RIGHT + 15}" y="{y + 28}" font-size="10">dashed: not scored</text>',
    ]
    return parts


def frontier_svg(rows: Sequence[dict[str, Any]]) -> str:
    """The SVG document of the frontier for the study's table rows."""
    body = _axes() + [_point(row) for row in rows] + _legend(rows)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">\n'
        f"<title>MedPFL privacy–utility frontier</title>\n" + "\n".join(body) + "\n</svg>\n"
    )
