"""Report: render the analysis DataFrames as Markdown, HTML, CSV and LaTeX tables and PNG
plots (report/tables.py drives; plots.py, html.py, latex.py render)."""

from deltann.report.tables import Report, build_report

__all__ = ["Report", "build_report"]
