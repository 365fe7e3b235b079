"""A SigV4 presigned-URL verifier built on botocore's own signer (moto checks no signatures).

It recomputes the signature of a presigned URL with the secret key, from the URL's
own ``X-Amz-*`` parameters (date, expiry, scope, signed headers), and compares it
with ``X-Amz-Signature``; then it checks the expiry. Any change to the method, the
host, the key or any signed parameter changes the signature.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


class Refused(Exception):  # noqa: N818 - what an S3 server answers
    pass


def verify(method: str, url: str, key_id: str, secret: str, now: datetime | None = None) -> None:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    params = dict(query)
    try:
        signature = params["X-Amz-Signature"]
        amz_date = params["X-Amz-Date"]
        expires = int(params["X-Amz-Expires"])
        scope = params["X-Amz-Credential"].split("/")
    except (KeyError, ValueError) as exc:
        raise Refused(f"not a SigV4 presigned URL: {exc}") from None
    if scope[0] != key_id:
        raise Refused("unknown access key")
    region = scope[2]
    unsigned = urlunsplit(
        parts._replace(query=urlencode([(k, v) for k, v in query if k != "X-Amz-Signature"]))
    )
    request = AWSRequest(method=method, url=unsigned)
    request.context["timestamp"] = amz_date
    auth = S3SigV4QueryAuth(Credentials(key_id, secret), "s3", region, expires=expires)
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, signature):
        raise Refused("SignatureDoesNotMatch")
    signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if (now or datetime.now(UTC)) > signed_at + timedelta(seconds=expires):
        raise Refused("Request has expired")
