"""No signed URL or token reaches a log line, in text or JSON, message or traceback."""

from __future__ import annotations

import io
import json
import logging

import pytest
from sift_worker.logs import JsonFormatter, RedactingFilter, TextFormatter, redact

CANARY_SIG = "CANARYsig0123456789abcdef"
SIGNED = f"https://bucket.s3.amazonaws.com/a/b.jpg?X-Amz-Signature={CANARY_SIG}&X-Amz-Credential=AKIACANARY"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"GET {SIGNED} failed", "GET https://bucket.s3.amazonaws.com/a/b.jpg?<redacted> failed"),
        ("see http://127.0.0.1:9000/x?sig=abc.", "see http://127.0.0.1:9000/x?<redacted>"),
        ("no url here?really", "no url here?really"),
        ("plain https://host/path stays", "plain https://host/path stays"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_canary_never_in_output(formatter: logging.Formatter) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(f"canary-{id(formatter)}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("fetch %s", SIGNED)
    try:
        raise RuntimeError(f"HTTP 403 for {SIGNED}")
    except RuntimeError:
        logger.exception("download failed")
    out = stream.getvalue()
    assert CANARY_SIG not in out
    assert "AKIACANARY" not in out
    assert out.count("?<redacted>") == 2  # the warning, and the exception in the traceback
    if isinstance(formatter, JsonFormatter):
        records = [json.loads(line) for line in out.strip().splitlines() if line.startswith("{")]
        assert records[0]["message"].startswith("fetch https://bucket")
