"""Where shard bytes come from: local paths, fsspec URLs, ``pipe:`` commands and brace patterns.

A shard set location is a string, never a ``Path``: ``Path("http://host/set")`` collapses the double slash
into ``http:/host/set``, so a URL is kept as text from the command line to the byte stream. Three forms:

* a local path (``shards/hard``, ``/data/set/hard-000000.tar``);
* an fsspec URL (``http(s)://``, ``s3://``, ``gs://``, ``file://``, ...: anything with ``SCHEME://``), read
  through :func:`fsspec.open` (its filesystem packages, e.g. ``s3fs``, are optional extras);
* ``pipe:COMMAND``: the standard output of a shell command, as webdataset reads it (``pipe:curl -s URL``).
  The command is the user's own input, as in webdataset; a command that exits non-zero is an error.

A brace pattern (``hard-{000000..000009}.tar``) expands to a list of shard locations, as webdataset and
``braceexpand`` expand it.

Every read is bounded: the caller says how many bytes it accepts (a manifest's ``bytes`` for a shard), and one
more byte than that is an error, so a stream that never ends (a link to ``/dev/zero``, a server that keeps
sending) cannot hang a reader or fill its memory. Local files are checked with ``stat`` before they are
opened and again with ``fstat`` after: only regular files are read, and opening uses ``O_NONBLOCK`` so that a
FIFO swapped in between the two checks cannot block the open either.

Remote reads survive transient faults (:class:`RemotePolicy`, the ``remote`` config section). A failure is
*transient* (a refused or reset connection, a body that ends before its ``Content-Length``, HTTP 5xx, 408,
425 or 429, a connect timeout, a stall: no byte for ``read_timeout_s``, or fewer than ``min_bytes_per_s``
on average over that long, a trickle) or *permanent* (404/410: missing; 401/403: denied; other 4xx; a
stream longer than the manifest says; a file that changed at the source between two tries). A stream that
ends cleanly short of the manifest's size is resumed at once; when that brings no byte more, the copy at
the source is short, which the size check reports.

A transient failure is retried, up to ``attempts`` tries in all, after an exponential backoff
(``backoff_s``, doubled per try up to ``backoff_max_s``, with jitter; a ``Retry-After`` the server sends is
honoured up to that cap). Each retry *resumes*: HTTP asks for the missing bytes with ``Range: bytes=N-``
(and ``If-Range`` with the first response's validator: a file replaced in between comes whole, with another
validator, and is refused rather than spliced); a server that answers with the whole file is read again and
its first N bytes dropped; fsspec stores (S3, GCS, ...) reopen the object and seek to N; a ``pipe:``
command is run again and its first N bytes dropped (a command's exit status cannot tell a permanent
failure from a transient one, so every failure is retried but the shell's 126 and 127: not executable,
not found). Retrying never lets an unverified sample through: a shard's bytes are checked against the
manifest's size and sha256 once all of them are in (:func:`synthkit.shards.reader.read_shard`), before any
sample is decoded, and a mismatch is permanent. Every failure names the location, the fault and the
attempts made (``...: HTTP 503 Service Unavailable (gave up after 6 attempts in 31.4 s; ...)``).

HTTP(S) is read with the standard library's client (connect and read timeouts of its own, redirects
followed, proxies not used); S3 through s3fs with botocore's and s3fs's own retries turned off
(``total_max_attempts: 1``, ``retries = 1``) so that this policy is the one that counts, and botocore's
connect and read timeouts set from it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import re
import select
import ssl
import stat
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from braceexpand import braceexpand

from synthkit.config import RemoteConfig
from synthkit.errors import ShardError

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
PIPE = "pipe:"
# Read in blocks of this size; a shard is hashed block by block as it arrives.
READ_BLOCK = 1 << 20
# Redirects an HTTP read follows (a CDN or a signed URL); more is a loop.
MAX_REDIRECTS = 5
_ENV_PREFIX = "SYNTHKIT_REMOTE_"
T = TypeVar("T")


@dataclass(frozen=True)
class RemotePolicy(RemoteConfig):
    """How remote reads and uploads meet transient faults; see the module docstring. The ``remote`` config
    section at work: its keys, defaults and checks are :class:`synthkit.config.RemoteConfig`'s.

    The defaults suit a training run that streams shards for hours: a fault that clears within about half
    a minute costs one shard a few seconds, and a store that is down fails the read after about three and
    a half minutes (at most ``attempts * read_timeout_s`` plus the backoffs: 6 x 30 s + 31 s), not never.

    Attributes:
        attempts: tries per file in all (1: no retry).
        connect_timeout_s: seconds to open a connection.
        read_timeout_s: seconds without a byte before the read counts as stalled; also the window over
            which ``min_bytes_per_s`` is averaged.
        min_bytes_per_s: a stream slower than this over ``read_timeout_s`` is a stall (a trickle); 0 turns
            the check off.
        backoff_s: wait before the second try; doubled for each further one (with jitter of up to half).
        backoff_max_s: the longest wait between two tries (also the most a ``Retry-After`` is honoured).
    """

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed try: exponential, capped, with jitter."""
        base = min(self.backoff_max_s, self.backoff_s * 2 ** (failures - 1))
        return base * (0.5 + 0.5 * random.random())  # noqa: S311 - jitter, not security


