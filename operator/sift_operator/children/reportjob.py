"""The follow-up report Job: sends a finished run's outbox when the worker left it Pending.

The worker's results are safe in the output storage whatever the results API does, and
it exits 0 either way. When its termination message says ``Pending`` (the API was
unreachable), the operator creates this Job: the worker's hardened pod (same
ServiceAccount, ConfigMap, volumes, NetworkPolicy), no GPU, running ``sift-worker report``
on the outbox. The Job controller does the retrying: exit 4 (still pending) counts as a
failure and the pod is re-created with its exponential backoff (10 s, 20 s, ... 6 min);
exit 5 (rejected) or 3 (config error) fail the Job at once; ``activeDeadlineSeconds`` ends
it when the operator's retry window (``SIFT_REPORT_RETRY_SECONDS`` after the run's
completion) is over.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from sift_operator.children.common import GENERATION_ANNOTATION, KUEUE_QUEUE_LABEL, Obj
from sift_operator.children.configmap import CONFIG_PATH
from sift_operator.children.job import CONTAINER, build_job
from sift_operator.names import PREFIX, fit
from sift_operator.settings import OperatorSettings

EXIT_REPORT_PENDING = 4  # sift_worker.cli
EXIT_REPORT_REJECTED = 5
BACKOFF_LIMIT = 100  # the deadline ends the retries, not the count
REPORT_RESOURCES = {"cpu": "500m", "memory": "512Mi"}


def report_job_name(run_name: str) -> str:
    return fit(f"{PREFIX}{run_name}-report")


def build_report_job(
    run: Mapping[str, Any], settings: OperatorSettings, *, deadline_seconds: int
) -> Obj:
    """The report Job; ``deadline_seconds`` is what is left of the retry window."""
    job = copy.deepcopy(build_job(run, settings, suspend=False))
    meta = job["metadata"]
    meta["name"] = report_job_name(str(run["metadata"]["name"]))
    meta["labels"].pop(KUEUE_QUEUE_LABEL, None)  # no GPU: nothing for Kueue to admit
    meta["labels"]["app.kubernetes.io/component"] = "report"
    meta["annotations"] = {GENERATION_ANNOTATION: meta["annotations"][GENERATION_ANNOTATION]}
    spec = job["spec"]
    spec.update(
        {
            "suspend": False,
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": max(1, int(deadline_seconds)),
        }
    )
    spec["podFailurePolicy"]["rules"].insert(
        0,
        {
            "action": "FailJob",  # the API refused the report: retrying cannot help
            "onExitCodes": {
                "containerName": CONTAINER,
                "operator": "In",
                "values": [EXIT_REPORT_REJECTED],
            },
        },
    )
    template = spec["template"]
    template["metadata"]["labels"]["app.kubernetes.io/component"] = "report"
    (container,) = template["spec"]["containers"]
    container["command"] = ["sift-worker"]
    container["args"] = ["report", CONFIG_PATH, "--log-format", "json"]
    container["resources"] = {"requests": dict(REPORT_RESOURCES), "limits": dict(REPORT_RESOURCES)}
    container["env"] = [e for e in container["env"] if e["name"] != "NVIDIA_VISIBLE_DEVICES"]
    container["env"].append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"})
    return job
