"""The worker Job: Pod Security "restricted", GPU, scheduling, failure handling, queueing."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from golden import UID, as_stored, example, minimal_spec, run_with
from sift_operator.children import build_job, desired_children
from sift_operator.children.job import TOKEN_FILE, cpu_threads
from sift_operator.settings import OperatorSettings
from test_children_golden import CASES, SETTINGS, render

Obj = dict[str, Any]

# --- a Pod Security Standards "restricted" checker, written out rule by rule ---
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline + restricted)

ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
ALLOWED_SECCOMP = {"RuntimeDefault", "Localhost"}
BASELINE_CAPS = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
}


def pss_restricted_violations(pod: Obj) -> list[str]:
    """Every way ``pod`` (a PodSpec) breaks the "restricted" profile; empty when it passes."""
    bad: list[str] = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            bad.append(f"{field} is true")
    psc = pod.get("securityContext") or {}
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            bad.append(f"volume {volume['name']}: hostPath")
        if kinds - ALLOWED_VOLUMES:
            bad.append(f"volume {volume['name']}: type {sorted(kinds - ALLOWED_VOLUMES)}")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            bad.append(f"sysctl {sysctl.get('name')}")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        bad.append("windowsOptions.hostProcess")
    if psc.get("runAsUser") == 0:
        bad.append("pod runAsUser 0")
    containers = [
        *pod.get("initContainers", []),
        *pod.get("containers", []),
        *pod.get("ephemeralContainers", []),
    ]
    if not containers:
        bad.append("no containers")
    for c in containers:
        name = c.get("name", "?")
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities {caps.get('add')}")
        if set(caps.get("add") or []) - BASELINE_CAPS:
            bad.append(f"{name}: adds non-baseline capabilities")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            bad.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ALLOWED_SECCOMP:
            bad.append(f"{name}: seccompProfile {seccomp!r}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                bad.append(f"{name}: hostPort {port['hostPort']}")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{name}: procMount {sc['procMount']}")
        apparmor = (sc.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            bad.append(f"{name}: appArmorProfile {apparmor}")
        selinux = (sc.get("seLinuxOptions") or {}).get("type")
        if selinux not in (None, "", "container_t", "container_init_t", "container_kvm_t"):
            bad.append(f"{name}: seLinuxOptions.type {selinux}")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad.append(f"{name}: windowsOptions.hostProcess")
        # not part of PSS, but promised by the threat model
        if sc.get("readOnlyRootFilesystem") is not True:
            bad.append(f"{name}: root filesystem is writable")
    return bad


def pod_of(job: Obj) -> Obj:
    pod: Obj = job["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_job_passes_pss_restricted(case: str) -> None:
    assert pss_restricted_violations(pod_of(render(case).job)) == []


def _set_container(key: str, value: Any) -> Callable[[Obj], None]:
    def change(pod: Obj) -> None:
        pod["containers"][0]["securityContext"][key] = value

    return change


def _drop_container(key: str) -> Callable[[Obj], None]:
    def change(pod: Obj) -> None:
        del pod["containers"][0]["securityContext"][key]

    return change


BREAKAGES: list[tuple[str, Callable[[Obj], None], str]] = [
    ("privileged", _set_container("privileged", True), "privileged"),
    ("escalation", _set_container("allowPrivilegeEscalation", True), "allowPrivilegeEscalation"),
    ("escalation-unset", _drop_container("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    ("caps-kept", _set_container("capabilities", {"drop": ["NET_RAW"]}), "drop ALL"),
    ("caps-added", _set_container("capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]}), "adds"),
    ("root-user", _set_container("runAsUser", 0), "runAsUser 0"),
    ("root-allowed", _set_container("runAsNonRoot", False), "runAsNonRoot"),
    ("seccomp", _set_container("seccompProfile", {"type": "Unconfined"}), "seccompProfile"),
    ("rw-root", _set_container("readOnlyRootFilesystem", False), "root filesystem"),
    ("host-network", lambda pod: pod.update(hostNetwork=True), "hostNetwork"),
    ("host-pid", lambda pod: pod.update(hostPID=True), "hostPID"),
    ("host-ipc", lambda pod: pod.update(hostIPC=True), "hostIPC"),
    (
        "host-path",
        lambda pod: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "hostPath",
    ),
    (
        "host-port",
        lambda pod: pod["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
        "hostPort",
    ),
    (
        "sysctl",
        lambda pod: pod["securityContext"].update(
            sysctls=[{"name": "kernel.msgmax", "value": "1"}]
        ),
        "sysctl",
    ),
]


@pytest.mark.parametrize(("what", "change", "expected"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_pss_checker_catches_each_breakage(
    what: str, change: Callable[[Obj], None], expected: str
) -> None:
    pod = copy.deepcopy(pod_of(render("full").job))
    change(pod)
    found = pss_restricted_violations(pod)
    assert any(expected in v for v in found), (what, found)


def test_job_basics() -> None:
    job = render("full").job
    spec = job["spec"]
    pod = pod_of(job)
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["serviceAccountName"] == "sift-weekly-curation"
    assert spec["backoffLimit"] == 2
    assert spec["activeDeadlineSeconds"] == 86400
    assert spec["ttlSecondsAfterFinished"] == 7 * 86400
    assert spec["completions"] == spec["parallelism"] == 1
    assert spec["podReplacementPolicy"] == "Failed"  # never two GPU pods of one run at once
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "worker", "operator": "In", "values": [3]},
    }
    assert rules[1] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/sift-worker:1.0.0"
    assert container["command"] + container["args"][:2] == [
        "sift-worker",
        "run",
        "/etc/sift/run.yaml",
    ]
    assert container["resources"] == {
        "requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"},
        "limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"},
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_worker_cli_accepts_the_command() -> None:
    """The args are what ``sift-worker``'s own parser takes (no typo in an option)."""
    from sift_worker.cli import build_parser

    container = pod_of(render("scheduling").job)["containers"][0]
    args = build_parser().parse_args(container["args"])
    assert args.command == "run"
    assert str(args.file) == "/etc/sift/run.yaml"
    assert args.log_format == "json"
    assert args.threads == 16
    assert args.decode_workers == 16
    assert args.no_progress_bars is True