_policy: RemotePolicy | None = None


def configure(policy: RemotePolicy) -> None:
    """Use ``policy`` for this process's remote reads and uploads, and for the processes it starts
    (DataLoader workers, ``pipe:`` commands, launched processes): it is also put in the environment as
    ``SYNTHKIT_REMOTE_ATTEMPTS``, ``SYNTHKIT_REMOTE_READ_TIMEOUT_S``, ... ."""
    global _policy
    _policy = policy
    for name, value in asdict(policy).items():
        os.environ[_ENV_PREFIX + name.upper()] = str(value)


def remote_policy() -> RemotePolicy:
    """The policy in force: the one ``configure`` set, else the ``SYNTHKIT_REMOTE_*`` environment variables
    over the defaults (commands without a pipeline config, ``shards verify`` say, are tuned this way)."""
    if _policy is not None:
        return _policy
    values: dict[str, Any] = {}
    for f in fields(RemotePolicy):
        text = os.environ.get(_ENV_PREFIX + f.name.upper())
        if text is None or not text.strip():
            continue
        try:
            values[f.name] = int(text) if f.name == "attempts" else float(text)
        except ValueError:
            raise ShardError(
                f"{_ENV_PREFIX}{f.name.upper()}={text!r}: not a number (see the remote config section)"
            ) from None
    try:
        return RemotePolicy(**values)
    except ValueError as exc:
        raise ShardError(f"{exc} (from the SYNTHKIT_REMOTE_* environment)") from None


def is_url(location: str) -> bool:
    """True for ``SCHEME://...`` (fsspec) and ``pipe:...``; False for local paths."""
    return bool(_URL.match(location)) or location.startswith(PIPE)


def is_pipe(location: str) -> bool:
    return location.startswith(PIPE)


def as_location(location: str | os.PathLike[str]) -> str:
    """A location as text; a ``Path`` is accepted for local files (it cannot have held a URL intact)."""
    return os.fspath(location) if not isinstance(location, str) else location


def join(base: str, name: str) -> str:
    """``base/name`` for a local directory or a URL prefix, without normalising the URL."""
    if is_pipe(base):
        raise ShardError(f"{base}: a pipe: command is one byte stream, not a directory of files")
    if is_url(base):
        return base.rstrip("/") + "/" + name
    return os.path.join(base, name)


def parent(location: str) -> str:
    """The directory (or URL prefix) holding ``location``."""
    if is_url(location):
        head, _, _ = location.rstrip("/").rpartition("/")
        return head
    return os.path.dirname(location) or "."


def basename(location: str) -> str:
    return location.rstrip("/").rpartition("/")[2] if is_url(location) else os.path.basename(location)


def expand(location: str) -> list[str]:
    """Brace-expand ``location`` (``a-{000..002}.tar``: three names); without braces, it is itself."""
    if "{" not in location:
        return [location]
    return list(braceexpand(location))


