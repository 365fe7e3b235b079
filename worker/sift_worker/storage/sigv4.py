"""SigV4 query signing of S3 GET URLs without botocore's per-call machinery.

botocore's ``generate_presigned_url`` costs about 0.4 ms a URL (endpoint rules, event
hooks, request serialisation), which the broker pays for every object of every run and
a local worker for every fetch. For a GET under one bucket only the path and the time
change between two URLs, so :class:`FastGetSigner` learns the rest (scheme, host, the
bucket's path, the credential scope) from one URL botocore signed, re-computes that
URL's signature itself and is used only if it matches botocore's byte for byte; on any
doubt it says so and the caller keeps using botocore.

The signing itself is the documented algorithm (AWS Signature Version 4, query
parameters, ``UNSIGNED-PAYLOAD``); the signing key is derived once a day.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
_KNOWN = {
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Security-Token",
    "X-Amz-Signature",
}


@dataclass(frozen=True, repr=False)
class Keys:
    """Frozen credentials (what botocore's ``get_frozen_credentials`` returns)."""

    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:
        return "Keys(<redacted>)"


def _quote(text: str, safe: str = "-_.~") -> str:
    return quote(text, safe=safe)


def quote_key(key: str) -> str:
    """An object key as S3 URL paths carry it (``/`` kept, everything else RFC 3986)."""
    return _quote(key, safe="/-_.~")


class FastGetSigner:
    """Presigned GET URLs for keys of one bucket, learnt from one botocore URL."""

    def __init__(self, scheme: str, host: str, bucket_path: str, region: str, service: str):
        self.scheme, self.host, self.bucket_path = scheme, host, bucket_path
        self.region, self.service = region, service
        self._day_key: tuple[str, str, bytes] | None = None  # (day, secret digest, key)
        # the query of the last second's URLs: the same for every key (quoting it was
        # half of a URL's cost)
        self._query: tuple[tuple[str, str, int, str | None], str, str] | None = None

    @classmethod
    def learn(cls, reference_url: str, full_key: str, keys: Keys) -> FastGetSigner | None:
        """A signer for the reference URL's bucket, or None where it would not give the
        very URL botocore gave (an unusual endpoint, parameters it does not know)."""
        parts = urlsplit(reference_url)
        quoted = quote_key(full_key)
        if not parts.path.endswith("/" + quoted) or parts.fragment:
            return None
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if set(query) - _KNOWN or query.get("X-Amz-Algorithm") != ALGORITHM:
            return None
        if query.get("X-Amz-SignedHeaders") != "host":
            return None
        if (query.get("X-Amz-Security-Token") or None) != keys.token:
            return None
        scope = query.get("X-Amz-Credential", "").split("/")
        if len(scope) != 5 or scope[0] != keys.access_key or scope[4] != "aws4_request":
            return None
        try:
            when = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            expires = int(query["X-Amz-Expires"])
        except (KeyError, ValueError):
            return None
        signer = cls(parts.scheme, parts.netloc, parts.path[: -len(quoted)], scope[2], scope[3])
        if signer.sign(full_key, expires, keys, when) != reference_url:
            return None
        return signer

    def sign(self, full_key: str, expires_seconds: int, keys: Keys, now: datetime) -> str:
        stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        query, canonical_query = self._query_of(stamp, scope, expires_seconds, keys)
        path = self.bucket_path + quote_key(full_key)
        canonical = f"GET\n{path}\n{canonical_query}\nhost:{self.host}\n\nhost\nUNSIGNED-PAYLOAD"
        to_sign = "\n".join(
            (ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest())
        )
        signature = hmac.digest(self._signing_key(day, keys), to_sign.encode(), "sha256").hex()
        return f"{self.scheme}://{self.host}{path}?{query}&X-Amz-Signature={signature}"

    def _query_of(
        self, stamp: str, scope: str, expires_seconds: int, keys: Keys
    ) -> tuple[str, str]:
        """The URL's query (its parameters in botocore's order) and its canonical form."""
        wanted = (stamp, keys.access_key, expires_seconds, keys.token)
        cached = self._query
        if cached is not None and cached[0] == wanted:
            return cached[1], cached[2]
        params = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{keys.access_key}/{scope}"),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(expires_seconds)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if keys.token:
            params.append(("X-Amz-Security-Token", keys.token))
        encoded = [f"{_quote(k)}={_quote(v)}" for k, v in params]  # botocore's URL order
        query, canonical_query = "&".join(encoded), "&".join(sorted(encoded))
        self._query = (wanted, query, canonical_query)  # strings: safe to share across threads
        return query, canonical_query

    def _signing_key(self, day: str, keys: Keys) -> bytes:
        digest = hashlib.sha256(keys.secret_key.encode()).hexdigest()
        cached = self._day_key
        if cached is not None and cached[0] == day and cached[1] == digest:
            return cached[2]
        key = _hmac(f"AWS4{keys.secret_key}".encode(), day)
        for part in (self.region, self.service, "aws4_request"):
            key = _hmac(key, part)
        self._day_key = (day, digest, key)
        return key


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()
