"""A misbehaving HTTP server on 127.0.0.1 for the remote-fault tests and ``eval/remote_faults.py``.

It serves the files of a directory (GET and HEAD, with byte ranges unless ``ranges=False``), or forwards
every request to an upstream server (``upstream=``: moto's S3 server, to fail uploads), and injects faults
chosen by rules. A rule names a fault and which requests it hits: by method, by a path substring, the
first ``times`` matching requests, or every ``every``-th request the server receives. Faults:

* ``drop``: headers and half the body, then the connection is reset (RST);
* ``short``: headers announcing the whole body, half of it, then a clean close (an incomplete body);
* ``truncate``: a ``Content-Length`` of half the file and that half (a wrong length, cleanly ended);
* ``stall``: headers and half the body, then nothing until the server stops;
* ``silent``: the request is read and never answered;
* ``trickle``: the body at ``trickle_bps`` bytes a second;
* ``corrupt``: the whole body with one byte changed (a hash mismatch);
* ``status:N``: an empty response with status N (503, 500, 404, 403, ...), ``Retry-After: 0`` on 503.

For forwarded requests (uploads) ``drop``, ``silent`` and ``status:N`` apply to the request: the upload is
read in part (``drop``) or whole and then answered with the fault instead of being forwarded.

Every request is recorded in ``log`` as ``(method, path, range header, fault or None)``; ``hook(number,
method, path)``, if given, runs after a request is logged and before it is answered.

Example:
    >>> with FaultServer(root, [Rule("drop", times=1)]) as server:  # doctest: +SKIP
    ...     verify_shard_set(server.url + "/set")
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.client
import http.server
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FaultServer", "Rule"]


@dataclass
class Rule:
    """Which requests get ``fault``: ``method`` (None: any), ``path`` (a substring; None: any), the first
    ``times`` matching requests (None: all of them), or every ``every``-th request of the server (1-based:
    requests ``every``, ``2 * every``, ...)."""

    fault: str
    method: str | None = None
    path: str | None = None
    times: int | None = None
    every: int | None = None
    hits: int = 0

    def take(self, method: str, path: str, number: int) -> bool:
        if self.method is not None and method != self.method:
            return False
        if self.path is not None and self.path not in path:
            return False
        if self.every is not None and number % self.every:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


class FaultServer:
    """The server; a context manager that starts it on a free port and stops it (see the module)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        rules: list[Rule] | None = None,
        *,
        upstream: str | None = None,
        ranges: bool = True,
        trickle_bps: int = 200,
        hook: Callable[[int, str, str], None] | None = None,
    ) -> None:
        self.root = Path(root) if root is not None else None
        self.rules = list(rules or [])
        self.upstream = upstream
        self.ranges = ranges
        self.trickle_bps = trickle_bps
        self.hook = hook
        self.log: list[tuple[str, str, str | None, str | None]] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._count = 0
        outer = self

        class Handler(_Handler):
            server_ref = outer

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()  # stalled handlers wake and close
        self.httpd.shutdown()
        self.httpd.server_close()

    def requests(self, method: str | None = None, path: str | None = None) -> list[tuple]:
        """Logged requests, filtered by method and path substring."""
        with self._lock:
            return [
                r for r in self.log if (method is None or r[0] == method) and (path is None or path in r[1])
            ]

    def _fault(self, method: str, path: str, range_header: str | None) -> str | None:
        with self._lock:
            self._count += 1
            fault = next((r.fault for r in self.rules if r.take(method, path, self._count)), None)
            self.log.append((method, path, range_header, fault))
            number = self._count
        if self.hook is not None:  # a test's action between requests (replace a file, ...)
            self.hook(number, method, path)
        return fault


class _Handler(http.server.BaseHTTPRequestHandler):
    server_ref: FaultServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    # ------------------------------------------------------------------ helpers

    def _reset(self) -> None:
        """Close with a TCP reset, as a crashed server or a dropped link does."""
        with contextlib.suppress(OSError):
            self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _hang(self) -> None:
        self.server_ref.stopping.wait()
        self.close_connection = True

    def _status(self, code: int) -> None:
        self.send_response(code)
        if code == 503:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _read_request_body(self, part: bool = False) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if part:
                    break
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length // 2 if part else length)

    # ------------------------------------------------------------------ serving files

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("HEAD")

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        srv = self.server_ref
        fault = srv._fault(method, self.path, self.headers.get("Range"))
        if srv.upstream is not None:
            self._forward(method, fault)
        else:
            self._serve(method, fault)

    def _serve(self, method: str, fault: str | None) -> None:
        srv = self.server_ref
        assert srv.root is not None
        if fault == "silent":
            return self._hang()
        if fault is not None and fault.startswith("status:"):
            return self._status(int(fault.split(":", 1)[1]))
        rel = self.path.split("?", 1)[0].lstrip("/")
        path = (srv.root / rel).resolve()
        if srv.root.resolve() not in path.parents or not path.is_file():
            return self._status(404)
        data = path.read_bytes()
        stat = path.stat()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        start, status = 0, 200
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if srv.ranges and wanted and (if_range is None or if_range == etag):
            m = re.fullmatch(r"bytes=(\d+)-", wanted.strip())
            if m:
                start = int(m.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
        body = data[start:]
        if fault == "corrupt" and body:
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        half = len(body) // 2
        announced = half if fault == "truncate" else len(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(announced))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
        if srv.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if method == "HEAD":
            return
        try:
            if fault in ("drop", "short", "stall"):
                self.wfile.write(body[:half])
                self.wfile.flush()
                if fault == "drop":
                    time.sleep(0.2)  # the client has the first half before the reset
                    return self._reset()
                if fault == "short":
                    self.close_connection = True
                    return
                return self._hang()
            if fault == "truncate":
                self.wfile.write(body[:half])
                return
            if fault == "trickle":
                step = max(1, srv.trickle_bps // 10)
                for i in range(0, len(body), step):
                    if srv.stopping.wait(0.1):
                        return
                    self.wfile.write(body[i : i + step])
                    self.wfile.flush()
                return
            self.wfile.write(body)
        except OSError:  # the client gave up (a timeout): nothing more to send
            self.close_connection = True

    # ------------------------------------------------------------------ forwarding (uploads)

    def _forward(self, method: str, fault: str | None) -> None:
        srv = self.server_ref
        if fault == "drop":
            self._read_request_body(part=True)
            return self._reset()
        body = self._read_request_body()
        if fault == "silent":
            return self._hang()
        if fault is not None and fault.startswith("status:"):
            return self._status(int(fault.split(":", 1)[1]))
        host, port = srv.upstream.split("://", 1)[1].rsplit(":", 1)  # type: ignore[union-attr]
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")
        }
        if body or method in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        try:
            conn.request(method, self.path, body=body if body else None, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                    self.send_header(key, value)
            length = response.getheader("Content-Length") if method == "HEAD" else None
            self.send_header("Content-Length", length or str(len(payload)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(payload)
        finally:
            conn.close()


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass (for a test's background reader)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())
