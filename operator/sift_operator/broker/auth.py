"""Who is asking: the worker's projected ServiceAccount token, checked by TokenReview.

The worker mounts a token bound to its pod with an audience of Sift's own
(``settings.token_audience``): a token for the API server, or for another audience, is
refused. The API server says whether the token is valid, for that audience, and whose
it is (``system:serviceaccount:<namespace>:<name>``) and, for a token bound to a pod,
which pod (``authentication.kubernetes.io/pod-name`` / ``pod-uid``). Positive answers
are cached briefly (by a hash of the token, never the token), so a worker's burst of
requests costs one review; refusals are not cached.

:class:`PodBinding` then checks that pod: it must exist with that uid, be controlled by
the run's Job (or its report Job) and carry the run's uid label. A token copied out of
a finished pod, or minted for some other pod that uses the ServiceAccount, gets nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sift_operator.broker.metrics import TOKEN_REVIEWS
from sift_operator.children.common import RUN_UID_LABEL
from sift_operator.children.reportjob import report_job_name
from sift_operator.names import child_name

__all__ = [
    "AuthError",
    "Identity",
    "PodBinding",
    "PodLookupError",
    "PodRefusedError",
    "TokenReviewer",
    "run_job_names",
]

SA_PREFIX = "system:serviceaccount:"
TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
POD_NAME_CLAIM = "authentication.kubernetes.io/pod-name"
POD_UID_CLAIM = "authentication.kubernetes.io/pod-uid"

Obj = Mapping[str, Any]
PodIndex = Mapping[tuple[str, str], Iterable[Obj]]  # (namespace, Job name) -> its pods


class _Requester(Protocol):
    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]: ...


class _Getter(Protocol):
    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None: ...


class AuthError(Exception):
    """The token is missing, invalid, for another audience or not a ServiceAccount's."""


@dataclass(frozen=True)
class Identity:
    namespace: str
    service_account: str
    pod: str | None = None  # the pod a bound token was issued for (its claims)
    pod_uid: str | None = None


class TokenReviewer:
    def __init__(
        self, kube: _Requester, audience: str, *, ttl: float = 30.0, max_entries: int = 4096
    ) -> None:
        self.kube = kube
        self.audience = audience
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, Identity]] = {}
        self.reviews = 0  # TokenReviews sent (tests, metrics)

    async def identify(self, token: str) -> Identity:
        if not token or len(token) > 16384:
            raise AuthError("no bearer token")
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        self.reviews += 1
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        try:
            answer = await self.kube.request("POST", TOKENREVIEW_PATH, review)
        except Exception as exc:  # the API error never holds the token (it is in the body)
            TOKEN_REVIEWS.labels("error").inc()
            raise AuthError(f"the token could not be reviewed ({type(exc).__name__})") from None
        status = answer.get("status") or {}
        TOKEN_REVIEWS.labels("authenticated" if status.get("authenticated") else "refused").inc()
        if not status.get("authenticated"):
            raise AuthError("the token is not valid")
        audiences = status.get("audiences")
        if audiences is not None and self.audience not in audiences:
            raise AuthError(f"the token is not for audience {self.audience!r}")
        user = status.get("user") or {}
        username = str(user.get("username") or "")
        if not username.startswith(SA_PREFIX) or username.count(":") != 3:
            raise AuthError("the token is not a ServiceAccount's")
        namespace, name = username[len(SA_PREFIX) :].split(":", 1)
        extra = user.get("extra") or {}
        ident = Identity(
            namespace, name, _claim(extra, POD_NAME_CLAIM), _claim(extra, POD_UID_CLAIM)
        )
        if len(self._cache) >= self.max_entries:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
        self._cache[digest] = (now + self.ttl, ident)
        return ident


def _claim(extra: Mapping[str, Any], name: str) -> str | None:
    values = extra.get(name)
    if isinstance(values, list) and values and isinstance(values[0], str) and values[0]:
        return values[0]
    return None


