"""Compliance reports from the audit ledger: per-round JSON, a self-contained HTML page, a terminal summary."""

from medpfl_app.reports.render import HTML_FILE, REPORT_SCHEMA, Report, ReportPaths, build_report, render_report

__all__ = ["HTML_FILE", "REPORT_SCHEMA", "Report", "ReportPaths", "build_report", "render_report"]