def _protocol(url: str) -> str:
    return url.split(":", 1)[0].lower()


def fs_and_path(url: str) -> tuple[Any, str]:
    """The fsspec filesystem and path of ``url``, with the timeouts of :func:`remote_policy`: HTTP gets
    aiohttp's connect and read timeouts (listing a directory; shards are read by this module's own client),
    S3 botocore's, with botocore's own retries off (this module retries)."""
    import fsspec  # imported here: local reads need none of it

    policy = remote_policy()
    options: dict[str, Any] = {}
    protocol = _protocol(url)
    if protocol in ("http", "https"):
        import aiohttp

        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=policy.connect_timeout_s, sock_read=policy.read_timeout_s
        )
        options["client_kwargs"] = {"timeout": timeout}
    elif protocol in ("s3", "s3a"):
        options["config_kwargs"] = {
            "connect_timeout": policy.connect_timeout_s,
            "read_timeout": policy.read_timeout_s,
            "retries": {"total_max_attempts": 1},
        }
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:  # an unknown protocol or its package not installed
        raise ShardError(f"{url}: cannot read this URL: {exc}") from exc
    if "config_kwargs" in options and isinstance(getattr(fs, "retries", None), int):
        fs.retries = 1  # s3fs retries timeouts itself (5 tries): this module's tries are the ones that count
    return fs, path


def _check_regular(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a device"
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a directory"
            if stat.S_ISDIR(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "not a regular file"
        )
        link = " (through a symlink)" if os.path.islink(path) else ""
        raise ShardError(f"{path}: is {kind}{link}; only regular files are read")


def _open_local(path: str) -> int:
    """An fd of the regular file ``path``; FIFOs, devices and directories are refused without blocking."""
    try:
        _check_regular(path, os.stat(path))  # follows symlinks: a link to a regular file is fine
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError as exc:
        raise ShardError(f"{path}: missing") from exc
    except OSError as exc:
        raise ShardError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    try:
        _check_regular(path, os.fstat(fd))  # the file opened is the file checked
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _too_long(location: str, limit: int, what: str) -> ShardError:
    return ShardError(f"{location}: more than {limit} bytes; {what}")


def iter_blocks(location: str, limit: int, what: str = "refused", size: int | None = None) -> Iterator[bytes]:
    """The bytes of ``location`` in blocks; more than ``limit`` bytes in all raises ShardError.

    ``what`` ends the message of that error (e.g. "the manifest says 1234"). ``size``: the byte count the
    caller expects (a manifest's), so that a remote stream that ends short of it is resumed rather than
    taken as whole. Remote locations are retried and resumed on transient faults (see the module); a
    failure that stays raises ShardError naming the location, the fault and the attempts.
    """
    if is_url(location):
        yield from _iter_remote(location, limit, what, size)
        return
    total = 0
    fd = _open_local(location)
    try:
        while True:
            try:
                block = os.read(fd, min(READ_BLOCK, limit + 1 - total))
            except OSError as exc:
                raise ShardError(f"{location}: read failed: {exc.strerror or exc}") from exc
            if not block:
                return
            total += len(block)
            if total > limit:
                raise _too_long(location, limit, what)
            yield block
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- remote reads, with retries


class Fault(Exception):
    """One failed try at a remote read or upload: what went wrong, and whether trying again can help.

    ``missing``: the file does not exist (HTTP 404/410, FileNotFoundError), which callers may expect
    (a set without ``sizes.json``); ``retry_after``: the server's ``Retry-After`` in seconds; ``pause``:
    whether to back off before the next try (not after a clean but short end).
    """

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        missing: bool = False,
        retry_after: float | None = None,
        pause: bool = True,
    ) -> None:
        super().__init__(message)
        self.transient, self.missing, self.retry_after, self.pause = transient, missing, retry_after, pause


# Names of exception types (in aiohttp, botocore, urllib3, s3fs) that mean a network fault worth retrying,
# where they do not derive from OSError or TimeoutError.
_TRANSIENT_NAMES = frozenset(
    {
        "ClientError",  # aiohttp.ClientError: connection, payload and disconnect errors
        "ClientPayloadError",
        "ServerDisconnectedError",
        "FSTimeoutError",
        "IncompleteRead",
        "ProtocolError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ResponseStreamingError",
        "HTTPClientError",
        "ResponseParserError",
    }
)


