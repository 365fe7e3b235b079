"""The emulator on 127.0.0.1 in its own thread and event loop, a kubeconfig for it, and a
small synchronous client for the tests (what ``kubectl`` does, through the same HTTP API).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import kmock
import yaml

from harness.emulator import SiftEmulator

T = TypeVar("T")

PATHS = {
    ("sift.dev/v1alpha1", "SelectionRun"): "selectionruns",
    ("batch/v1", "Job"): "jobs",
    ("v1", "Pod"): "pods",
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Secret"): "secrets",
    ("v1", "Event"): "events",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("cilium.io/v2", "CiliumNetworkPolicy"): "ciliumnetworkpolicies",
    ("kopf.dev/v1", "KopfPeering"): "kopfpeerings",
    ("kopf.dev/v1", "ClusterKopfPeering"): "clusterkopfpeerings",
}
KINDS = {plural: key for key, plural in PATHS.items()}


class EmulatorServer:
    """``with EmulatorServer() as srv:`` serves ``srv.emulator`` on ``srv.url``."""

    def __init__(self) -> None:
        self.emulator = SiftEmulator()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="kmock", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> EmulatorServer:
        self._thread.start()
        if not self._ready.wait(20) or self._error is not None:
            raise RuntimeError(f"emulator did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.emulator, kmock.Server(self.emulator, host="127.0.0.1") as server:
            self.port = server.port
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine on the emulator's loop (e.g. to read its objects consistently)."""
        assert self._loop is not None
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(fn(), self._loop)
        return future.result(10)

    def write_kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
            "current-context": "kmock",
        }
        path.write_text(yaml.safe_dump(config))
        return path


def _path(api_version: str, plural: str, namespace: str | None, name: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    out = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    return out + (f"/{name}" if name else "")


class Kube:
    """A synchronous test client: create, get, list, patch, delete, wait."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    def close(self) -> None:
        self.http.close()

    @staticmethod
    def _check(resp: httpx.Response) -> dict[str, Any]:
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, resp.text)
        data: dict[str, Any] = resp.json()
        return data

    def create(self, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        plural = PATHS[(obj["apiVersion"], obj["kind"])]
        ns = namespace or obj.get("metadata", {}).get("namespace")
        return self._check(self.http.post(_path(obj["apiVersion"], plural, ns), json=obj))

    def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        api_version, _ = KINDS[plural]
        resp = self.http.get(_path(api_version, plural, namespace, name))
        if resp.status_code == 404:
            return None
        return self._check(resp)

    def list(
        self, plural: str, namespace: str | None = None, labels: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        api_version, _ = KINDS[plural]
        items: list[dict[str, Any]] = self._check(
            self.http.get(_path(api_version, plural, namespace))
        )["items"]
        if labels:  # the emulator ignores label selectors: filter here
            items = [
                i
                for i in items
                if all(i["metadata"].get("labels", {}).get(k) == v for k, v in labels.items())
            ]
        return items

    def patch(
        self,
        plural: str,
        namespace: str | None,
        name: str,
        patch: dict[str, Any],
        *,
        status: bool = False,
    ) -> dict[str, Any]:
        api_version, _ = KINDS[plural]
        path = _path(api_version, plural, namespace, name) + ("/status" if status else "")
        headers = {"Content-Type": "application/merge-patch+json"}
        return self._check(self.http.patch(path, json=patch, headers=headers))

    def delete(self, plural: str, namespace: str | None, name: str) -> None:
        api_version, _ = KINDS[plural]
        self._check(self.http.delete(_path(api_version, plural, namespace, name)))

    def wait_for(
        self,
        fn: Callable[[], T | None],
        what: str,
        timeout: float = 20.0,
        interval: float = 0.05,
    ) -> T:
        """Poll ``fn`` until it returns something truthy; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        last: T | None = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


class ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status}: {text[:500]}")
        self.status = status
