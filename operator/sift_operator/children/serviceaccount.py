"""The worker's ServiceAccount: no RBAC binds it, and no token is mounted from it.

It exists so the projected, audience-bound token in the Job identifies exactly this
run to the broker (TokenReview returns ``system:serviceaccount:<ns>:<name>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sift_operator.children.common import Obj, child_metadata


def build_service_account(run: Mapping[str, Any]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": child_metadata(run),
        "automountServiceAccountToken": False,
    }
