"""The HTML report in headless Chromium (Debian's, driven by Playwright): layout, screenshots, PDF, page text.

Playwright never downloads a browser here: it launches the system's ``chromium``. Without Chromium these tests FAIL
with how to install it (`.ci/run` installs Debian's ``chromium``), unless ``MEDPFL_SKIP_BROWSER_TESTS=1`` skips them
explicitly. Screenshots (desktop 1280 px, narrow 400 px) and the PDF are written to ``$MEDPFL_ARTEFACTS/report``
(default ``tests-artifacts/report`` under the repository root) for CI to keep.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from report_cases import MALICIOUS_SITE, REPRESENTATIVE_TEXTS, write_job, write_representative_run

from medpfl_app.reports import build_report, render_report
from medpfl_app.reports.pdf import print_pdf

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The closed network refuses Chromium's background connections; these flags keep it from trying (see the machine
# notes), and a fresh profile per launch comes from Playwright's temporary user-data-dir.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SKIP_ENV = "MEDPFL_SKIP_BROWSER_TESTS"
ARTEFACTS_ENV = "MEDPFL_ARTEFACTS"
REPO_ROOT = Path(__file__).resolve().parents[2]


def require_browser() -> None:
    """Fail (never skip silently) without Chromium or Playwright; skip only when asked to explicitly.

    Called first in each test, not from a fixture, so a missing browser is a FAILED test with the instruction.
    """
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"browser tests skipped explicitly ({SKIP_ENV}=1)")
    if CHROMIUM is None:
        pytest.fail(
            "Chromium is not installed, so the report's browser tests cannot run: install it "
            "(Debian/Ubuntu: apt-get install chromium; .ci/run does this), or set "
            f"{SKIP_ENV}=1 to skip these tests explicitly",
            pytrace=False,
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail(
            "Playwright is not installed: pip install playwright (it drives the system's Chromium; no "
            f"browser download is needed), or set {SKIP_ENV}=1 to skip these tests",
            pytrace=False,
        )


def artefacts() -> Path:
    """Where screenshots and the PDF go for CI (created)."""
    root = Path(os.environ.get(ARTEFACTS_ENV) or REPO_ROOT / "tests-artifacts")
    folder = root / "report"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Browser:
    """One headless Chromium per module, launched on first use (after `require_browser`)."""

    def __init__(self) -> None:
        self._playwright = None
        self._browser = None

    def new_page(self, **options):  # noqa: ANN003, ANN201 - Playwright's own types
        if self._browser is None:
            from playwright.sync_api import sync_playwright

            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        return self._browser.new_page(**options)

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
        if self._playwright is not None:
            self._playwright.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """The module's lazily launched browser (each test calls `require_browser` before using it)."""
    holder = Browser()
    try:
        yield holder
    finally:
        holder.close()


def pdf_pages(pdf: bytes) -> int:
    """Page objects in a PDF (Chromium writes each page's dictionary uncompressed)."""
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf))


def test_report_renders_in_chromium_without_console_errors(tmp_path: Path) -> None:
    """Chromium shows the verdict, all 9 coloured cells and 5 drawn plots, with no console error or request."""
    # (cells carry their evidence as a title tooltip; the page stays script-free)
    require_browser()
    from playwright.sync_api import sync_playwright

    write_job(tmp_path / "job")
    html = render_report(tmp_path / "job", tmp_path / "out").html
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(html.as_uri())
            page.wait_for_load_state("load")

            verdict = page.locator("#verdict")
            assert verdict.is_visible()
            assert "Verdict: HIGH" in verdict.inner_text() and "site-hr, round 1" in verdict.inner_text()
            assert "Coverage unknown" in verdict.inner_text()
            assert verdict.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(252, 189, 189)"

            cells = page.locator("#risk-table td.cell")
            assert cells.count() == 9
            for index in range(9):
                box = cells.nth(index).bounding_box()
                assert box is not None and box["width"] > 50 and box["height"] > 20
            assert page.locator("#risk-table tbody th").all_inner_texts()[0] == MALICIOUS_SITE  # shown as text
            low = page.locator('#risk-table td[data-site="site-dp"][data-round="0"]')
            assert low.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(191, 230, 198)"

            figures = page.locator("figure.plot")
            assert figures.count() == 5
            for index in range(5):
                svg = figures.nth(index).locator("svg")
                box = svg.bounding_box()
                name = figures.nth(index).get_attribute("data-plot")
                assert box is not None and box["width"] >= 300 and box["height"] >= 200, name
                drawn = svg.evaluate("s => s.querySelectorAll('polyline, circle, text.empty').length")
                assert drawn > 0
                # the browser's own layout of the SVG: points lie inside the drawing
                inside = svg.evaluate(
                    "s => [...s.querySelectorAll('circle')].every(c => { const b = c.getBBox(), v = s.viewBox.baseVal;"
                    " return b.x >= 0 && b.y >= 0 && b.x <= v.width && b.y <= v.height; })"
                )
                assert inside
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert dialogs == []  # the malicious site name's alert() never ran
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.parametrize(("width", "name"), [(1280, "desktop"), (400, "narrow")])
def test_representative_report_screenshots_fit_the_width(
    browser: Browser, tmp_path: Path, width: int, name: str
) -> None:
    """Desktop and narrow screenshots are written for CI; the page never scrolls sideways, the verdict leads."""
    require_browser()
    report = build_report(write_representative_run(tmp_path / "sim"), tmp_path / "out")
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.goto(report.paths.html.as_uri())
        page.wait_for_load_state("load")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        verdict = page.locator("#plain-verdict")
        assert verdict.is_visible() and verdict.bounding_box()["y"] < 900  # type: ignore[index]
        assert verdict.inner_text().startswith("Overall HIGH. In 5 rounds of the job fedavg_audit_demo")
        assert page.locator("#weak-epsilon").is_visible() and page.locator("#model-not-learned").is_visible()
        assert page.locator("#thumbnails img").count() == 2
        shot = artefacts() / f"audit_report_{name}_{width}px.png"
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.close()
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size[0] == width and image.size[1] > 2000


def test_every_threshold_and_setting_is_in_the_rendered_page_text(browser: Browser, tmp_path: Path) -> None:
    """What a reader sees in the browser states every threshold, metric setting, budget and ε band."""
    require_browser()
    report = build_report(write_representative_run(tmp_path / "sim"), tmp_path / "out")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(report.paths.html.as_uri())
        text = " ".join(page.locator("body").inner_text().split())
    finally:
        page.close()
    assert [needle for needle in REPRESENTATIVE_TEXTS if needle not in text] == []


def test_the_report_prints_to_pdf(tmp_path: Path) -> None:
    """`medpfl report --pdf`: a PDF (magic bytes, at least one page, owner-only) beside the HTML."""
    require_browser()
    from medpfl_app.cli.main import main

    run = write_representative_run(tmp_path / "sim")
    assert main(["report", str(run), "--out", str(tmp_path / "out"), "--pdf"]) == 0
    pdf = tmp_path / "out" / "audit_report.pdf"
    content = pdf.read_bytes()
    assert content.startswith(b"%PDF") and pdf_pages(content) >= 2
    assert pdf.stat().st_mode & 0o077 == 0
    copy = artefacts() / "audit_report.pdf"
    copy.write_bytes(content)
    again = print_pdf(tmp_path / "out" / "audit_report.html", tmp_path / "again.pdf")
    assert again.read_bytes().startswith(b"%PDF")