def _exception_status(exc: BaseException) -> int | None:
    """The HTTP status an fsspec backend's exception carries (aiohttp's ``status``, botocore's response)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    return None


def _describe(exc: BaseException) -> str:
    """``Type: message``, never an empty message (a timeout often has none)."""
    text = str(exc).strip()
    if text:
        return f"{type(exc).__name__}: {text}"
    timeout = isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__
    return f"{type(exc).__name__} ({'timed out' if timeout else 'no message'})"


# Causes no retry can help: (exception type, what the fault says, whether it means "missing").
_PERMANENT_CAUSES = ((FileNotFoundError, "missing", True), (PermissionError, "access denied", False))


def _cause_chain(exc: BaseException, most: int = 8) -> list[BaseException]:
    """``exc`` and what caused it (explicitly or in passing), outermost first, at most ``most`` deep."""
    chain, cause = [exc], exc.__cause__ or exc.__context__
    while cause is not None and len(chain) < most:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def _network_like(chain: list[BaseException]) -> bool:
    """An OS, timeout or end-of-file error anywhere in the chain, or a type named as transient."""
    if any(isinstance(e, (OSError, TimeoutError, EOFError)) for e in chain):
        return True
    return bool({cls.__name__ for e in chain for cls in type(e).__mro__} & _TRANSIENT_NAMES)


def classify(exc: BaseException) -> Fault:
    """An exception of one try (from any fsspec backend, or the network) as a Fault."""
    if isinstance(exc, Fault):
        return exc
    described = _describe(exc)
    chain = _cause_chain(exc)
    for cause, what, missing in _PERMANENT_CAUSES:
        if any(isinstance(e, cause) for e in chain):
            return Fault(f"{what} ({described})", transient=False, missing=missing)
    for e in chain:
        status = _exception_status(e)
        if status is not None:
            return _status_fault(status, described, None)
    return Fault(described, transient=_network_like(chain))


def _status_fault(status: int, reason: str, retry_after: float | None) -> Fault:
    text = f"HTTP {status} {reason}".rstrip()
    if status in (404, 410):
        return Fault(f"missing ({text})", transient=False, missing=True)
    if status in (401, 403):
        return Fault(f"access denied ({text})", transient=False)
    transient = status >= 500 or status in (408, 425, 429)
    return Fault(text, transient=transient, retry_after=retry_after if transient else None)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: not worth parsing; the backoff applies


class _Pace:
    """Stall detection while a body arrives. No byte at all for ``read_timeout_s`` is the socket's timeout;
    this catches the trickle: fewer than ``min_bytes_per_s`` on average over a ``read_timeout_s`` window."""

    def __init__(self, policy: RemotePolicy) -> None:
        self.window, self.rate = policy.read_timeout_s, policy.min_bytes_per_s
        self.start, self.bytes = time.monotonic(), 0

    def add(self, n: int) -> None:
        self.bytes += n
        now = time.monotonic()
        if now - self.start >= self.window:
            if self.rate and self.bytes < self.rate * (now - self.start):
                raise Fault(
                    f"stalled: {self.bytes} bytes in {now - self.start:.0f} s, below "
                    f"{self.rate:g} bytes/s (remote.min_bytes_per_s)",
                    transient=True,
                )
            self.start, self.bytes = now, 0


def _http_connection(parts: urllib.parse.SplitResult, policy: RemotePolicy) -> http.client.HTTPConnection:
    host = parts.hostname or ""
    if parts.scheme == "https":
        return http.client.HTTPSConnection(
            host, parts.port, timeout=policy.connect_timeout_s, context=ssl.create_default_context()
        )
    return http.client.HTTPConnection(host, parts.port, timeout=policy.connect_timeout_s)


class _HttpState:
    """What one HTTP read keeps across its tries: where redirects led, and the file's validator."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.validator: str | None = None


