"""The report's five plots over rounds: worst-image SSIM, PSNR, attack success, formal ε and model accuracy."""

from __future__ import annotations

from typing import Any

from medpfl_app.reports.accuracy import Accuracy
from medpfl_app.reports.model import AuditView
from medpfl_app.reports.svg import Series, line_chart, site_colors


def plots(view: AuditView, accuracy: Accuracy) -> list[dict[str, Any]]:
    colors = site_colors(view.sites)
    rounds = sorted(set(view.rounds) | set(accuracy.aggregated))
    measured = {
        site: [c for r in view.rounds if (c := view.cell(site, r)) is not None and c.scored] for site in view.sites
    }

    def leak(attr: str) -> list[Series]:
        return [
            Series(site, colors[site], {c.round: v for c in measured[site] if (v := getattr(c, attr)) is not None})
            for site in view.sites
        ]

    def tags(series_attr: str) -> list[str]:
        used = {
            c.config.tag
            for cells in measured.values()
            for c in cells
            if c.config is not None and getattr(c, series_attr) is not None
        }
        return [c.tag for c in view.configs if c.tag in used]

    epsilon: list[Series] = []
    for site in view.sites:
        cells = [c for r in view.rounds if (c := view.cell(site, r)) is not None]
        client = {c.round: c.epsilon_client for c in cells if c.epsilon_client is not None}
        sample = {c.round: c.epsilon_sample for c in cells if c.epsilon_sample is not None}
        if client or not sample:
            epsilon.append(Series(f"{site} client-level" if client else f"{site}: none", colors[site], client))
        if sample:
            epsilon.append(Series(f"{site} sample-level", colors[site], sample, dashed=True))
    acc = [Series("global model", "#333333", dict(accuracy.aggregated))] if accuracy.aggregated else []
    acc += [
        Series(site, colors.get(site, "#888888"), dict(values), dashed=True)
        for site, values in sorted(accuracy.per_site.items())
    ]
    no_metrics = "no metrics/round_metrics.jsonl found" if not accuracy.path else "no accuracy metric in the file"
    specs = [
        (
            "ssim",
            "Reconstruction SSIM (worst image)",
            "SSIM",
            leak("ssim_max"),
            (0.0, 1.0),
            tags("ssim_max"),
            "no site-scored SSIM",
        ),
        (
            "psnr",
            "Reconstruction PSNR (worst image)",
            "PSNR (dB)",
            leak("psnr_max"),
            None,
            tags("psnr_max"),
            "no site-scored PSNR",
        ),
        (
            "success",
            "Attack success rate",
            "share of images",
            leak("success_rate"),
            (0.0, 1.0),
            tags("success_rate"),
            "no site-scored success rate",
        ),
        ("epsilon", "Formal ε so far", "ε", epsilon, None, [], "no formal DP in any record: ε undefined"),
        ("accuracy", "Model accuracy", accuracy.metric or "accuracy", acc, (0.0, 1.0), [], no_metrics),
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
