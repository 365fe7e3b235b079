"""The test plays the Job controller and the kubelet: pods and Job status, written the
way the real controllers write them (``batch/v1`` Job conditions, pod phases and
container states), through the API like any controller.
"""

from __future__ import annotations

import copy
import datetime
from typing import Any

from harness.server import Kube


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cond(type_: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": _now(),
        "lastTransitionTime": _now(),
    }


class JobController:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def job(self, namespace: str, name: str) -> dict[str, Any]:
        job = self.kube.get("jobs", namespace, name)
        assert job is not None, f"no Job {namespace}/{name}"
        return job

    def create_pod(self, job: dict[str, Any], *, suffix: str = "abcde") -> dict[str, Any]:
        """The pod the Job controller creates from the template."""
        meta = job["metadata"]
        template = copy.deepcopy(job["spec"]["template"])
        labels = dict(template.get("metadata", {}).get("labels", {}))
        labels.update(
            {
                "batch.kubernetes.io/job-name": meta["name"],
                "job-name": meta["name"],
                "batch.kubernetes.io/controller-uid": meta["uid"],
            }
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{meta['name']}-{suffix}",
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": template.get("metadata", {}).get("annotations", {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template["spec"],
        }
        created = self.kube.create(pod)
        self.kube.patch(
            "pods",
            meta["namespace"],
            pod["metadata"]["name"],
            {"status": {"phase": "Pending"}},
            status=True,
        )
        self.kube.patch(
            "jobs",
            meta["namespace"],
            meta["name"],
            {"status": {"active": 1, "ready": 0, "startTime": _now()}},
            status=True,
        )
        return created

    def pod_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.kube.patch("pods", meta["namespace"], meta["name"], {"status": status}, status=True)

    def run(self, job: dict[str, Any], pod: dict[str, Any]) -> None:
        """Scheduled, pulled, started: the worker container runs."""
        self.pod_status(
            pod,
            {
                "phase": "Running",
                "startTime": _now(),
                "conditions": [_cond("PodScheduled"), _cond("Ready")],
                "containerStatuses": [
                    {
                        "name": "worker",
                        "ready": True,
                        "image": pod["spec"]["containers"][0]["image"],
                        "state": {"running": {"startedAt": _now()}},
                    }
                ],
            },
        )
        meta = job["metadata"]
        self.kube.patch(
            "jobs", meta["namespace"], meta["name"], {"status": {"ready": 1}}, status=True
        )

    def _terminate(self, pod: dict[str, Any], exit_code: int, message: str = "") -> None:
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "finishedAt": _now(),
        }
        if message:  # the kubelet copies terminationMessagePath's content here
            terminated["message"] = message
        self.pod_status(
            pod,
            {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": "worker",
                        "ready": False,
                        "image": pod["spec"]["containers"][0]["image"],
                        "state": {"terminated": terminated},
                    }
                ],
            },
        )

    def succeed(self, job: dict[str, Any], pod: dict[str, Any] | None, message: str = "") -> None:
        if pod is not None:
            self._terminate(pod, 0, message)
        meta = job["metadata"]
        self.kube.patch(
            "jobs",
            meta["namespace"],
            meta["name"],
            {
                "status": {
                    "active": 0,
                    "ready": 0,
                    "succeeded": 1,
                    "completionTime": _now(),
                    "conditions": [
                        _cond(
                            "SuccessCriteriaMet",
                            "CompletionsReached",
                            "Reached expected number of succeeded pods",
                        ),
                        _cond(
                            "Complete",
                            "CompletionsReached",
                            "Reached expected number of succeeded pods",
                        ),
                    ],
                }
            },
            status=True,
        )

    def fail(
        self, job: dict[str, Any], pod: dict[str, Any] | None, exit_code: int = 1, message: str = ""
    ) -> None:
        """A failed pod; exit code 3 (config error) trips the podFailurePolicy FailJob rule."""
        if pod is not None:
            self._terminate(pod, exit_code, message)
        meta = job["metadata"]
        if exit_code == 3:
            reason = "PodFailurePolicy"
            pod_name = pod["metadata"]["name"] if pod else "?"
            message = (
                f"Container worker for pod {meta['namespace']}/{pod_name}"
                " failed with exit code 3 matching FailJob rule at index 0"
            )
        else:
            reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        self.kube.patch(
            "jobs",
            meta["namespace"],
            meta["name"],
            {
                "status": {
                    "active": 0,
                    "ready": 0,
                    "failed": 1,
                    "conditions": [
                        _cond("FailureTarget", reason, message),
                        _cond("Failed", reason, message),
                    ],
                }
            },
            status=True,
        )