_REDIRECTS = (301, 302, 303, 307, 308)


def _range_headers(offset: int, validator: str | None) -> dict[str, str]:
    """A GET's headers: the bytes from ``offset`` on, only if the file is still the one first read."""
    headers = {"User-Agent": "synthkit", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator is not None:
            headers["If-Range"] = validator
    return headers


def _http_connect(conn: http.client.HTTPConnection, policy: RemotePolicy) -> None:
    """Connect (within ``connect_timeout_s``), then give reads ``read_timeout_s``; failures as Faults."""
    try:
        conn.connect()
    except TimeoutError as exc:
        raise Fault(f"connect timed out after {policy.connect_timeout_s:g} s", transient=True) from exc
    except ssl.SSLCertVerificationError as exc:
        raise Fault(f"TLS certificate refused: {exc}", transient=False) from exc
    except OSError as exc:
        raise Fault(f"cannot connect: {_describe(exc)}", transient=True) from exc
    assert conn.sock is not None
    conn.sock.settimeout(policy.read_timeout_s)


def _http_get(
    conn: http.client.HTTPConnection, url: str, headers: dict[str, str], policy: RemotePolicy
) -> http.client.HTTPResponse:
    """The response (status and headers) to a GET of ``url`` on ``conn``; failures as Faults."""
    parts = urllib.parse.urlsplit(url)
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    _http_connect(conn, policy)
    try:
        conn.request("GET", target, headers=headers)
        return conn.getresponse()
    except TimeoutError as exc:
        raise Fault(f"stalled: no response within {policy.read_timeout_s:g} s", transient=True) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise Fault(f"request failed: {_describe(exc)}", transient=True) from exc


def _range_skip(response: http.client.HTTPResponse, offset: int) -> int:
    """Bytes of the body to drop: none for a 206 that starts at ``offset`` (any other start is a Fault),
    ``offset`` for a 200 (the whole file again)."""
    if response.status != 206:
        return offset
    content_range = response.getheader("Content-Range")
    start = re.match(r"bytes (\d+)-", content_range or "")
    if start is None or int(start.group(1)) != offset:
        raise Fault(f"asked for bytes from {offset}, got Content-Range {content_range!r}", transient=True)
    return 0


def _response_validator(response: http.client.HTTPResponse) -> str | None:
    """What identifies the file's version: a strong ETag, else Last-Modified."""
    etag = response.getheader("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.getheader("Last-Modified")


def _adopt_validator(state: _HttpState, response: http.client.HTTPResponse, skip: int) -> None:
    """Remember the file's validator; a resumed read of a file that changed since is a permanent Fault."""
    validator = _response_validator(response)
    if skip and state.validator is not None and validator not in (None, state.validator):
        raise Fault(
            f"the file changed at the source while it was read ({state.validator} then {validator}); "
            "its two parts cannot be joined",
            transient=False,
        )
    if state.validator is None:
        state.validator = validator


def _http_try(state: _HttpState, offset: int, policy: RemotePolicy) -> Iterator[bytes]:
    """One GET of ``state.url`` from byte ``offset``: its body blocks (the first ``offset`` bytes dropped
    where the server sends the whole file), or a Fault."""
    for _ in range(MAX_REDIRECTS + 1):
        conn = _http_connection(urllib.parse.urlsplit(state.url), policy)
        try:
            response = _http_get(conn, state.url, _range_headers(offset, state.validator), policy)
            status, moved = response.status, response.getheader("Location")
            if status in _REDIRECTS and moved:
                state.url = urllib.parse.urljoin(state.url, moved)
                continue
            if status == 416 and offset:  # nothing after byte ``offset``: the copy at the source ends there
                return
            if status not in (200, 206):
                raise _status_fault(status, response.reason, _retry_after(response.getheader("Retry-After")))
            skip = _range_skip(response, offset)
            _adopt_validator(state, response, skip)
            yield from _http_body(response, skip, policy)
            return
        finally:
            conn.close()
    raise Fault(f"more than {MAX_REDIRECTS} redirects", transient=False)


def _http_body(response: http.client.HTTPResponse, skip: int, policy: RemotePolicy) -> Iterator[bytes]:
    """The body of one response in blocks of about READ_BLOCK, its first ``skip`` bytes dropped; the bytes
    that arrived before a fault are given out before it is raised (a retry resumes after them)."""
    declared = response.getheader("Content-Length")
    expected = int(declared) if declared is not None and declared.isdigit() else None
    got = 0
    pace = _Pace(policy)
    pending: list[bytes] = []
    pending_bytes = 0
    fault: Fault | None = None
    while True:
        try:
            chunk = response.read1(READ_BLOCK)
        except TimeoutError:
            fault = Fault(
                f"stalled: no data for {policy.read_timeout_s:g} s after {got} bytes of the response",
                transient=True,
            )
            break
        except (OSError, http.client.HTTPException) as exc:
            broke = f"connection broke after {got} bytes of the response: {_describe(exc)}"
            fault = Fault(broke, transient=True)
            break
        if not chunk:
            break
        got += len(chunk)
        arrived = len(chunk)
        if skip:  # a server without ranges sent the start of the file again
            cut = min(skip, len(chunk))
            chunk, skip = chunk[cut:], skip - cut
        if chunk:
            pending.append(chunk)
            pending_bytes += len(chunk)
        try:
            pace.add(arrived)
        except Fault as exc:  # a trickle
            fault = exc
            break
        if pending_bytes >= READ_BLOCK:
            yield b"".join(pending)
            pending, pending_bytes = [], 0
    if pending:
        yield b"".join(pending)
    if fault is not None:
        raise fault
    if expected is not None and got < expected:
        raise Fault(f"incomplete body: {got} of the {expected} bytes the server announced", transient=True)


def _fs_try(location: str, offset: int, policy: RemotePolicy) -> Iterator[bytes]:
    """One read of an fsspec object from byte ``offset`` (reopened and seeked: object stores read ranges)."""
    fs, path = fs_and_path(location)
    try:
        f = fs.open(path, "rb", block_size=READ_BLOCK)
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types; classify sorts them
        fault = classify(exc)
        raise Fault(f"cannot open: {fault}", transient=fault.transient, missing=fault.missing) from exc
    try:
        if offset:
            f.seek(offset)
        while True:
            try:
                block = f.read(READ_BLOCK)
            except Exception as exc:  # noqa: BLE001 - as above
                raise classify(exc) from exc
            if not block:
                return
            yield block
    finally:
        with contextlib.suppress(Exception):  # closing a read handle after a network failure
            f.close()


def _pipe_try(location: str, offset: int, policy: RemotePolicy) -> Iterator[bytes]:
    """One run of a ``pipe:`` command: its output (the first ``offset`` bytes dropped); a stall (nothing
    written for ``read_timeout_s``) or a non-zero exit is a Fault."""
    command = location[len(PIPE) :]
    proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)  # noqa: S602
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    skip, got = offset, 0
    pace = _Pace(policy)
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], policy.read_timeout_s)
            if not ready:
                raise Fault(
                    f"stalled: the command wrote nothing for {policy.read_timeout_s:g} s after {got} bytes",
                    transient=True,
                )
            block = os.read(fd, READ_BLOCK)
            if not block:
                break
            got += len(block)
            pace.add(len(block))
            if skip:
                cut = min(skip, len(block))
                block, skip = block[cut:], skip - cut
                if not block:
                    continue
            yield block
        code = proc.wait()
        if code in (126, 127):  # the shell's "not executable" and "not found": no retry can help
            raise Fault(
                f"the command exited with status {code} (not found or not executable)", transient=False
            )
        if code != 0:
            raise Fault(f"the command exited with status {code}", transient=True)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _tries(attempt: int, started: float) -> str:
    return f"{attempt} attempt{'s' if attempt > 1 else ''} in {time.monotonic() - started:.1f} s"


