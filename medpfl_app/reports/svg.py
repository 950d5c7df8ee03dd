"""Inline SVG line charts: no scripts, fonts or network, so the HTML report opens anywhere.

Every piece of text (site names come from the untrusted ledger) is XML-escaped here, because the template inserts
the finished SVG unescaped, and its control characters and bidi overrides are shown escaped
(`medpfl_app.reports.fields.printable`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape as _xml_escape

from medpfl_app.text import printable

#: Colour-blind-safe palette (Okabe-Ito), cycled over sites.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")

WIDTH, HEIGHT = 360, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 26, 38


def escape(value: str) -> str:
    """``value`` XML-escaped, with its control characters shown escaped."""
    return _xml_escape(printable(value))


@dataclass(frozen=True)
class Series:
    """One line: a name for the legend, a colour, and values by round (missing rounds leave a gap)."""

    name: str
    color: str
    values: Mapping[int, float]
    dashed: bool = False


def site_colors(sites: Sequence[str]) -> dict[str, str]:
    """A stable colour per site, by sorted position."""
    return {site: PALETTE[index % len(PALETTE)] for index, site in enumerate(sorted(sites))}


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1-2-5 steps)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _fmt(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e4 else f"{value:.1e}"


@dataclass(frozen=True)
class _Frame:
    """Where values land in the plot area: rounds on x, the ticks' range on y."""

    rounds: Sequence[int]
    ticks: Sequence[float]
    plot_w: float = WIDTH - LEFT - RIGHT
    plot_h: float = HEIGHT - TOP - BOTTOM

    def x_at(self, round_number: int) -> float:
        x_low, x_high = (min(self.rounds), max(self.rounds)) if self.rounds else (0, 1)
        if x_high <= x_low:
            return LEFT + self.plot_w / 2
        return LEFT + (round_number - x_low) / max(x_high - x_low, 1) * self.plot_w

    def y_at(self, value: float) -> float:
        y_low, y_high = self.ticks[0], self.ticks[-1]
        return TOP + self.plot_h - (value - y_low) / ((y_high - y_low) or 1.0) * self.plot_h


def line_chart(
    *,
    key: str,
    title: str,
    y_label: str,
    rounds: Sequence[int],
    series: Sequence[Series],
    y_range: tuple[float, float] | None = None,
    empty_note: str = "no data",
) -> str:
    """An SVG line chart of values over rounds, one line per series, with a legend below the plot.

    Args:
        key: Stable identifier (``data-plot`` attribute) the tests and readers can find the chart by.
        title: Shown above the plot and as the accessible ``<title>``.
        y_label: The y axis label (unit included).
        rounds: The x values; every round is ticked.
        series: The lines; a series with no values is still listed in the legend.
        y_range: Fixed y limits (e.g. 0–1 for SSIM); otherwise fitted to the data.
        empty_note: Shown in the plot area when no series has a value.

    Returns:
        The ``<svg>`` element as a string.
    """
    height = HEIGHT + 8 + 16 * math.ceil(len(series) / 2)
    values = [v for s in series for v in s.values.values()]
    if y_range is not None:
        ticks = nice_ticks(*y_range)
    else:
        ticks = nice_ticks(min(values, default=0.0), max(values, default=1.0))
    frame = _Frame(rounds, ticks)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-plot="{escape(key)}" role="img" '
        f'viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{WIDTH / 2}" y="15" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>',
        *_axes(frame, y_label),
    ]
    if not values:
        parts.append(
            f'<text class="empty" x="{LEFT + frame.plot_w / 2}" y="{TOP + frame.plot_h / 2}" text-anchor="middle" '
            f'fill="#666">{escape(empty_note)}</text>'
        )
    for line in series:
        parts += _line(frame, line)
    for index, line in enumerate(series):
        parts += _legend_entry(frame, index, line)
    parts.append("</svg>")
    return "\n".join(parts)


def _axes(frame: _Frame, y_label: str) -> list[str]:
    """Grid lines with y ticks, a tick per round, the plot's border and both axis labels."""
    parts = []
    plot_w, plot_h = frame.plot_w, frame.plot_h
    for tick in frame.ticks:
        y = frame.y_at(tick)
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{LEFT - 5}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>')
    for round_number in frame.rounds:
        x = frame.x_at(round_number)
        parts.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 14}" text-anchor="middle">{round_number}</text>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    parts.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h + 30}" text-anchor="middle">round</text>')
    parts.append(
        f'<text transform="translate(12 {TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">{escape(y_label)}</text>'
    )
    return parts


def _line(frame: _Frame, line: Series) -> list[str]:
    """One series: its polylines (broken where a round has no value) and a point with a tooltip per value."""
    parts = []
    dash = ' stroke-dasharray="5 3"' if line.dashed else ""
    for segment in _segments(frame.rounds, line.values):
        points = " ".join(f"{frame.x_at(r):.1f},{frame.y_at(v):.1f}" for r, v in segment)
        parts.append(
            f'<polyline class="series" fill="none" stroke="{escape(line.color)}" stroke-width="2"{dash} '
            f'points="{points}"><title>{escape(line.name)}</title></polyline>'
        )
    for round_number, value in sorted(line.values.items()):
        parts.append(
            f'<circle cx="{frame.x_at(round_number):.1f}" cy="{frame.y_at(value):.1f}" r="3" '
            f'fill="{escape(line.color)}"><title>{escape(line.name)}, round {round_number}: '
            f"{value:.4g}</title></circle>"
        )
    return parts


def _legend_entry(frame: _Frame, index: int, line: Series) -> list[str]:
    """The legend's entry of one series (two columns below the plot)."""
    x = LEFT + (index % 2) * (frame.plot_w / 2)
    y = HEIGHT + 10 + 16 * (index // 2)
    dash = ' stroke-dasharray="5 3"' if line.dashed else ""
    return [
        f'<line x1="{x:.1f}" x2="{x + 18:.1f}" y1="{y - 4}" y2="{y - 4}" stroke="{escape(line.color)}" '
        f'stroke-width="2"{dash}/>',
        f'<text x="{x + 22:.1f}" y="{y}">{escape(_clip(line.name, 26))}</text>',
    ]


def _clip(label: str, size: int) -> str:
    return label if len(label) <= size else label[: size - 1] + "…"


def _segments(rounds: Sequence[int], values: Mapping[int, float]) -> list[list[tuple[int, float]]]:
    """Consecutive runs of rounds that have values: a missing round breaks the line instead of bridging it."""
    segments: list[list[tuple[int, float]]] = [[]]
    for round_number in rounds:
        if round_number in values:
            segments[-1].append((round_number, values[round_number]))
        elif segments[-1]:
            segments.append([])
    return [s for s in segments if len(s) >= 2]
