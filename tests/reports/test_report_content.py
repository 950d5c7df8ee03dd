"""JSON and HTML reports from synthetic ledgers: verdict, table, colours, reasons, escaping, thumbnails."""

from __future__ import annotations

import json
import re
import stat
from html.parser import HTMLParser
from pathlib import Path

import pytest
from report_cases import MALICIOUS_SITE, LedgerFile, record, scores, write_job

from medpfl_app.errors import MedPFLError
from medpfl_app.reports import REPORT_SCHEMA, render_report


class _Cells(HTMLParser):
    """Collects the risk-table cells (``td.cell``) and every element's tag, and the text of ``<script>``."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self.tags: list[str] = []
        self.img_sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = {k: v or "" for k, v in attrs}
        if tag == "td" and "cell" in found.get("class", "").split():
            self.cells.append(found)
        if tag == "img":
            self.img_sources.append(found.get("src", ""))


def _parse(html: str) -> _Cells:
    parser = _Cells()
    parser.feed(html)
    return parser


@pytest.fixture()
def job(tmp_path: Path) -> Path:
    """A downloaded-job-like folder with the synthetic ledger and round metrics."""
    write_job(tmp_path / "job")
    return tmp_path / "job"


def test_round_json_holds_that_rounds_records_and_a_summary(job: Path, tmp_path: Path) -> None:
    """One report_round_<n>.json per round; records verbatim; per-round worst and model accuracy."""
    paths = render_report(job, tmp_path / "out")
    assert [p.name for p in paths.round_json] == ["report_round_0.json", "report_round_1.json", "report_round_2.json"]
    report = json.loads(paths.round_json[0].read_text())
    assert report["schema"] == REPORT_SCHEMA and report["round"] == 0
    assert sorted(r["site"] for r in report["records"]) == sorted(["site-hr", "site-dp", MALICIOUS_SITE])
    assert all(r["round"] == 0 for r in report["records"])
    summary = report["summary"]
    assert summary["verdict"]["site"] == "site-hr" and summary["verdict"]["risk"] == "high"
    assert summary["verdict"]["scores"]["ssim_max"] == pytest.approx(0.85)  # round 0's, not the job's worst
    assert summary["model_accuracy"] == pytest.approx(0.3)
    assert summary["ledger_lines_unreadable"] == [10]
    assert (
        summary["ledger_lines_unreadable_text"]
        == "1 line of audit_ledger.jsonl could not be read and was skipped (line 10)"
    )
    statuses = {s["site"]: s["status"] for s in summary["sites"]}
    assert statuses[MALICIOUS_SITE] == "not_audited"


def test_verdict_names_the_worst_record_with_its_attack_budget_and_threat_model(job: Path, tmp_path: Path) -> None:
    """The verdict names the worst record's site, round and scores, and the attack, budget and threat model."""
    paths = render_report(job, tmp_path / "out")
    html = paths.html.read_text()
    verdict = re.search(r'<section id="verdict" class="verdict risk-(\w+)".*?</section>', html, re.DOTALL)
    assert verdict is not None and verdict.group(1) == "high"
    text = verdict.group(0)
    assert "site-hr, round 1" in text and "SSIM 0.93" in text and "PSNR 29.5 dB" in text
    # Records differing only in what they measured (iterations, why they stopped) share one configuration.
    assert (
        "attack invertinggradients (1 restart, ≤ 60 s, at most 4 images attacked per update; 180–300 iterations "
        "run, 1 stopped by the time limit)"
    ) in text
    assert "threat model honest-but-curious server [A1], this record 180 iterations" in text
    # an older run's ledger without an arrivals file: coverage unknown, counted from the records only
    assert (
        "Coverage unknown (no arrivals file beside the ledger): 9 records in the ledger: 7 audited (3 high, "
        "1 medium, 0 unscored, 1 inconclusive, 2 low), 1 not audited, 1 not auditable"
    ) in text


def test_policy_actions_are_listed_in_html_round_json_and_only_when_taken(job: Path, tmp_path: Path) -> None:
    """An update the policy kept out of aggregation is named with site, round and reason; none: no section."""
    paths = render_report(job, tmp_path / "out")
    html = paths.html.read_text()
    section = re.search(r'<section id="policy-actions">.*?</section>', html, re.DOTALL)
    assert section is not None
    assert "<td>2</td><td>site-hr</td><td>excluded from aggregation</td>" in section.group(0)
    assert "high privacy risk for site-hr in round 1" in section.group(0)
    round_2 = json.loads((tmp_path / "out" / "report_round_2.json").read_text())["summary"]["policy_actions"]
    assert round_2 == [
        {
            "site": "site-hr",
            "round": 2,
            "action": "excluded_from_aggregation",
            "reason": "high privacy risk for site-hr in round 1 (attack invertinggradients, best SSIM 0.93)",
        }
    ]
    assert json.loads((tmp_path / "out" / "report_round_1.json").read_text())["summary"]["policy_actions"] == []

    quiet = tmp_path / "quiet"
    LedgerFile(quiet / "workspace" / "audit" / "audit_ledger.jsonl").append(record("site-a", 0))
    assert 'id="policy-actions"' not in render_report(quiet, tmp_path / "quiet_out").html.read_text()


