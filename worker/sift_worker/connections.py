"""Keep-alive HTTP/1.1 connections for signed storage URLs (the standard library's
``http.client``, pooled).

Why not httpx on this path: a signed GET of a 50 kB image costs about 1.7 ms of the
worker's CPU through httpx (h11's pure-Python parser, httpcore's pool locks) and
about 0.4 ms through ``http.client``, whose body read is one C loop
(``benchmarks/bench_fetch.py`` measures both in the same run). On a worker that
decodes and embeds on the same cores, that difference is a third of the time an
image takes. httpx stays the client of the broker and the results API, where a few
requests a second do not matter.

This module only moves bytes: the egress guard, retries, URL refresh and the
messages live in :mod:`sift_worker.fetch`. Connections are direct (no proxy, as the
worker's httpx transports before it) and verify TLS with httpx's own default context
(certifi, ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``), so both clients trust the same CAs.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections import defaultdict
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urlsplit

__all__ = ["BodyTooLargeError", "ConnectionPool", "Reply", "TransportError"]

_READ_CHUNK = 1 << 20
_ERROR_BODY_LIMIT = 64 << 10  # a refusal's body is read (and the connection kept) up to this
_STALE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


class TransportError(Exception):
    """The exchange failed before a full answer arrived; ``kind`` names how, in the
    vocabulary of httpx's exceptions (``ConnectError``, ``ReadTimeout``, ...), so
    messages read the same whichever client made the request."""

    def __init__(self, kind: str, timeout: bool = False) -> None:
        super().__init__(kind)
        self.kind = kind
        self.timeout = timeout


class BodyTooLargeError(Exception):
    """The body is (or declares to be) over the caller's limit; ``size`` as far as known."""

    def __init__(self, size: str) -> None:
        super().__init__(size)
        self.size = size


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Message  # case-insensitive ``get``
    body: bytes


_Key = tuple[str, str, int]


class ConnectionPool:
    """Idle keep-alive connections per (scheme, host, port); thread-safe.

    The caller bounds how many requests run at once; the pool keeps at most
    ``max_idle`` idle connections per origin and closes the rest.
    """

    def __init__(
        self,
        *,
        timeout: float,
        connect_timeout: float,
        max_idle: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_idle = max(1, max_idle)
        self._ssl = ssl_context
        self._idle: defaultdict[_Key, list[http.client.HTTPConnection]] = defaultdict(list)
        self._lock = threading.Lock()
        self._closed = False

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:  # built on the first https request: plain-http runs never pay
            import httpx

            self._ssl = httpx.create_ssl_context()
        return self._ssl

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None = None,
        max_bytes: int | None = None,
    ) -> Reply:
        """Send one request and read the whole answer.

        Raises :class:`TransportError` (connect/read errors, timeouts, a malformed
        answer) or :class:`BodyTooLargeError`; an HTTP error status is a normal
        :class:`Reply`. A keep-alive connection the server had closed is replaced once,
        transparently: signed GETs and PUTs are idempotent.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        key = (scheme, host, port)
        conn = self._take(key)
        reused = conn is not None
        if conn is None:
            conn = self._connect(key)
        try:
            try:
                resp = self._send(conn, method, target, headers, body)
            except _STALE:
                if not reused:
                    raise
                conn.close()  # the server closed it while idle: once more on a fresh one
                conn = self._connect(key)
                resp = self._send(conn, method, target, headers, body)
            reply, keep = self._read(resp, method, max_bytes)
        except BodyTooLargeError:
            conn.close()
            raise
        except TimeoutError:
            conn.close()
            raise TransportError("ReadTimeout", timeout=True) from None
        except (http.client.HTTPException, OSError) as exc:
            conn.close()
            kind = "RemoteProtocolError" if isinstance(exc, http.client.HTTPException) else ""
            raise TransportError(kind or "ReadError") from None
        except BaseException:
            conn.close()
            raise
        if keep:
            self._give_back(key, conn)
        else:
            conn.close()
        return reply

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()

    # --- internals ----------------------------------------------------------------------

    def _take(self, key: _Key) -> http.client.HTTPConnection | None:
        with self._lock:
            conns = self._idle.get(key)
            return conns.pop() if conns else None

    def _give_back(self, key: _Key, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            conns = self._idle[key]
            if not self._closed and len(conns) < self.max_idle:
                conns.append(conn)
                return
        conn.close()

    def _connect(self, key: _Key) -> http.client.HTTPConnection:
        scheme, host, port = key
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(
                host, port, timeout=self.connect_timeout, context=self._context()
            )
        elif scheme == "http":
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        else:
            raise TransportError("UnsupportedProtocol")
        try:
            conn.connect()
        except TimeoutError:
            conn.close()
            raise TransportError("ConnectTimeout", timeout=True) from None
        except OSError:  # refused, unreachable, DNS, a TLS handshake failure
            conn.close()
            raise TransportError("ConnectError") from None
        assert conn.sock is not None
        conn.sock.settimeout(self.timeout)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    @staticmethod
    def _send(
        conn: http.client.HTTPConnection,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
    ) -> http.client.HTTPResponse:
        conn.putrequest(method, target)  # sends Accept-Encoding: identity, the stored bytes
        for name, value in headers.items():
            conn.putheader(name, value)
        if body is not None or method in ("PUT", "POST"):
            conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        return conn.getresponse()

    @staticmethod
    def _read(
        resp: http.client.HTTPResponse, method: str, max_bytes: int | None
    ) -> tuple[Reply, bool]:
        status = resp.status
        declared = resp.getheader("content-length")
        limit = max_bytes if status < 300 else _ERROR_BODY_LIMIT
        if method == "HEAD":
            data = b""
        elif declared is not None and declared.isdigit():
            if limit is not None and int(declared) > limit:
                if status < 300:
                    raise BodyTooLargeError(f"{declared} bytes")
                resp.close()  # a huge error body: not worth reading, nor the connection
                return Reply(status, resp.msg, b""), False
            data = resp.read()  # exactly `declared` bytes, one C loop
            if len(data) != int(declared):
                raise http.client.IncompleteRead(data, int(declared) - len(data))
        else:  # chunked or until close: bounded reads
            buf = bytearray()
            while chunk := resp.read(_READ_CHUNK):
                buf += chunk
                if limit is not None and len(buf) > limit:
                    if status < 300:
                        raise BodyTooLargeError(f"over {limit} bytes")
                    break
            data = bytes(buf)
        keep = not resp.will_close and resp.isclosed()
        return Reply(status, resp.msg, data), keep
