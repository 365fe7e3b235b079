"""Deterministic, length-safe names and label values for a run's children.

Run names may be 253 characters (a DNS subdomain); children are capped at 63 (a DNS
label: Job names end up in the pods' ``batch.kubernetes.io/job-name`` label). A name
that does not fit keeps a readable prefix and gains a hash of the full name, so two
long names never collide and the same run always gets the same names.
"""

from __future__ import annotations

import hashlib
import re

PREFIX = "sift-"
MAX_LABEL = 63
_HASH_LEN = 10
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_LEN]


def fit(text: str, limit: int = MAX_LABEL) -> str:
    """``text`` if it fits in ``limit``, else a prefix, ``-`` and a hash of all of it.

    The result is a valid DNS label when ``text`` is made of DNS-subdomain characters:
    dots become dashes, and a name with dots gets the hash too ("a.b" and "a-b" differ).
    """
    if len(text) <= limit and "." not in text:
        return text
    head = text[: limit - _HASH_LEN - 1].replace(".", "-").rstrip("-")
    return f"{head}-{_digest(text)}"


def child_name(run_name: str) -> str:
    """The name of every child object of run ``run_name`` (one per kind)."""
    return fit(PREFIX + run_name)


def label_value(text: str) -> str:
    """A valid label value (<= 63 chars) standing for ``text``, deterministic."""
    if len(text) <= MAX_LABEL and _LABEL_VALUE_RE.match(text):
        return text
    cleaned = re.sub(r"[^-A-Za-z0-9_.]", "-", text)[: MAX_LABEL - _HASH_LEN - 1]
    head = cleaned.strip("-_.") or "x"
    return f"{head}-{_digest(text)}"
