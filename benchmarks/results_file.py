"""Replace one ``## <title>`` section of benchmarks/RESULTS.md, keeping every other section as it is."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

HEADER = "# MedPFL benchmark results\n\nEvery figure below was measured by the command its section names; ratios compare against a baseline\nmeasured in the same run on the same machine.\n"


def replace_section(path: Path, title: str, body: str) -> None:
    text = path.read_text() if path.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)
