"""Keep-alive HTTP/1.1 connections for signed storage URLs: libcurl through pycurl.

Why not httpx on this path: a worker decodes and embeds on the same cores that fetch,
and per 55 kB object httpx costs about 1.5 ms of CPU (h11's pure-Python parser,
httpcore's pool locks), the standard library's ``http.client`` about 0.5 ms (its
header parser is the ``email`` package) and libcurl about 0.2 ms, with the GIL
released while it waits (``benchmarks/bench_fetch.py`` measures them in one run).
httpx stays the client of the broker and the results API, a few requests a second.

This module only moves bytes: the egress guard, retries, URL refresh and the messages
live in :mod:`sift_worker.fetch`. Each request is configured from scratch on a pooled
handle (its kept-alive connection survives the reset): HTTP and HTTPS only, no
redirects, no proxy (the environment's proxy variables are ignored, as by the worker's
httpx transports), TLS verified against the same CAs as httpx's default (certifi, or
``SSL_CERT_FILE`` / ``SSL_CERT_DIR``). A dead kept-alive connection is replaced by
libcurl itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import certifi
import pycurl

__all__ = ["BodyTooLargeError", "ConnectionPool", "Exchange", "Reply", "TransportError"]

_BUFFER = 256 << 10  # bytes per write callback (libcurl's default is 16 kB)
_ERROR_BODY_LIMIT = 64 << 10  # a refusal's body is kept up to this (read up to max_bytes)

_CONNECT_ERRORS = {
    pycurl.E_COULDNT_RESOLVE_HOST,
    pycurl.E_COULDNT_CONNECT,
    pycurl.E_SSL_CONNECT_ERROR,
    pycurl.E_PEER_FAILED_VERIFICATION,
    pycurl.E_SSL_CACERT,
    pycurl.E_SSL_CACERT_BADFILE,
    pycurl.E_SSL_CERTPROBLEM,
}
# 8 is CURLE_WEIRD_SERVER_REPLY (pycurl still calls it E_FTP_WEIRD_SERVER_REPLY)
_PROTOCOL_ERRORS = {pycurl.E_FTP_WEIRD_SERVER_REPLY, pycurl.E_UNSUPPORTED_PROTOCOL}


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
    headers: Mapping[str, str]  # retry-after (seconds), if the server asked for a wait
    body: bytes


class Exchange:
    """The write callback's state for one request.

    No header callback: libcurl would call into Python (taking the GIL) for every header
    line, a dozen times an object, and on a busy core each is a thread switch. A declared
    Content-Length over the limit is refused by libcurl itself (``MAXFILESIZE``); the
    status is only known after the transfer, so an error body is cut to its limit then.
    """

    __slots__ = ("chunks", "limit", "received", "too_large")

    def __init__(self, max_bytes: int | None) -> None:
        self.limit = max_bytes
        self.chunks: list[bytes] = []
        self.received = 0
        self.too_large = ""

    def write(self, data: bytes) -> int | None:
        self.received += len(data)
        if self.limit is not None and self.received > self.limit:
            self.too_large = f"over {self.limit} bytes"
            return 0
        self.chunks.append(data)
        return None


class ConnectionPool:
    """Idle libcurl handles (each with its kept-alive connections); thread-safe.

    The caller bounds how many requests run at once; at most ``max_idle`` handles are
    kept between requests.
    """

    def __init__(self, *, timeout: float, connect_timeout: float, max_idle: int) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_idle = max(1, max_idle)
        self._idle: list[pycurl.Curl] = []
        self._lock = threading.Lock()
        self._closed = False
        # httpx's rule (httpx.create_ssl_context): SSL_CERT_FILE, else SSL_CERT_DIR, else certifi
        self._ca_file = os.environ.get("SSL_CERT_FILE") or None
        self._ca_dir = None if self._ca_file else os.environ.get("SSL_CERT_DIR") or None
        if not (self._ca_file or self._ca_dir):
            self._ca_file = certifi.where()

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        max_bytes: int | None = None,
    ) -> Reply:
        """Send one request and read the whole answer.

        Raises :class:`TransportError` (connect/read errors, timeouts, a malformed
        answer) or :class:`BodyTooLargeError`; an HTTP error status is a normal
        :class:`Reply`.
        """
        handle = self._take()
        exchange = Exchange(max_bytes)
        try:
            self._configure(handle, method, url, headers, body, exchange)
            handle.perform()
        except pycurl.error as exc:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1
            connected = handle.getinfo(pycurl.CONNECT_TIME) > 0
            self._discard(handle)
            if exchange.too_large:
                raise BodyTooLargeError(exchange.too_large) from None
            if code == pycurl.E_FILESIZE_EXCEEDED:  # the declared length; libcurl keeps none
                raise BodyTooLargeError(f"over {max_bytes} bytes") from None
            raise _transport_error(code, connected) from None
        except BaseException:
            self._discard(handle)
            raise
        status = int(handle.getinfo(pycurl.RESPONSE_CODE))
        wait = int(handle.getinfo(pycurl.RETRY_AFTER))  # seconds, from a delta or a date
        self._give_back(handle)
        headers = {"retry-after": str(wait)} if wait > 0 else {}
        body = b"".join(exchange.chunks)
        return Reply(status, headers, body if status < 300 else body[:_ERROR_BODY_LIMIT])

    def prepare_get(
        self, handle: pycurl.Curl, url: str, headers: Mapping[str, str], max_bytes: int | None
    ) -> Exchange:
        """Configure ``handle`` for a GET as :meth:`request` would, for a caller that
        drives it itself (a ``CurlMulti``: :mod:`sift_worker.readahead`)."""
        exchange = Exchange(max_bytes)
        self._configure(handle, "GET", url, headers, None, exchange)
        return exchange

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for handle in idle:
            handle.close()

    # --- internals ----------------------------------------------------------------------

    def _configure(
        self,
        handle: pycurl.Curl,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        exchange: Exchange,
    ) -> None:
        handle.reset()  # every option back to its default; the connection cache stays
        handle.setopt(pycurl.URL, url)
        handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        handle.setopt(pycurl.NOSIGNAL, 1)  # threads: no SIGALRM for timeouts
        handle.setopt(pycurl.PROXY, "")  # never a proxy from the environment
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        handle.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(self.connect_timeout * 1000)))
        # a read timeout: abort when under 1 byte/s arrived for `timeout` seconds
        handle.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        handle.setopt(pycurl.LOW_SPEED_TIME, max(1, round(self.timeout)))
        if self._ca_file:
            handle.setopt(pycurl.CAINFO, self._ca_file)
        if self._ca_dir:
            handle.setopt(pycurl.CAPATH, self._ca_dir)
        handle.setopt(pycurl.BUFFERSIZE, _BUFFER)
        handle.setopt(pycurl.WRITEFUNCTION, exchange.write)
        lines = [f"{k}: {v}" for k, v in headers.items()]
        if method == "GET":
            handle.setopt(pycurl.HTTPGET, 1)
            if exchange.limit is not None:
                handle.setopt(pycurl.MAXFILESIZE_LARGE, exchange.limit)
        elif method == "HEAD":
            handle.setopt(pycurl.NOBODY, 1)
        elif method == "PUT":
            data = body or b""
            handle.setopt(pycurl.UPLOAD, 1)
            handle.setopt(pycurl.INFILESIZE_LARGE, len(data))
            reader = _Reader(data)
            handle.setopt(pycurl.READFUNCTION, reader.read)
            handle.setopt(pycurl.SEEKFUNCTION, reader.seek)  # a resend on a fresh connection
            lines.append("Expect:")  # no 100-continue round trip: the URL is signed already
        else:
            raise TransportError("UnsupportedProtocol")
        handle.setopt(pycurl.HTTPHEADER, lines)

    def _take(self) -> pycurl.Curl:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return pycurl.Curl()

    def _give_back(self, handle: pycurl.Curl) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(handle)
                return
        handle.close()

    @staticmethod
    def _discard(handle: pycurl.Curl) -> None:
        handle.close()  # its connection may be mid-answer: never reused


class _Reader:
    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.offset = 0

    def read(self, size: int) -> bytes:
        chunk = self.data[self.offset : self.offset + size]
        self.offset += len(chunk)
        return bytes(chunk)

    def seek(self, offset: int, origin: int) -> int:
        if origin != os.SEEK_SET or not 0 <= offset <= len(self.data):
            return pycurl.SEEKFUNC_CANTSEEK
        self.offset = offset
        return pycurl.SEEKFUNC_OK


def _transport_error(code: int, connected: bool) -> TransportError:
    if code == pycurl.E_OPERATION_TIMEDOUT:
        return TransportError("ReadTimeout" if connected else "ConnectTimeout", timeout=True)
    if code in _CONNECT_ERRORS:
        return TransportError("ConnectError")
    if code in _PROTOCOL_ERRORS:
        return TransportError("RemoteProtocolError")
    return TransportError("ReadError")
