"""``study.html``: one self-contained page (inline SVG and CSS, nothing fetched) with the table and the frontier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from html import escape
from typing import Any

from medpfl_app.experiments.study.config import StudyConfig

#: Columns shown on the page (the CSV has them all).
PAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("network", "network"),
    ("setting", "defense"),
    ("guarantee", "guarantee"),
    ("batch_size", "B"),
    ("local_steps", "S"),
    ("attack", "attack"),
    ("accuracy", "accuracy"),
    ("auc", "AUC"),
    ("verdict", "verdict (worst site)"),
    ("site_verdicts", "per site (round)"),
    ("ssim_max", "SSIM max"),
    ("asr", "ASR"),
    ("label_accuracy", "label acc."),
    ("epsilon", "ε"),
    ("wall_s", "time (s)"),
    ("engine", "engine"),
)

AXES = """
<h2>How to read it</h2>
<ul>
<li><b>Utility</b> (y): accuracy and macro one-vs-rest AUC (torchmetrics) of the final global model on held-out
phantoms no site trained on, after all FedAvg rounds of the cell. Higher is better.</li>
<li><b>Leakage</b> (x): what the server's own audit recovered from the updates as received, after the site's
defense, scored by the site against the images it really used: the best reconstruction's SSIM (data range 1) of the
worst audited site. ASR is the share of used images reconstructed at SSIM ≥ 0.9; label accuracy is the share of
labels recovered; the verdict is the audit's risk level (high / medium / low / inconclusive). Lower is more private
— but only against this attack at this budget: a low SSIM is not a proof that a stronger attack fails.</li>
<li><b>ε</b>: the formal (ε, δ) of the whole run (all rounds, Opacus RDP accountant), only for client DP
(client level) and DP-SGD (sample level, per site). It bounds what any attacker can learn; the SSIM says what this attack did.</li>
<li>Each point is one setting; points up and to the left are better. A defense pays off when it moves a point left
(less leakage) without moving it far down (lost utility).</li>
</ul>
<h2>Which defense carries a guarantee</h2>
<ul>
<li><b>client_dp</b> (clip the whole update to C, add N(0, (zC)²), account every release): (ε, δ)-DP at client
level — a formal guarantee, void if the noise seed is known or updates bypass the ledger.</li>
<li><b>dp_sgd</b> (Opacus: per-sample clipping, Gaussian noise, Poisson-sampled batches, GroupNorm network):
(ε, δ)-DP at sample level for each site's images — a formal guarantee for one image, not for a whole site.</li>
<li><b>laplace_noise</b>, <b>gaussian_noise</b> (no clipping, no accountant), <b>top_k</b> (sparsification),
<b>uniform_quantization</b>, <b>drop_bn_stats</b> (BatchNorm statistics kept local, FedBN): heuristics. Each has
been broken by adaptive attacks in the literature; a low leakage here is evidence against this attack only.</li>
</ul>
"""

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
    "th{background:#f0f0f0}td:nth-child(-n+3){text-align:left}.high{background:#fdd}.medium{background:#fec}"
    ".low{background:#dfd}.inconclusive{background:#eee}code{background:#f5f5f5}"
)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return escape(str(value))


def _table(rows: Sequence[dict[str, Any]]) -> str:
    head = "".join(f"<th>{escape(title)}</th>" for _, title in PAGE_COLUMNS)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{escape(str(row["verdict"]))}">{_cell(row[k])}</td>'
            if k == "verdict"
            else f"<td>{_cell(row[k])}</td>"
            for k, _ in PAGE_COLUMNS
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>\n" + "\n".join(body) + "</table>"


def study_page(study: StudyConfig, rows: Sequence[dict[str, Any]], svg: str, *, transport: str) -> str:
    """The HTML document."""
    run = asdict(study.run)
    budget = rows[0]["attack_budget"] if rows else ""
    threat = rows[0]["threat_model"] if rows else ""
    settings = ", ".join(f"{k}={v}" for k, v in run.items() if k != "audit")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>MedPFL study {escape(study.name)}</title><style>{STYLE}</style></head><body>\n"
        f"<h1>MedPFL privacy–utility study: {escape(study.name)}</h1>\n"
        f"<p>{len(rows)} cells. Shared run: <code>{escape(settings)}</code>.</p>\n"
        f"<p><b>Attack and budget:</b> {escape(budget)}. <b>Threat model:</b> {escape(threat)}.</p>\n"
        f"<p><b>What runs:</b> {escape(transport)} Data are seeded synthetic brain-MRI phantoms, not patients.</p>\n"
        f"<h2>Frontier</h2>\n{svg}\n{AXES}\n<h2>Cells</h2>\n{_table(rows)}\n"
        "<p>Full per-site detail: <code>study.json</code>; every column: <code>study.csv</code>.</p>\n"
        "</body></html>\n"
    )