def _one_try(location: str, policy: RemotePolicy) -> Callable[[int], Iterator[bytes]]:
    """One read of ``location`` from a byte offset, by its kind: a ``pipe:`` command, HTTP(S) (redirects
    and the file's validator kept across tries), or an fsspec object."""
    if is_pipe(location):
        return lambda offset: _pipe_try(location, offset, policy)
    if _protocol(location) in ("http", "https"):
        state = _HttpState(location)
        return lambda offset: _http_try(state, offset, policy)
    return lambda offset: _fs_try(location, offset, policy)


def _give_up_or_wait(fault: Fault, location: str, attempt: int, started: float, policy: RemotePolicy) -> None:
    """After a failed try: a permanent fault, or the last attempt, as ShardError; else the pause before the
    next try (none for a clean end short of the size; at least the server's Retry-After, within bounds)."""
    if not fault.transient:
        error = ShardError(f"{location}: {fault} ({_tries(attempt, started)}; permanent, not retried)")
        raise error from (FileNotFoundError(str(fault)) if fault.missing else fault)
    if attempt >= policy.attempts:
        raise ShardError(
            f"{location}: {fault} (gave up after {_tries(attempt, started)}; "
            f"remote.attempts={policy.attempts})"
        ) from fault
    if fault.pause:
        wait = policy.backoff(attempt)
        if fault.retry_after is not None:
            wait = max(wait, min(fault.retry_after, policy.backoff_max_s))
        time.sleep(wait)


