"""Self-contained HTML report of a selection run.

Kept free of torch so the report can be rendered (and tested) anywhere numpy and
jinja2 are installed.
"""

from sift_worker.report.distributions import bin_numeric, categorical_counts, make_distribution
from sift_worker.report.projection import project_2d
from sift_worker.report.render import (
    MAX_THUMBNAILS,
    Distribution,
    DuplicateRow,
    ReportData,
    StrategyEffect,
    Thumbnail,
    render_report,
)

__all__ = [
    "MAX_THUMBNAILS",
    "Distribution",
    "DuplicateRow",
    "ReportData",
    "StrategyEffect",
    "Thumbnail",
    "bin_numeric",
    "categorical_counts",
    "make_distribution",
    "project_2d",
    "render_report",
]
