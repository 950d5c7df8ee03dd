"""The report's five plots over rounds: worst-image SSIM, PSNR, attack success, formal ε and model accuracy."""

from __future__ import annotations

from typing import Any

from medpfl_app.reports.accuracy import Accuracy
from medpfl_app.reports.model import AuditView
from medpfl_app.reports.svg import Series, line_chart, site_colors

#: The leakage plots: (key, title, y label, the cell's attribute, fixed y range, note when no site scored it).
_LEAKAGE_PLOTS: tuple[tuple[str, str, str, str, tuple[float, float] | None, str], ...] = (
    ("ssim", "Reconstruction SSIM (worst image)", "SSIM", "ssim_max", (0.0, 1.0), "no site-scored SSIM"),
    ("psnr", "Reconstruction PSNR (worst image)", "PSNR (dB)", "psnr_max", None, "no site-scored PSNR"),
    (
        "success",
        "Attack success rate",
        "share of images",
        "success_rate",
        (0.0, 1.0),
        "no site-scored success rate",
    ),
)
#: One plot: key, title, y label, its lines, fixed y range, the configurations behind it, note when empty.
_Spec = tuple[str, str, str, list[Series], tuple[float, float] | None, list[str], str]


def plots(view: AuditView, accuracy: Accuracy) -> list[dict[str, Any]]:
    """The report's plots: key, the finished ``<svg>`` and the audit configurations behind its values."""
    rounds = sorted(set(view.rounds) | set(accuracy.aggregated))
    no_metrics = "no metrics/round_metrics.jsonl found" if not accuracy.path else "no accuracy metric in the file"
    specs: list[_Spec] = [
        *_leakage_specs(view),
        ("epsilon", "Formal ε so far", "ε", _epsilon_series(view), None, [], "no formal DP in any record: ε undefined"),
        (
            "accuracy",
            "Model accuracy",
            accuracy.metric or "accuracy",
            _accuracy_series(view, accuracy),
            (0.0, 1.0),
            [],
            no_metrics,
        ),
    ]
    return [
        {
            "key": key,
            "svg": line_chart(
                key=key, title=title, y_label=y_label, rounds=rounds, series=series, y_range=y_range, empty_note=empty
            ),
            "configs": configs,
        }
        for key, title, y_label, series, y_range, configs, empty in specs
    ]


def _leakage_specs(view: AuditView) -> list[_Spec]:
    """SSIM, PSNR and attack success per site over the rounds the site scored, with the configurations used."""
    colors = site_colors(view.sites)
    measured = {
        site: [c for r in view.rounds if (c := view.cell(site, r)) is not None and c.scored] for site in view.sites
    }
    specs: list[_Spec] = []
    for key, title, y_label, attr, y_range, empty in _LEAKAGE_PLOTS:
        series = [
            Series(site, colors[site], {c.round: v for c in measured[site] if (v := getattr(c, attr)) is not None})
            for site in view.sites
        ]
        used = {
            c.config.tag
            for cells in measured.values()
            for c in cells
            if c.config is not None and getattr(c, attr) is not None
        }
        specs.append((key, title, y_label, series, y_range, [c.tag for c in view.configs if c.tag in used], empty))
    return specs


def _epsilon_series(view: AuditView) -> list[Series]:
    """Formal ε per site: client-level solid, sample-level dashed; a site without either listed as "none"."""
    colors = site_colors(view.sites)
    epsilon: list[Series] = []
    for site in view.sites:
        cells = [c for r in view.rounds if (c := view.cell(site, r)) is not None]
        client = {c.round: c.epsilon_client for c in cells if c.epsilon_client is not None}
        sample = {c.round: c.epsilon_sample for c in cells if c.epsilon_sample is not None}
        if client or not sample:
            epsilon.append(Series(f"{site} client-level" if client else f"{site}: none", colors[site], client))
        if sample:
            epsilon.append(Series(f"{site} sample-level", colors[site], sample, dashed=True))
    return epsilon


def _accuracy_series(view: AuditView, accuracy: Accuracy) -> list[Series]:
    """The global model's accuracy, and each site's (dashed) where the metrics file has them."""
    colors = site_colors(view.sites)
    series = [Series("global model", "#333333", dict(accuracy.aggregated))] if accuracy.aggregated else []
    series += [
        Series(site, colors.get(site, "#888888"), dict(values), dashed=True)
        for site, values in sorted(accuracy.per_site.items())
    ]
    return series