def test_custom_gpu_resource_and_scheduling() -> None:
    pod = pod_of(render("scheduling").job)
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["amd.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in resources["limits"]
    assert pod["priorityClassName"] == "batch-low"
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    job = render("scheduling").job
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 7200


@pytest.mark.parametrize(
    ("spec_name", "setting", "expected"),
    [
        (None, "nvidia.com/gpu", "nvidia.com/gpu"),  # out of the box
        (None, "amd.com/gpu", "amd.com/gpu"),  # the operator's default (Helm runDefaults)
        ("gpu.intel.com/i915", "amd.com/gpu", "gpu.intel.com/i915"),  # the spec wins
    ],
)
def test_gpu_resource_name_from_spec_or_operator_default(
    spec_name: str | None, setting: str, expected: str
) -> None:
    spec = minimal_spec()
    if spec_name:
        spec["worker"] = {"resources": {"gpuResourceName": spec_name}}
    job = build_job(run_with(spec), OperatorSettings(gpu_resource_name=setting), suspend=False)
    limits = pod_of(job)["containers"][0]["resources"]["limits"]
    assert [k for k in limits if k not in ("cpu", "memory")] == [expected]


def test_cpu_only_run_has_no_gpu_and_sees_none() -> None:
    container = pod_of(render("pvc").job)["containers"][0]
    assert all("gpu" not in k for k in container["resources"]["limits"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "NVIDIA_VISIBLE_DEVICES" not in {
        e["name"] for e in pod_of(render("full").job)["containers"][0]["env"]
    }


def test_scratch_shm_config_and_token_volumes() -> None:
    pod = pod_of(render("full").job)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert mounts["/dev/shm"]["name"] == "dshm"
    assert "emptyDir" in volumes["tmp"]
    assert mounts["/tmp"]["name"] == "tmp"
    assert mounts["/etc/sift"] == {"name": "config", "mountPath": "/etc/sift", "readOnly": True}
    assert volumes["config"]["configMap"]["name"] == "sift-weekly-curation"
    token = volumes["broker-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"audience": "sift.dev/broker", "expirationSeconds": 3600, "path": "token"}
    assert mounts["/var/run/secrets/sift.dev/broker"]["readOnly"] is True
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["SIFT_BROKER_TOKEN_FILE"] == TOKEN_FILE
    assert env["SIFT_BROKER_URL"] == "https://sift-operator.sift-system.svc:8443"
    assert env["SIFT_RUN_UID"] == UID
    assert not any("valueFrom" in e for e in pod["containers"][0]["env"])  # no Secret refs


def test_settings_shape_the_job() -> None:
    settings = OperatorSettings(
        worker_image="example.org/w:2",
        token_audience="broker.example",
        token_expiration_seconds=900,
        config_error_exit_code=42,
        image_pull_secrets=("regcred",),
        run_as_user=1000,
    )
    job = build_job(run_with(minimal_spec()), settings, suspend=False)
    pod = pod_of(job)
    assert pod["containers"][0]["image"] == "example.org/w:2"
    token = pod["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"]
    assert (token["audience"], token["expirationSeconds"]) == ("broker.example", 900)
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [42]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["securityContext"]["runAsUser"] == 1000


SUSPEND_CASES = [
    # (queueName, suspend argument, expected spec.suspend, expected kueue label)
    ("gpu-batch", True, True, "gpu-batch"),
    ("gpu-batch", False, True, "gpu-batch"),  # Kueue admits by unsuspending
    (None, True, True, None),
    (None, False, False, None),
]


@pytest.mark.parametrize(("queue", "suspend", "expected", "label"), SUSPEND_CASES)
def test_suspend_and_kueue_label(
    queue: str | None, suspend: bool, expected: bool, label: str | None
) -> None:
    spec = minimal_spec()
    if queue:
        spec["worker"] = {"queueName": queue}
    job = build_job(run_with(spec), SETTINGS, suspend=suspend)
    assert job["spec"]["suspend"] is expected
    assert job["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == label
    # Kueue reads the Job's label; the pods keep the run's own labels only
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]


def test_generation_annotation_follows_the_run() -> None:
    run = as_stored(example("full"), generation=7)
    children = desired_children(run, SETTINGS, api_cidrs=[], suspend=True)
    assert children.job["metadata"]["annotations"]["sift.dev/generation"] == "7"
    assert children.config_map["metadata"]["annotations"]["sift.dev/generation"] == "7"


@pytest.mark.parametrize(
    ("cpu", "threads"),
    [
        ("8", 8),
        ("500m", 1),
        ("1500m", 1),
        ("2.5", 2),
        ("4000m", 4),
        ("1k", 256),
        ("1e1", 10),
        ("0", 1),
        ("weird", 1),
    ],
)
def test_cpu_threads(cpu: str, threads: int) -> None:
    assert cpu_threads(cpu) == threads