def test_a_higher_level_beats_higher_scores_and_unknown_never_wins(tmp_path: Path) -> None:
    """The level decides first (a medium beats a low with better scores); scores only break ties between levels."""
    ledger = LedgerFile(tmp_path / "audit_ledger.jsonl")
    ledger.append(record("a", 0, risk="low", site_scores=scores(0.29, 30.0, 0.0)))
    ledger.append(record("b", 0, risk="medium", site_scores=scores(0.31, 12.0, 0.0)))
    ledger.append(record("c", 0, status="not_audited", reason="queue full", risk="unknown", site_scores=None))
    ledger.append(record("d", 1, risk="medium", site_scores=scores(0.45, 14.0, 0.0)))
    report = json.loads(render_report(ledger.path).round_json[0].read_text())
    assert report["summary"]["verdict"]["site"] == "b"
    overall = (tmp_path / "audit_report.html").read_text()
    assert "d, round 1" in overall  # the tie between the two mediums goes to the higher SSIM


def test_table_has_every_site_and_round_coloured_by_risk(job: Path, tmp_path: Path) -> None:
    """Every site × round has a cell whose colour class matches its level; the seven levels' colours differ."""
    html = render_report(job, tmp_path / "out").html.read_text()
    cells = _parse(html).cells
    grid = {(c["data-site"], c["data-round"]): c for c in cells}
    assert set(grid) == {(s, str(r)) for s in ("site-hr", "site-dp", MALICIOUS_SITE) for r in range(3)}
    for cell in grid.values():
        assert f"risk-{cell['data-risk']}" in cell["class"].split()
    assert {grid[("site-hr", str(r))]["data-risk"] for r in range(3)} == {"high"}
    assert grid[("site-dp", "0")]["data-risk"] == "low"
    assert grid[(MALICIOUS_SITE, "2")]["data-risk"] == "medium"
    assert grid[(MALICIOUS_SITE, "0")]["data-risk"] == "not_audited"  # schema 1's "unknown", mapped by status
    assert grid[(MALICIOUS_SITE, "1")]["data-risk"] == "not_auditable"
    assert grid[("site-dp", "2")]["data-risk"] == "inconclusive"  # audited, no site scores, no level recorded
    style = html[html.index("<style>") : html.index("</style>")]
    levels = ("high", "medium", "unscored", "inconclusive", "low", "not_audited", "not_auditable")
    colours = {level: re.search(rf"\.risk-{level} {{ background: (#[0-9a-f]{{6}})", style).group(1) for level in levels}
    assert len(set(colours.values())) == 7


def test_a_site_round_without_record_is_shown_as_missing(tmp_path: Path) -> None:
    """A site-round the ledger has no record for is a 'missing' cell and listed, not silently blank."""
    ledger = LedgerFile(tmp_path / "audit_ledger.jsonl")
    ledger.append(record("a", 0))
    ledger.append(record("a", 1))
    ledger.append(record("b", 0))
    html = render_report(ledger.path).html.read_text()
    grid = {(c["data-site"], c["data-round"]): c["data-risk"] for c in _parse(html).cells}
    assert grid[("b", "1")] == "missing"
    assert (
        "Site-rounds without any record (whether an update arrived is unknown: no\n    arrivals file): b round 1."
        in html
    )


def test_not_audited_reasons_unavailable_scores_and_skipped_lines_are_listed(job: Path, tmp_path: Path) -> None:
    """Every reason for a missing measurement is listed (escaped), with the unreadable ledger line numbers."""
    html = render_report(job, tmp_path / "out").html.read_text()
    gaps = html[html.index('<table id="gaps">') :]
    gaps = gaps[: gaps.index("</table>")]
    assert (
        "<td>1</td><td>&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;</td>"
        "<td>not auditable</td><td>1</td><td>update is HE-encrypted (CKKS)</td>" in gaps
    )
    assert "audit queue full &lt;b&gt;bold&lt;/b&gt;" in gaps and "<b>bold</b>" not in html
    section = html[html.index('<section id="not-measured">') : html.index('<section id="risk-levels">')]
    assert "site-dp did not answer within 30 s" in section and "site scores unavailable" in section
    assert (
        "Audit ledger: 1 line of audit_ledger.jsonl could not be read and was skipped (line 10): line 10 not JSON "
        "(a truncated or corrupt line)"
    ) in section


