"""A test-only "node": plays the Job controller and the kubelet for real.

When an un-suspended Job of ours appears, it creates the Job's pod, marks it running,
runs the pod template's worker command as a local subprocess (the real
``sift-worker``), with the pod's volumes mapped to local folders:

* the ConfigMap volume -> a folder holding the ConfigMap's files,
* each PersistentVolumeClaim -> ``<root>/pvc/<claimName>``,
* emptyDirs -> fresh temporary folders,

then writes the outcome back as the Job controller would (pod phase, exit code, Job
conditions; exit code 3 trips the podFailurePolicy's FailJob rule).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from harness.controller import JobController
from harness.server import Kube


class Node:
    def __init__(self, kube: Kube, root: Path, *, timeout: float = 120.0) -> None:
        self.kube = kube
        self.ctl = JobController(kube)
        self.root = root
        self.timeout = timeout
        self.outcomes: dict[str, int] = {}  # job name -> exit code
        self.logs: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="test-node", daemon=True)
        self._seen: set[str] = set()
        self.env: dict[str, str] = {}  # extra environment for every worker process
        self.hold: Callable[[dict[str, Any]], bool] = lambda job: False  # not run yet
        self.error: BaseException | None = None

    def pvc(self, claim: str) -> Path:
        path = self.root / "pvc" / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

    def __enter__(self) -> Node:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 10)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(0.1):
                for job in self.kube.list("jobs"):
                    uid = job["metadata"]["uid"]
                    if uid in self._seen or job["spec"].get("suspend") or self.hold(job):
                        continue
                    self._seen.add(uid)
                    self.execute(job)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _mounts(self, job: dict[str, Any], workdir: Path) -> dict[str, Path]:
        """mountPath -> local folder, for every volume of the pod."""
        meta = job["metadata"]
        pod = job["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        (container,) = pod["containers"]
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            local = workdir / "volumes" / mount["name"]
            if "configMap" in volume:
                cm = self.kube.get("configmaps", meta["namespace"], volume["configMap"]["name"])
                assert cm is not None, "the Job's ConfigMap does not exist"
                local.mkdir(parents=True, exist_ok=True)
                for item in volume["configMap"].get("items") or [
                    {"key": k, "path": k} for k in cm["data"]
                ]:
                    (local / item["path"]).write_text(cm["data"][item["key"]])
            elif "persistentVolumeClaim" in volume:
                local = self.pvc(volume["persistentVolumeClaim"]["claimName"])
                if mount.get("subPath"):
                    local = local / mount["subPath"]
                    local.mkdir(parents=True, exist_ok=True)
            elif "secret" in volume:
                ref = volume["secret"]
                secret = self.kube.get("secrets", meta["namespace"], ref["secretName"])
                assert secret is not None, f"the Job's Secret {ref['secretName']} does not exist"
                local.mkdir(parents=True, exist_ok=True)
                for item in ref.get("items") or [{"key": k, "path": k} for k in secret["data"]]:
                    (local / item["path"]).write_bytes(
                        base64.b64decode(secret["data"][item["key"]])
                    )
            else:  # emptyDir, projected token: an empty folder
                local.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = local
        return mounts

    @staticmethod
    def _local(value: str, mounts: dict[str, Path]) -> str:
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(mounts[mount_path]) + value[len(mount_path) :]
        return value

    @classmethod
    def _map_paths(cls, value: Any, mounts: dict[str, Path]) -> Any:
        if isinstance(value, dict):
            return {k: cls._map_paths(v, mounts) for k, v in value.items()}
        if isinstance(value, list):
            return [cls._map_paths(v, mounts) for v in value]
        if isinstance(value, str):
            return cls._local(value, mounts)
        return value

    def execute(self, job: dict[str, Any]) -> int:
        name = job["metadata"]["name"]
        workdir = self.root / "node" / name
        workdir.mkdir(parents=True, exist_ok=True)
        mounts = self._mounts(job, workdir)
        (container,) = job["spec"]["template"]["spec"]["containers"]
        # the worker reads mount paths from its config: map them as the kubelet's mounts would
        for local in mounts.values():
            for file in local.glob("*.yaml"):
                doc = self._map_paths(yaml.safe_load(file.read_text()), mounts)
                file.write_text(yaml.safe_dump(doc))
        command = [*container.get("command", []), *container.get("args", [])]
        assert command[0] == "sift-worker", command
        argv = [
            sys.executable,
            "-c",
            "from sift_worker.cli import main; raise SystemExit(main())",
            *[self._local(a, mounts) for a in command[1:]],
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIFT_")}
        for item in container.get("env", []):
            env[item["name"]] = self._local(str(item.get("value", "")), mounts)
        env.update(self.env)

        # the kubelet's terminationMessagePath, copied into the pod's status when it ends
        termination_log = workdir / "termination-log"
        termination_log.write_text("")
        env["SIFT_TERMINATION_LOG"] = str(termination_log)

        pod = self.ctl.create_pod(job)
        self.ctl.run(job, pod)
        proc = subprocess.run(
            argv,
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
        )
        self.logs[name] = proc.stdout + proc.stderr
        self.outcomes[name] = proc.returncode
        message = termination_log.read_text()[:4096]
        if proc.returncode == 0:
            self.ctl.succeed(job, pod, message)
        else:
            self.ctl.fail(job, pod, exit_code=proc.returncode, message=message)
        return proc.returncode
