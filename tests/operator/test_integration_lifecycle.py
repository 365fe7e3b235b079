"""A real operator process against the emulated API: create a run, play the Job
controller, and follow the run's status and events (each test in its own namespace)."""

from __future__ import annotations

import time

import httpx
import kmock
import pytest
from harness.cluster import Cluster, condition, selection_run

pytestmark = pytest.mark.slow


def _conditions(run: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in run["status"]["conditions"]}


def test_job_and_children_have_the_hardened_shape(cluster: Cluster, ns: str) -> None:
    created = cluster.kube.create(selection_run("shape", ns))
    uid = created["metadata"]["uid"]
    job = cluster.wait_job(ns, "shape")

    owner = {
        "apiVersion": "sift.dev/v1alpha1",
        "kind": "SelectionRun",
        "name": "shape",
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for plural in ("serviceaccounts", "configmaps", "networkpolicies", "jobs"):
        child = cluster.kube.get(plural, ns, "sift-shape")
        assert child is not None, plural
        assert child["metadata"]["ownerReferences"] == [owner], plural
        labels = child["metadata"]["labels"]
        assert labels["sift.dev/run"] == "shape"
        assert labels["app.kubernetes.io/managed-by"] == "sift-operator"
    assert cluster.kube.get("ciliumnetworkpolicies", ns, "sift-shape") is None

    spec = job["spec"]
    assert spec["suspend"] is False
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["serviceAccountName"] == "sift-shape"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [3]
    sa = cluster.kube.get("serviceaccounts", ns, "sift-shape")
    assert sa is not None
    assert sa["automountServiceAccountToken"] is False

    run = cluster.wait_reason(ns, "shape", "Running", "JobCreated")
    assert run["status"]["phase"] == "Pending"
    assert run["status"]["observedGeneration"] == 1
    assert condition(run, "Accepted")["reason"] == "SpecValid"
    assert condition(run, "EgressRestricted")["status"] == "True"
    # a new run's transitions are one Event (Accepted and EgressRestricted merged into it)
    cluster.wait_reasons(ns, "shape", "JobCreated")  # posted after the status write
    (event,) = [e for e in cluster.events(ns) if e["involvedObject"]["name"] == "shape"]
    assert event["reason"] == "JobCreated"
    assert "Accepted: " in event["message"]
    assert "EgressRestricted: NetworkPolicy" in event["message"]
    # the operator never writes the spec
    assert run["spec"] == created["spec"]


def test_status_follows_the_job_to_success(cluster: Cluster, ns: str) -> None:
    cluster.kube.create(selection_run("ok", ns))
    job = cluster.wait_job(ns, "ok")
    pod = cluster.ctl.create_pod(job)
    run = cluster.wait_reason(ns, "ok", "Running", "JobCreated")
    assert run["status"]["phase"] == "Pending"

    cluster.ctl.run(job, pod)
    run = cluster.wait_phase(ns, "ok", "Running")
    assert condition(run, "Running")["reason"] == "PodsRunning"
    assert run["status"]["startTime"]
    running_since = condition(run, "Running")["lastTransitionTime"]

    cluster.ctl.succeed(job, pod)
    run = cluster.wait_phase(ns, "ok", "Succeeded")
    assert _conditions(run)["Succeeded"] == "True"
    assert _conditions(run)["Running"] == "False"
    assert _conditions(run)["Failed"] == "False"
    assert run["status"]["completionTime"]
    assert condition(run, "Accepted")["lastTransitionTime"] <= running_since
    cluster.wait_reasons(ns, "ok", "Started", "Succeeded")
    # one Event per transition: nothing repeated
    assert all(e["count"] == 1 for e in cluster.events(ns))


@pytest.mark.parametrize(
    ("exit_code", "reason"),
    [(1, "BackoffLimitExceeded"), (3, "ConfigError")],
)
def test_status_follows_the_job_to_failure(
    cluster: Cluster, ns: str, exit_code: int, reason: str
) -> None:
    cluster.kube.create(selection_run("bad", ns))
    job = cluster.wait_job(ns, "bad")
    pod = cluster.ctl.create_pod(job)
    cluster.ctl.run(job, pod)
    cluster.wait_phase(ns, "bad", "Running")
    cluster.ctl.fail(job, pod, exit_code=exit_code)
    run = cluster.wait_phase(ns, "bad", "Failed")
    failed = condition(run, "Failed")
    assert failed["status"] == "True"
    assert failed["reason"] == reason
    assert condition(run, "Succeeded")["status"] == "False"
    cluster.kube.wait_for(  # Events are posted after the status write
        lambda: reason in {e["reason"] for e in cluster.events(ns) if e["type"] == "Warning"},
        f"a Warning Event {reason}",
    )


def test_finished_run_never_gets_a_new_job(cluster: Cluster, ns: str) -> None:
    cluster.kube.create(selection_run("done", ns))
    job = cluster.wait_job(ns, "done")
    cluster.ctl.succeed(job, None)
    cluster.wait_phase(ns, "done", "Succeeded")
    posts = cluster.emulator.counts[("POST", "jobs")]
    cluster.kube.delete("jobs", ns, "sift-done")  # ttlSecondsAfterFinished removed it
    time.sleep(2.5)  # longer than a resync period
    assert cluster.job(ns, "done") is None
    assert cluster.emulator.counts[("POST", "jobs")] == posts
    run = cluster.run(ns, "done")
    assert run is not None
    assert run["status"]["phase"] == "Succeeded"


def test_kueue_queue_name_creates_a_suspended_job_left_to_kueue(cluster: Cluster, ns: str) -> None:
    cluster.kube.create(selection_run("kq", ns, worker={"queueName": "gpu-batch"}))
    job = cluster.wait_job(ns, "kq")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-batch"
    run = cluster.wait_phase(ns, "kq", "Queued")
    assert condition(run, "Queued")["reason"] == "QueuedByKueue"

    # Kueue admits the workload: it un-suspends the Job; the operator leaves it alone
    cluster.kube.patch("jobs", ns, "sift-kq", {"spec": {"suspend": False}})
    run = cluster.wait_reason(ns, "kq", "Queued", "Admitted")
    pod = cluster.ctl.create_pod(job)
    cluster.ctl.run(job, pod)
    cluster.wait_phase(ns, "kq", "Running")
    # Kueue preempts: suspends again; still nobody but Kueue touches it
    patches_before = cluster.emulator.counts[("PATCH", "jobs")]
    cluster.kube.patch("jobs", ns, "sift-kq", {"spec": {"suspend": True}})
    cluster.wait_phase(ns, "kq", "Queued")
    time.sleep(0.5)
    job_now = cluster.job(ns, "kq")
    assert job_now is not None
    assert job_now["spec"]["suspend"] is True
    assert cluster.emulator.counts[("PATCH", "jobs")] == patches_before + 1  # ours only


def test_spec_suspend_maps_to_job_suspension(cluster: Cluster, ns: str) -> None:
    cluster.kube.create(selection_run("held", ns, suspend=True))
    job = cluster.wait_job(ns, "held")
    assert job["spec"]["suspend"] is True
    run = cluster.wait_phase(ns, "held", "Queued")
    assert condition(run, "Queued")["reason"] == "Suspended"

    cluster.kube.patch("selectionruns", ns, "held", {"spec": {"suspend": False}})
    cluster.kube.wait_for(
        lambda: (cluster.job(ns, "held") or {}).get("spec", {}).get("suspend") is False,
        "the Job un-suspended",
    )
    run = cluster.wait_reason(ns, "held", "Queued", "Admitted")
    # suspend is not a spec change the operator refuses
    assert condition(run, "Accepted")["reason"] == "SpecValid"

    cluster.kube.patch("selectionruns", ns, "held", {"spec": {"suspend": True}})
    cluster.kube.wait_for(
        lambda: (cluster.job(ns, "held") or {}).get("spec", {}).get("suspend") is True,
        "the Job suspended again",
    )
    cluster.wait_reason(ns, "held", "Queued", "Suspended")


def test_spec_change_after_the_job_exists_is_reported_not_applied(
    cluster: Cluster, ns: str
) -> None:
    cluster.kube.create(selection_run("edit", ns))
    job = cluster.wait_job(ns, "edit")
    cluster.wait_reason(ns, "edit", "Running", "JobCreated")
    # a change CEL allows (selection, input and datasource are immutable there)
    cluster.kube.patch(
        "selectionruns", ns, "edit", {"spec": {"worker": {"resources": {"cpu": "3"}}}}
    )
    run = cluster.wait_reason(ns, "edit", "Accepted", "SpecChangeIgnored")
    assert run["status"]["observedGeneration"] == 2
    assert condition(run, "Accepted")["status"] == "True"
    after = cluster.job(ns, "edit")
    assert after is not None
    assert after["spec"] == job["spec"]
    assert after["metadata"]["resourceVersion"] == job["metadata"]["resourceVersion"]
    (container,) = after["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["cpu"] == "2"
    cluster.kube.wait_for(
        lambda: any(e["reason"] == "SpecChangeIgnored" for e in cluster.events(ns)),
        "the SpecChangeIgnored Event",
    )
    warnings = [e for e in cluster.events(ns) if e["reason"] == "SpecChangeIgnored"]
    assert len(warnings) == 1
    assert warnings[0]["type"] == "Warning"


def test_deleting_the_run_removes_its_children(cluster: Cluster, ns: str) -> None:
    cluster.kube.create(selection_run("gone", ns))
    job = cluster.wait_job(ns, "gone")
    cluster.ctl.create_pod(job)
    cluster.wait_reason(ns, "gone", "Running", "JobCreated")
    orphans = cluster.emulator.orphans_collected
    cluster.kube.delete("selectionruns", ns, "gone")
    for plural in ("jobs", "pods", "configmaps", "serviceaccounts", "networkpolicies"):
        cluster.kube.wait_for(lambda p=plural: not cluster.kube.list(p, ns), f"no {plural} left")
    time.sleep(1.0)  # the operator must not bring anything back
    assert cluster.job(ns, "gone") is None
    assert cluster.run(ns, "gone") is None
    # nothing was created for the deleted run (the GC would have had to collect it)
    assert cluster.emulator.orphans_collected == orphans
    assert "Traceback" not in cluster.operator.logs()


def test_missing_secret_is_reported_and_the_run_recovers(cluster: Cluster, ns: str) -> None:
    report = {"api": {"url": "https://127.0.0.1", "tokenSecret": {"name": "api", "key": "token"}}}
    cluster.kube.create(selection_run("sec", ns, report=report))
    run = cluster.wait_reason(ns, "sec", "Accepted", "SecretNotFound")
    assert condition(run, "Accepted")["status"] == "False"
    assert "api" in condition(run, "Accepted")["message"]
    assert run["status"]["phase"] == "Pending"
    assert cluster.job(ns, "sec") is None
    cluster.wait_reasons(ns, "sec", "SecretNotFound")

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api", "namespace": ns}}
    cluster.kube.create({**secret, "data": {"other": "eA=="}})
    cluster.wait_reason(ns, "sec", "Accepted", "SecretKeyNotFound")
    assert cluster.job(ns, "sec") is None

    cluster.kube.patch("secrets", ns, "api", {"data": {"token": "eA=="}})
    cluster.wait_job(ns, "sec")
    run = cluster.wait_reason(ns, "sec", "Accepted", "SpecValid")
    assert condition(run, "Accepted")["status"] == "True"


def test_quota_exceeded_is_reported_and_the_run_recovers(cluster: Cluster, ns: str) -> None:
    def quota(obj: dict) -> kmock.KubernetesError | None:
        if obj["metadata"].get("namespace") != ns:
            return None
        return kmock.KubernetesError(
            status=403,
            reason="Forbidden",
            message=f'jobs "sift-quota" is forbidden: exceeded quota: gpus, requested: '
            f"requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=4, limited: "
            f"requests.nvidia.com/gpu=4 (namespace {ns})",
        )

    cluster.emulator.fail_creates["jobs"] = quota
    try:
        cluster.kube.create(selection_run("quota", ns))
        run = cluster.wait_reason(ns, "quota", "Running", "QuotaExceeded")
        assert "exceeded quota" in condition(run, "Running")["message"]
        assert run["status"]["phase"] == "Pending"
        assert cluster.job(ns, "quota") is None
    finally:
        del cluster.emulator.fail_creates["jobs"]
    cluster.wait_job(ns, "quota")
    cluster.wait_reason(ns, "quota", "Running", "JobCreated")


def test_invalid_spec_is_refused_without_children(cluster: Cluster, ns: str) -> None:
    # the emulator has no CEL: the operator's own check must hold the line
    cluster.kube.create(selection_run("inv", ns, selection={"proportion": 0.5}))
    run = cluster.wait_reason(ns, "inv", "Accepted", "InvalidSpec")
    assert condition(run, "Accepted")["status"] == "False"
    assert "nSamples" in condition(run, "Accepted")["message"]
    assert cluster.kube.list("configmaps", ns) == []
    assert cluster.job(ns, "inv") is None


def test_pod_problems_show_and_clear(cluster: Cluster, ns: str) -> None:
    cluster.kube.create(selection_run("pull", ns, worker={"image": "registry.invalid/w:1"}))
    job = cluster.wait_job(ns, "pull")
    pod = cluster.ctl.create_pod(job)
    cluster.ctl.pod_status(
        pod,
        {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "worker",
                    "image": "registry.invalid/w:1",
                    "ready": False,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off"}},
                }
            ],
        },
    )
    run = cluster.wait_reason(ns, "pull", "Running", "ImagePullFailed")
    assert "registry.invalid/w:1" in condition(run, "Running")["message"]
    cluster.ctl.run(job, pod)
    cluster.wait_phase(ns, "pull", "Running")