def test_defense_chain_shows_each_stated_guarantee(job: Path, tmp_path: Path) -> None:
    """Each site's chain names every defense with its stated guarantee; an undefended site says so."""
    html = render_report(job, tmp_path / "out").html.read_text()
    section = html[html.index('<section id="defenses">') :]
    section = section[: section.index("</section>")]
    rows = {m.group(1): m.group(2) for m in re.finditer(r'<tr data-site="([^"]+)">(.*?)</tr>', section, re.DOTALL)}
    assert (
        "<b>client dp</b> (clipping norm 1, noise multiplier 1) — formal guarantee: <i>(ε, δ)-DP at client "
        "level</i>" in rows["site-dp"]
    )
    laplace = rows["&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"]
    assert "<b>laplace noise</b> (Laplace scale b 0.001) — heuristic: <i>heuristic (no formal guarantee)</i>" in laplace
    assert "<b>no defense</b>" in rows["site-hr"]
    # one row per site: per-round fields do not split a site's setup; model, batch size and local steps are columns
    assert len(rows) == 3
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows["site-hr"], re.DOTALL)
    assert cells[:4] == ["0–2", "small_cnn (1,000 parameters)", "1", "not recorded"]
    assert "=" not in re.sub(r"<[^>]+>", "", section).replace("src=x onerror=", "")  # no key=value dump


def test_every_string_from_the_ledger_is_escaped(job: Path, tmp_path: Path) -> None:
    """A site name carrying markup appears only as text: no script element, no img, no event handler."""
    html = render_report(job, tmp_path / "out").html.read_text()
    parsed = _parse(html)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    assert MALICIOUS_SITE not in html and "onerror=alert(1)>" not in html
    assert "&lt;script&gt;alert(" in html  # shown, escaped, in the table, the SVG legends and the notes


def test_plots_cover_leakage_epsilon_and_accuracy(job: Path, tmp_path: Path) -> None:
    """Five plots, in order; ε and accuracy values come from the ledger and round_metrics.jsonl."""
    html = render_report(job, tmp_path / "out").html.read_text()
    plots = re.findall(r'<figure class="plot" data-plot="(\w+)">', html)
    assert plots == ["ssim", "psnr", "success", "epsilon", "accuracy"]
    accuracy = html[html.index('data-plot="accuracy"') :]
    accuracy = accuracy[: accuracy.index("</figure>")]
    assert "global model, round 2: 0.7" in accuracy and "round_metrics.jsonl" in accuracy
    epsilon = html[html.index('<figure class="plot" data-plot="epsilon"') :]
    assert "site-dp client-level, round 2: 4.5" in epsilon[: epsilon.index("</figure>")]
    ssim = html[html.index('<figure class="plot" data-plot="ssim"') :]
    assert "configurations A1, A2" in ssim[: ssim.index("</figure>")]
    configs = html[html.index('<table id="configs" class="configs">') :]
    configs = configs[: configs.index("</table>")]
    a1 = re.search(r'<tr data-tag="A1">(.*?)</tr>', configs, re.DOTALL).group(1)  # type: ignore[union-attr]
    assert "<td>invertinggradients</td>" in a1 and "batch size 1" in a1 and "at most 4 images attacked" in a1
    assert "=" not in re.sub(r"<[^>]+>", "", configs).replace("src=x onerror=", "")  # in words, no key=value dump


def test_without_round_metrics_the_accuracy_plot_says_so(tmp_path: Path) -> None:
    """No round_metrics.jsonl: the accuracy plot states why it is empty."""
    write_job(tmp_path / "job", metrics=False)
    html = render_report(tmp_path / "job").html.read_text()
    assert "no metrics/round_metrics.jsonl found" in html


def test_report_is_self_contained(job: Path, tmp_path: Path) -> None:
    """No script, stylesheet link, remote URL or CSS import: the page opens offline."""
    html = render_report(job, tmp_path / "out").html.read_text()
    assert "<script" not in html and "<link" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "@import" not in html and "url(" not in html


def test_thumbnails_are_off_by_default(job: Path, tmp_path: Path) -> None:
    """Without the opt-in, no image, no data URI and no thumbnails folder are written."""
    paths = render_report(job, tmp_path / "out")
    html = paths.html.read_text()
    assert paths.thumbnails == () and not (tmp_path / "out" / "thumbnails").exists()
    assert "data:image" not in html and not _parse(html).img_sources
    assert "Not shown (default)" in html


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (200, 200), color=value).save(path)


