"""Print the HTML report to PDF with headless Chromium (``medpfl report --pdf``).

The page is self-contained (inline CSS, SVG and images, no script), so Chromium's own print-to-pdf renders exactly
what a browser shows, with the template's print stylesheet (light backgrounds, page breaks between sections).
Chromium runs with a throw-away profile and without any background networking: nothing is fetched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from medpfl_app.atomic_io import write_atomic
from medpfl_app.errors import MedPFLError

#: Environment variable naming a Chromium / Chrome binary to use instead of the one on ``PATH``.
CHROMIUM_ENV = "MEDPFL_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (
    "install Chromium (Debian/Ubuntu: `sudo apt-get install chromium`; Fedora: `sudo dnf install "
    "chromium`; macOS: `brew install --cask chromium`), or set MEDPFL_CHROMIUM to a Chrome or Chromium "
    "binary"
)
#: Flags for a quiet, offline, throw-away headless browser (the user-data-dir is added per run).
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
)
PDF_TIMEOUT_S = 120
PDF_FILE = "audit_report.pdf"
PDF_MAGIC = b"%PDF"


def find_chromium() -> str:
    """The Chromium binary to use.

    Raises:
        MedPFLError: none found (naming how to install one).
    """
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        if shutil.which(named) is None:
            raise MedPFLError(
                f"{CHROMIUM_ENV}={named} is not an executable Chromium or Chrome",
                fix=f"point {CHROMIUM_ENV} at a browser binary, or unset it and {INSTALL_HINT}",
            )
        return named
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    raise MedPFLError(
        "printing the report to PDF needs headless Chromium, and none was found on PATH "
        f"(looked for {', '.join(CHROMIUM_NAMES)})",
        fix=INSTALL_HINT,
    )


def print_pdf(html: Path, pdf: Path | None = None, *, timeout_s: float = PDF_TIMEOUT_S) -> Path:
    """Print ``html`` to ``pdf`` (default: beside it, ``.pdf``), owner-only (0600) like the HTML.

    Raises:
        MedPFLError: no Chromium, or Chromium failed or timed out (with its last output).
    """
    browser = find_chromium()
    target = pdf or html.with_suffix(".pdf")
    with tempfile.TemporaryDirectory(prefix="medpfl-chromium-") as profile:
        partial = Path(profile) / "report.pdf"
        command = [
            browser,
            *HEADLESS_FLAGS,
            f"--user-data-dir={profile}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={partial}",
            html.resolve().as_uri(),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise MedPFLError(
                f"Chromium did not finish printing {html} within {timeout_s:g} s",
                fix="run again; if it keeps hanging, open the HTML in a browser and print it",
            ) from None
        if not partial.is_file() or partial.read_bytes()[:4] != PDF_MAGIC:
            last = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise MedPFLError(
                f"Chromium ({browser}) did not print {html} to PDF (exit code {done.returncode}"
                f"{': ' + ' / '.join(last) if last else ''})",
                fix="check that this Chromium starts headless on this machine, or " + INSTALL_HINT,
            )
        content = partial.read_bytes()

    def write(temp: Path) -> None:
        temp.write_bytes(content)
        os.chmod(temp, 0o600)  # the PDF says what the HTML says, embedded thumbnails included

    return write_atomic(target, write)