def test_metrics_count_runs_by_phase_and_outcome_without_run_names(cluster: Cluster) -> None:
    # runs by phase are gauged every few seconds: wait for the earlier tests' runs
    def scrape() -> str | None:
        text = httpx.get(cluster.metrics_url, timeout=5).text
        return text if 'sift_operator_runs{phase="Succeeded"} 0.0' not in text else None

    text = cluster.kube.wait_for(scrape, "the runs gauge", timeout=15, interval=0.5)
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sift_operator_")
    }
    assert values['sift_operator_runs{phase="Succeeded"}'] >= 1
    assert values['sift_operator_runs{phase="Failed"}'] >= 2
    assert values['sift_operator_run_outcomes_total{outcome="succeeded"}'] >= 1
    assert values['sift_operator_run_outcomes_total{outcome="failed"}'] >= 2
    assert values["sift_operator_reconcile_duration_seconds_count"] > 0
    # runs by their Reported reason: these runs have no spec.report, or failed
    assert values['sift_operator_runs_reporting{reason="Disabled"}'] >= 1
    assert values['sift_operator_runs_reporting{reason="Reported"}'] == 0
    # bounded labels: no series names a run
    for run in ("shape", "held", "quota", "pull"):
        assert f'"{run}"' not in text


def test_cilium_mode_adds_an_fqdn_policy(cluster: Cluster, ns: str) -> None:
    cluster.kube.create(selection_run("cil", ns, egress={"mode": "cilium"}))
    cluster.wait_job(ns, "cil")
    cnp = cluster.kube.get("ciliumnetworkpolicies", ns, "sift-cil")
    assert cnp is not None
    assert cnp["metadata"]["ownerReferences"][0]["name"] == "cil"
    run = cluster.wait_reason(ns, "cil", "EgressRestricted", "NetworkPolicyAndCilium")
    assert condition(run, "EgressRestricted")["status"] == "True"


