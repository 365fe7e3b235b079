"""The SelectionRun API: pydantic models that are the single source of truth.

The CRD schema, the docs' field reference and local validation are all generated
from these models, so the operator imports them and never the other way round.
"""

from sift_worker.api.v1alpha1 import API_VERSION, GROUP, KIND, SelectionRun

__all__ = ["API_VERSION", "GROUP", "KIND", "SelectionRun"]
