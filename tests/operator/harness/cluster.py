"""One emulated cluster: the emulator, a client, the test's Job controller and a real
operator process; plus helpers that read like ``kubectl`` sessions."""

from __future__ import annotations

import contextlib
import copy
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.controller import JobController
from harness.operator import OperatorProcess
from harness.server import EmulatorServer, Kube


def selection_run(name: str, namespace: str, **spec_overrides: Any) -> dict[str, Any]:
    """A small valid SelectionRun (a PVC datasource, the tiny model) with overrides merged."""
    spec: dict[str, Any] = {
        "datasource": {
            "input": {"volume": {"claimName": "data", "path": "images"}},
            "output": {"volume": {"claimName": "data", "path": "out"}},
        },
        "input": {"type": "images", "embeddings": {"model": "tiny"}},
        "selection": {"nSamples": 5},
        "worker": {"resources": {"gpu": 1, "cpu": "2", "memory": "4Gi"}},
    }
    _merge(spec, spec_overrides)
    return {
        "apiVersion": "sift.dev/v1alpha1",
        "kind": "SelectionRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def condition(run: Mapping[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((run or {}).get("status") or {}).get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return {}


@dataclass
class Cluster:
    server: EmulatorServer
    kube: Kube
    ctl: JobController
    operator: OperatorProcess
    metrics_url: str = ""

    @property
    def emulator(self) -> Any:
        return self.server.emulator

    def run(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.kube.get("selectionruns", namespace, name)

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.kube.get("jobs", namespace, f"sift-{name}")

    def wait_job(self, namespace: str, name: str, timeout: float = 15) -> dict[str, Any]:
        return self.kube.wait_for(
            lambda: self.job(namespace, name), f"Job of {namespace}/{name}", timeout
        )

    def wait_run(
        self,
        namespace: str,
        name: str,
        check: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 15,
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            run = self.run(namespace, name)
            return run if run is not None and check(run) else None

        try:
            return self.kube.wait_for(probe, f"{namespace}/{name}: {what}", timeout)
        except AssertionError as exc:
            status = (self.run(namespace, name) or {}).get("status")
            raise AssertionError(
                f"{exc}\nstatus: {status}\n{self.operator.logs()[-2500:]}"
            ) from None

    def wait_phase(
        self, namespace: str, name: str, phase: str, timeout: float = 15
    ) -> dict[str, Any]:
        return self.wait_run(
            namespace,
            name,
            lambda r: (r.get("status") or {}).get("phase") == phase,
            f"phase {phase}",
            timeout,
        )

    def wait_reason(
        self, namespace: str, name: str, type_: str, reason: str, timeout: float = 15
    ) -> dict[str, Any]:
        return self.wait_run(
            namespace,
            name,
            lambda r: condition(r, type_).get("reason") == reason,
            f"{type_} reason {reason}",
            timeout,
        )

    def events(self, namespace: str) -> list[dict[str, Any]]:
        return self.kube.list("events", namespace)

    def reasons(self, namespace: str, name: str) -> list[str]:
        return [
            e["reason"]
            for e in self.events(namespace)
            if e.get("involvedObject", {}).get("name") == name
        ]

    def wait_reasons(
        self, namespace: str, name: str, *wanted: str, timeout: float = 15
    ) -> list[str]:
        """The run's Event reasons once all of ``wanted`` are among them: the operator
        posts Events after the status write that shows the transition."""
        return self.kube.wait_for(
            lambda: (got := self.reasons(namespace, name)) and set(wanted) <= set(got) and got,
            f"Events {sorted(wanted)} of {name}",
            timeout,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def start_cluster(
    tmp: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
    standalone: bool = True,
) -> Iterator[Cluster]:
    with EmulatorServer() as server:
        kube = Kube(server.url)
        kubeconfig = server.write_kubeconfig(tmp / "kubeconfig.yaml")
        port = free_port()
        operator = OperatorProcess(
            kubeconfig,
            tmp / "operator.log",
            env=env,
            args=(*args, "--metrics-port", str(port), "--metrics-address", "127.0.0.1"),
            standalone=standalone,
        )
        try:
            operator.start()
            operator.wait_for_log("sift operator started", 30)
            yield Cluster(
                server, kube, JobController(kube), operator, f"http://127.0.0.1:{port}/metrics"
            )
        finally:
            operator.stop()
            kube.close()