def run_job_names(run_name: str) -> frozenset[str]:
    """The Jobs whose pods may act for run ``run_name``: the worker's and the report's."""
    return frozenset({child_name(run_name), report_job_name(run_name)})


class PodRefusedError(Exception):
    """The token's pod is not a live pod of the run's Job (the reason says why)."""


class PodLookupError(Exception):
    """The API could not be asked about the token's pod (not cached: retry)."""


class PodBinding:
    """The token's pod must exist, have the token's pod uid, be controlled by one of the
    run's Jobs and carry the run's uid label.

    Pods come from the operator's own index of its pods (kopf, in the same process;
    ``(namespace, Job name) -> pods``); a pod the index does not hold yet (just created,
    or the broker runs without kopf) is read from the API (``pods get``). Verdicts,
    refusals included, are cached per (identity, run) for ``ttl`` (the token review's),
    so a burst of requests costs no lookup and a wrong token no more than one per ``ttl``.
    """

    def __init__(
        self,
        kube: _Getter,
        pods: PodIndex | None = None,
        *,
        ttl: float = 30.0,
        max_entries: int = 4096,
    ) -> None:
        self.kube = kube
        self.pods = pods
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[tuple[Identity, str, str], tuple[float, str | None]] = {}
        self.lookups = 0  # pods read from the API (tests)

    async def check(self, ident: Identity, run_name: str, run_uid: str) -> None:
        """Raise PodRefusedError (or PodLookupError) unless the token's pod may act for
        run ``ident.namespace/run_name`` (uid ``run_uid``)."""
        key = (ident, run_name, run_uid)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            verdict = hit[1]
        else:
            verdict = await self._verdict(ident, run_name, run_uid)
            if len(self._cache) >= self.max_entries:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= self.max_entries:
                    self._cache.clear()
            self._cache[key] = (now + self.ttl, verdict)
        if verdict is not None:
            raise PodRefusedError(verdict)

    async def _verdict(self, ident: Identity, run_name: str, run_uid: str) -> str | None:
        """None when the pod may act for the run, else the reason it may not."""
        if not ident.pod or not ident.pod_uid:
            return "the token is not bound to a pod (a projected ServiceAccount token is needed)"
        jobs = run_job_names(run_name)
        pod = self._indexed(ident.namespace, ident.pod, jobs)
        if pod is None:
            self.lookups += 1
            try:
                pod = await self.kube.get("v1", "Pod", ident.namespace, ident.pod)
            except Exception as exc:  # the error names the pod at most, never the token
                raise PodLookupError(
                    f"pod {ident.namespace}/{ident.pod} could not be read ({type(exc).__name__})"
                ) from None
        where = f"the token's pod {ident.namespace}/{ident.pod}"
        if pod is None:
            return f"{where} does not exist"
        meta = pod.get("metadata") or {}
        if meta.get("uid") != ident.pod_uid:
            return f"{where} is another pod than the token was issued for (uid differs)"
        owner = _controller(meta, "Job")
        if owner not in jobs:
            owned = f"Job {owner}" if owner else "no Job"
            return f"{where} is controlled by {owned}, not by run {run_name}'s Job"
        if (meta.get("labels") or {}).get(RUN_UID_LABEL) != run_uid:
            return f"{where} belongs to an earlier run of the name {run_name} ({RUN_UID_LABEL})"
        # a pod being deleted keeps its access while it terminates (it may still flush a
        # checkpoint); one whose containers have all ended makes no requests of its own
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return f"{where} has finished"
        return None

    def _indexed(self, namespace: str, pod_name: str, jobs: Iterable[str]) -> Obj | None:
        if self.pods is None:
            return None
        for job in jobs:
            for pod in self.pods.get((namespace, job)) or ():
                if (pod.get("metadata") or {}).get("name") == pod_name:
                    return pod
        return None


def _controller(meta: Mapping[str, Any], kind: str) -> str | None:
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == kind:
            return str(ref.get("name") or "")
    return None
