"""Sweep reports: gather every run's metrics into a CSV, a markdown table (each row against a
named baseline with seed-paired confidence intervals) and plots."""

from attnlab.report.compare import Report, build_report
from attnlab.report.gather import Run, gather_runs
from attnlab.report.stats import PairedDifference, paired_difference, t_critical, t_quantile
from attnlab.report.tables import group_runs, markdown_table, write_csv

__all__ = ["PairedDifference", "Report", "Run", "build_report", "gather_runs", "group_runs", "markdown_table",
           "paired_difference", "t_critical", "t_quantile", "write_csv"]