def _iter_remote(location: str, limit: int, what: str, size: int | None) -> Iterator[bytes]:
    """The bytes of a URL or ``pipe:`` stream, retried and resumed on transient faults (see the module)."""
    policy = remote_policy()
    try_once = _one_try(location, policy)
    started = time.monotonic()
    total = attempt = 0
    while True:
        attempt += 1
        at_start = total
        try:
            for block in try_once(total):
                total += len(block)
                if total > limit:
                    raise _too_long(location, limit, what)
                yield block
            if size is None or total >= size:
                return
            # A clean end short of the expected size: resumed at once. No progress: the copy at the source
            # ends there, and the caller's size check names the mismatch.
            if total == at_start and attempt > 1:
                return
            raise Fault(f"the stream ended after {total} of {size} bytes", transient=True, pause=False)
        except Fault as fault:
            _give_up_or_wait(fault, location, attempt, started, policy)


def call_with_retries(what: str, action: Callable[[], T]) -> T:
    """``action()``, tried again on a transient fault as remote reads are (an upload, a listing); a fault
    that stays raises ShardError ``WHAT: FAULT (gave up after N attempts in T s; ...)``."""
    policy = remote_policy()
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types; classify sorts them
            fault = classify(exc)
            if not fault.transient:
                raise ShardError(
                    f"{what}: {fault} ({_tries(attempt, started)}; permanent, not retried)"
                ) from exc
            if attempt >= policy.attempts:
                raise ShardError(
                    f"{what}: {fault} (gave up after {_tries(attempt, started)}; "
                    f"remote.attempts={policy.attempts})"
                ) from exc
            wait = policy.backoff(attempt)
            if fault.retry_after is not None:
                wait = max(wait, min(fault.retry_after, policy.backoff_max_s))
            time.sleep(wait)


def read_bytes(location: str, limit: int, what: str = "refused") -> bytes:
    """All bytes of ``location`` (at most ``limit``; see iter_blocks)."""
    return b"".join(iter_blocks(location, limit, what))


def read_optional(location: str, limit: int) -> bytes | None:
    """The bytes of a small file, or None when it does not exist (a set without a manifest, ...)."""
    try:
        return read_bytes(location, limit, "too large for this kind of file")
    except ShardError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise


def is_local_dir(location: str) -> bool:
    return not is_url(location) and os.path.isdir(location)


def list_names(location: str) -> list[str] | None:
    """File names directly inside a directory or URL prefix, or None where the store cannot list."""
    if not is_url(location):
        try:
            return sorted(os.listdir(location))
        except OSError:
            return None
    if is_pipe(location):
        return None
    try:
        fs, path = fs_and_path(location)
        return sorted(basename(str(p)) for p in fs.ls(path, detail=False))
    except Exception:  # noqa: BLE001 - listing is best effort (plain HTTP servers need not offer it)
        return None
