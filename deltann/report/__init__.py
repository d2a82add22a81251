"""Report: render the analysis DataFrames as Markdown and CSV tables (report/tables.py)."""

from deltann.report.tables import Report, build_report

__all__ = ["Report", "build_report"]
