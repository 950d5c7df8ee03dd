"""The HTML report in headless Chromium (Debian's, driven by Playwright): summary, table and every plot render.

`.ci/run` installs Debian's ``chromium`` when it is missing, so in CI this test runs; it skips only where Chromium
is not installed at all. Playwright never downloads a browser here: it launches ``/usr/bin/chromium``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from report_cases import MALICIOUS_SITE, write_job

from medpfl_app.reports import render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The closed network refuses Chromium's background connections; these flags keep it from trying (see the machine
# notes), and a fresh profile per launch comes from Playwright's temporary user-data-dir.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium and chromium-driver)"
)


def test_report_renders_in_chromium_without_console_errors(tmp_path: Path) -> None:
    """Chromium shows the verdict, all 9 coloured cells and 5 drawn plots, with no console error or request."""
    # (cells carry their evidence as a title tooltip; the page stays script-free)
    from playwright.sync_api import sync_playwright

    write_job(tmp_path / "job")
    html = render_report(tmp_path / "job", tmp_path / "out").html
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console",
                    lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
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
