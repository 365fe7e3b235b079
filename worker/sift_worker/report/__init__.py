"""Self-contained HTML report of a selection run.

Kept free of torch so the report can be rendered (and tested) anywhere numpy and
jinja2 are installed.
"""

from sift_worker.report.projection import project_2d
from sift_worker.report.render import MAX_THUMBNAILS, ReportData, Thumbnail, render_report

__all__ = ["MAX_THUMBNAILS", "ReportData", "Thumbnail", "project_2d", "render_report"]