def test_cilium_mode_without_cilium_holds_the_job_back(cluster: Cluster, ns: str) -> None:
    resources = cluster.emulator.resources
    key = "cilium.io/v2/ciliumnetworkpolicies"
    info = resources[key]
    del resources[key]
    try:
        cluster.kube.create(selection_run("nocil", ns, egress={"mode": "cilium"}))
        run = cluster.wait_reason(ns, "nocil", "Running", "CiliumUnavailable")
        assert run["status"]["phase"] == "Pending"
        assert cluster.job(ns, "nocil") is None
    finally:
        resources[key] = info
    cluster.wait_job(ns, "nocil")  # recovers once the CRD is installed


def test_unschedulable_pod_is_reported_and_clears(cluster: Cluster, ns: str) -> None:
    cluster.kube.create(selection_run("sched", ns, worker={"resources": {"gpu": 8}}))
    job = cluster.wait_job(ns, "sched")
    pod = cluster.ctl.create_pod(job)
    cluster.ctl.pod_status(
        pod,
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        },
    )
    run = cluster.wait_reason(ns, "sched", "Running", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in condition(run, "Running")["message"]
    cluster.wait_reasons(ns, "sched", "Unschedulable")
    cluster.ctl.run(job, pod)  # a GPU node joined
    cluster.wait_phase(ns, "sched", "Running")
