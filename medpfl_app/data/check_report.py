"""The result of `medpfl data check`: every file's row, the site's findings, class counts, a verdict and its JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from medpfl_app.data.findings import SiteFinding
from medpfl_app.data.preflight import CheckStatus, FileCheck

SCHEMA = "medpfl.data_check/1"
#: Up to this many files every row is printed; beyond it only rows with a problem (``--all`` prints all).
FULL_TABLE_UP_TO = 20
_COLUMNS = ("file", "format", "shape", "dtype", "photometric", "range", "status")


@dataclass(frozen=True)
class DataCheckReport:
    """What `medpfl_app.data.check.check_site_data` found.

    Attributes:
        source: The datalist or folder checked.
        root: The folder file names are shown relative to.
        class_names: Name of each label.
        training_counts: Training images per class.
        validation_counts: Validation images per class.
        image_shape: Shape ``(C, H, W)`` of the tensors the model gets.
        rows: One row per listed file, training first, in listing order.
        findings: Problems of the site's data as a whole (duplicates, classes).
        site: Site name, if given.
    """

    source: Path
    root: Path
    class_names: tuple[str, ...]
    training_counts: tuple[int, ...]
    validation_counts: tuple[int, ...]
    image_shape: tuple[int, ...]
    rows: tuple[FileCheck, ...]
    findings: tuple[SiteFinding, ...] = ()
    site: str | None = None

    @property
    def status(self) -> CheckStatus:
        """The worst outcome of any file or finding."""
        statuses = [row.status for row in self.rows] + [finding.status for finding in self.findings]
        return max(statuses, key=lambda status: status.severity, default=CheckStatus.OK)

    def count(self, status: CheckStatus) -> int:
        """Number of files and findings with ``status``."""
        return sum(row.status is status for row in self.rows) + sum(f.status is status for f in self.findings)

    def exit_code(self, *, strict: bool = False) -> int:
        """0 when the data is usable, 1 on any error (or any warning when ``strict``)."""
        refused = CheckStatus.WARNING.severity if strict else CheckStatus.ERROR.severity
        return int(self.status.severity >= refused)

    def display_name(self, path: str) -> str:
        """``path`` relative to `root` when it lies under it, else as is."""
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return path

    def sample_name(self, row: FileCheck) -> str:
        """How a row's sample is shown: its `display_name`, plus the frame of a multi-frame file."""
        return self.display_name(row.path) + (f" [frame {row.frame}]" if row.frame is not None else "")

    def format(self, *, all_rows: bool = False, strict: bool = False) -> str:
        """The human-readable report: heading, per-file table, findings, class counts and the verdict line."""
        from medpfl_app.text import printable  # file names are chosen by whoever wrote the data

        where = f"[{self.site}] " if self.site else ""
        lines = [
            f"{where}data check: {self.source}",
            f"  {sum(self.training_counts)} training, {sum(self.validation_counts)} validation images; model input "
            f"shape {self.image_shape}; files relative to {self.root}",
            "",
            *self._table(all_rows),
        ]
        if self.findings:
            lines += ["", "site findings:"]
            for finding in self.findings:
                lines += [f"  {finding.status.upper()}  {finding.message}", f"      fix: {finding.fix}"]
        lines += ["", *self._class_table(), "", self.verdict(strict=strict)]
        return "\n".join(printable(line) for line in lines)

    def verdict(self, *, strict: bool = False) -> str:
        """One line: usable or not, and why."""
        where = f"[{self.site}] " if self.site else ""
        bad_files = sum(row.status is CheckStatus.ERROR for row in self.rows)
        bad_findings = sum(finding.status is CheckStatus.ERROR for finding in self.findings)
        warnings = self.count(CheckStatus.WARNING)
        if bad_files or bad_findings:
            parts = [f"{bad_files} of {len(self.rows)} files have errors"] if bad_files else []
            parts += [f"{bad_findings} site error(s)"] if bad_findings else []
            return f"{where}data NOT usable: {', '.join(parts)}, {warnings} warning(s); fix the errors above and re-run"
        if warnings:
            tail = "refused because of --strict" if strict else "usable (--strict refuses warnings)"
            return f"{where}data {tail}: {len(self.rows)} files, {warnings} warning(s) above"
        return f"{where}data OK: {len(self.rows)} files, {len(self.class_names)} classes, no problems found"

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable data, with a schema version."""
        return {
            "schema": SCHEMA,
            "source": str(self.source),
            "site": self.site,
            "status": str(self.status),
            "verdict": self.verdict(),
            "errors": self.count(CheckStatus.ERROR),
            "warnings": self.count(CheckStatus.WARNING),
            "image_shape": list(self.image_shape),
            "classes": [
                {"name": name, "training": train, "validation": val}
                for name, train, val in zip(self.class_names, self.training_counts, self.validation_counts)
            ],
            "files": [_plain(dataclasses.asdict(row)) for row in self.rows],
            "findings": [_plain(dataclasses.asdict(finding)) for finding in self.findings],
        }

    def _table(self, all_rows: bool) -> list[str]:
        show_all = all_rows or len(self.rows) <= FULL_TABLE_UP_TO
        shown = [row for row in self.rows if show_all or row.status is not CheckStatus.OK]
        if not shown:
            return [f"  all {len(self.rows)} files OK (--all lists every file)"]
        cells = [_COLUMNS] + [self._cells(row) for row in shown]
        widths = [max(len(line[column]) for line in cells) for column in range(len(_COLUMNS) - 1)]
        lines = []
        for row, line in zip((None, *shown), cells):
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1])
            if row is not None and row.status is not CheckStatus.OK:
                lines += [f"      {problem}" for problem in row.problems]
                lines += [f"      fix: {fix}" for fix in row.fixes]
        hidden = len(self.rows) - len(shown)
        if hidden:
            lines.append(f"  … and {hidden} more file(s) OK (--all lists every file)")
        return lines

    def _cells(self, row: FileCheck) -> tuple[str, ...]:
        shape = "×".join(str(size) for size in row.shape) if row.shape else "?"
        if row.intensity_min is None or row.intensity_max is None:
            value_range = "?"
        else:
            value_range = f"{row.intensity_min:.4g}…{row.intensity_max:.4g}"
        if row.nonfinite:
            value_range += " +NaN/Inf"
        return (
            self.sample_name(row),
            row.format or "?",
            shape,
            row.dtype or "?",
            row.photometric or "-",
            value_range,
            row.status.upper(),
        )

    def _class_table(self) -> list[str]:
        width = max([len("class"), *(len(name) for name in self.class_names)])
        lines = [f"  {'class':<{width}}  training  validation"]
        for name, train, val in zip(self.class_names, self.training_counts, self.validation_counts):
            lines.append(f"  {name:<{width}}  {train:>8}  {val:>10}")
        return lines


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Enums as their string values, tuples as lists: plain JSON."""
    plain: dict[str, Any] = {}
    for key, value in values.items():
        plain[key] = str(value) if isinstance(value, Enum) else list(value) if isinstance(value, tuple) else value
    return plain