def test_opted_in_thumbnails_are_embedded_and_owner_only(job: Path, tmp_path: Path) -> None:
    """Opted in: downsized copies 0600 in 0700 folders, embedded as data URIs, HTML 0600, bad files listed."""
    recon = tmp_path / "recon"
    _png(recon / "site-hr" / "round_1" / "img0.png", 40)
    _png(recon / "site-hr" / "round_1" / "img1.png", 200)
    (recon / "site-hr" / "round_1" / "notes.txt").write_text("x")
    (recon / "site-hr" / "round_2").mkdir()
    (recon / "site-hr" / "round_2" / "fake.png").write_text("not a png")
    paths = render_report(job, tmp_path / "out", thumbnails_from=recon)
    assert len(paths.thumbnails) == 2
    for thumb in paths.thumbnails:
        assert stat.S_IMODE(thumb.stat().st_mode) == 0o600
        assert thumb.parent.stat().st_mode & 0o077 == 0
        from PIL import Image

        with Image.open(thumb) as image:
            assert max(image.size) <= 96
    assert stat.S_IMODE(paths.html.stat().st_mode) == 0o600
    html = paths.html.read_text()
    sources = _parse(html).img_sources
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "patient data" in html and "notes.txt" in html and "not a PNG file" in html


def test_source_forms_and_a_missing_ledger(job: Path, tmp_path: Path) -> None:
    """A ledger file renders next to itself; an empty folder or two ledgers are clear errors."""
    ledger = next(job.rglob("audit_ledger.jsonl"))
    assert render_report(ledger).html == ledger.parent / "audit_report.html"
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedPFLError, match="no audit ledger"):
        render_report(tmp_path / "empty")
    (job / "copy").mkdir()
    (job / "copy" / "audit_ledger.jsonl").write_bytes(ledger.read_bytes())
    with pytest.raises(MedPFLError, match="several audit ledgers"):
        render_report(job)


def test_thresholds_shown_are_the_ones_the_records_carry(tmp_path: Path) -> None:
    """The thresholds table shows the risk policy the records were assessed with."""
    ledger = LedgerFile(tmp_path / "audit_ledger.jsonl")
    policy = {"ssim_high": 0.7, "ssim_medium": 0.35}
    ledger.append(record("a", 0, risk_policy=policy))
    ledger.append(record("b", 0, risk_policy=policy))
    html = render_report(ledger.path).html.read_text()
    table = html[html.index('<table id="thresholds">') :]
    table = table[: table.index("</table>")]
    assert "<td>ssim high</td><td>high when the worst-image SSIM is at least 0.7</td>" in table
    assert "<td>ssim medium</td><td>at least medium when the worst-image SSIM is at least 0.35</td>" in table
    assert "as recorded with every audit record" in html


def test_a_level_from_server_indicators_alone_says_so(tmp_path: Path) -> None:
    """Without site scores the verdict names the server-side indicators that set the level, not image scores."""
    ledger = LedgerFile(tmp_path / "audit_ledger.jsonl")
    ledger.append(
        record(
            "a",
            0,
            risk="medium",
            site_scores={"status": "unavailable", "reason": "site offline"},
            server_indicators={"labels_recovered": True, "bn_statistics_exposed": False},
        )
    )
    ledger.append(record("b", 0, risk="low"))
    summary = json.loads(render_report(ledger.path).round_json[0].read_text())["summary"]["verdict"]
    assert summary["site"] == "a" and summary["risk"] == "medium"
    assert (
        "no site scores; level from server-side indicators: bn statistics exposed: no; labels recovered: yes"
        in summary["headline"]
    )
    assert "worst image" not in summary["headline"]


def test_released_originals_are_shown_above_their_reconstructions(job: Path, tmp_path: Path) -> None:
    """``original_<i>`` sits in the column of ``recon_<i>``; a reconstruction without an original gets a blank."""
    recon = tmp_path / "recon"
    _png(recon / "site-hr" / "round_1" / "recon_0.png", 40)
    _png(recon / "site-hr" / "round_1" / "recon_1.png", 80)
    _png(recon / "site-hr" / "round_1" / "original_1.png", 90)
    _png(recon / "site-dp" / "round_0" / "recon_0.png", 10)
    html = render_report(job, tmp_path / "out", thumbnails_from=recon).html.read_text()
    section = html[html.index('<section id="thumbnails">') :]
    rows = re.findall(r'<tr class="(originals|reconstructions)">(.*?)</tr>', section, flags=re.DOTALL)
    # site-dp first (sorted): reconstructions only; then site-hr, whose pairs show originals above reconstructions.
    assert [kind for kind, _ in rows] == ["reconstructions", "originals"]
    pairs = re.findall(r'<figure class="pair">(.*?)</figure>', rows[1][1], flags=re.DOTALL)
    assert len(pairs) == 2
    assert "no original" in pairs[0] and "recon_0.png" in pairs[0]
    assert pairs[1].index('alt="original original_1.png"') < pairs[1].index('alt="reconstruction recon_1.png"')
    assert "original" not in rows[0][1].replace("reconstruction", "")
    assert "synthetic demo" in section
