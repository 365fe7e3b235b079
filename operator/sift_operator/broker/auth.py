"""Who is asking: the worker's projected ServiceAccount token, checked by TokenReview.

The worker mounts a token bound to its pod with an audience of Sift's own
(``settings.token_audience``): a token for the API server, or for another audience, is
refused. The API server says whether the token is valid, for that audience, and whose
it is (``system:serviceaccount:<namespace>:<name>``). Positive answers are cached
briefly (by a hash of the token, never the token), so a worker's burst of requests
costs one review; refusals are not cached.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

from sift_operator.broker.metrics import TOKEN_REVIEWS

__all__ = ["AuthError", "Identity", "TokenReviewer"]

SA_PREFIX = "system:serviceaccount:"
TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


class _Requester(Protocol):
    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]: ...


class AuthError(Exception):
    """The token is missing, invalid, for another audience or not a ServiceAccount's."""


@dataclass(frozen=True)
class Identity:
    namespace: str
    service_account: str
    pod: str | None = None


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
        pods = (user.get("extra") or {}).get("authentication.kubernetes.io/pod-name") or [None]
        ident = Identity(namespace, name, pods[0])
        if len(self._cache) >= self.max_entries:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
        self._cache[digest] = (now + self.ttl, ident)
        return ident
