"""Sweep reports: gather every run's metrics into a CSV, a markdown table and Pareto plots."""

from attnlab.report.gather import Run, gather_runs
from attnlab.report.tables import group_runs, markdown_table, write_csv

__all__ = ["Run", "gather_runs", "group_runs", "markdown_table", "write_csv"]
