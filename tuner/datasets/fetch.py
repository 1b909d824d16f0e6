"""One guarded HTTP GET per call, bounded in time and in size, for the image downloader.

Split from :mod:`tuner.datasets.netguard` so that the SSRF policy (which
addresses may be contacted) reads on its own, and the limits of one fetch
live together here:

* every URL and every redirect hop passes :func:`~tuner.datasets.netguard.check_url`,
  and connections go through :func:`~tuner.datasets.netguard.guarded_pool_manager`;
  redirects are followed here (urllib3's own would skip the per-hop check);
* one deadline bounds the whole exchange of an attempt: connect, TLS, sending,
  headers, every redirect hop and the body. Socket timeouts bound a single
  read only, so a server that sends one header byte per second, or a chain of
  redirects each just under the read timeout, would never trip them; at the
  deadline a timer shuts the connection down, which ends any call blocked on
  it (:class:`_Deadline`). DNS look-ups are not cut short (the resolver
  blocks), but nothing is sent once the deadline has passed;
* ``max_bytes`` counts the bytes that will be decoded as an image: the request
  asks for ``Accept-Encoding: identity`` and a response that is still
  content-encoded (gzip, br...) is refused before its body is read, so a small
  compressed "gzip bomb" is never inflated.

Imports go one way: this module imports ``netguard``, never the reverse.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3 import exceptions as u3exc

from tuner.datasets.netguard import BlockedURL, check_url, guarded_pool_manager

__all__ = ["TOTAL_TIMEOUT_FACTOR", "FetchError", "FetchPolicy", "GuardedFetcher"]

# Default whole-exchange deadline, in timeout_s: the per-read timeout alone
# does not stop a server that drips one byte per second.
TOTAL_TIMEOUT_FACTOR = 6
_CHUNK = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_RETRY_STATUSES = frozenset({408, 425, 429})
_PLAIN_ENCODINGS = frozenset({"", "identity"})
_HEADERS = {
    "User-Agent": "tuner-dataset-downloader/1.0",
    "Accept": "image/*",
    "Accept-Encoding": "identity",  # max_bytes must count what is decoded
}


class FetchError(Exception):
    """A failed attempt; ``reason`` is a stable token such as ``"timeout"``.

    Reasons: ``blocked``, ``dns_error``, ``connection_error``, ``timeout``,
    ``truncated``, ``too_large``, ``content_encoding``, ``redirect_error``,
    ``http_<status>``, ``tls_error``, ``bad_url`` (the downloader adds image
    reasons). ``retryable`` says whether another attempt may succeed.
    """

    def __init__(self, reason: str, detail: str = "", *, retryable: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retryable = retryable


class _DeadlinePassed(FetchError):
    """The ``timeout`` of a whole attempt (as opposed to one slow read)."""


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for :class:`GuardedFetcher` (see ``download_images`` for meanings).

    ``deadline_s`` bounds one whole attempt (all hops); None means
    ``TOTAL_TIMEOUT_FACTOR * timeout_s``.
    """

    timeout_s: float = 10.0
    max_bytes: int = 30 * 2**20
    max_redirects: int = 5
    allow_loopback: bool = False
    allow_private: bool = False
    deadline_s: float | None = None

    @property
    def total_s(self) -> float:
        """Seconds one attempt may take, from the first connect to the last body byte."""
        return self.timeout_s * TOTAL_TIMEOUT_FACTOR if self.deadline_s is None else self.deadline_s


class _Deadline:
    """Shuts the tracked connection down at a monotonic deadline (one attempt, one thread).

    It keeps a duplicate descriptor of the socket (``socket.fromfd``), so the
    shutdown reaches the connection whatever wraps it (TLS) and can never hit
    a descriptor number that was closed and reused meanwhile.
    """

    def __init__(self, seconds: float, url: str) -> None:
        self.seconds = seconds
        self.url = url
        self.hop = url  # the URL being fetched now (a redirect target after a hop)
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._fired = False
        self._closed = False
        self._handle: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.name = "fetch-deadline"
        self._timer.start()

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def passed(self) -> bool:
        return self._fired or self.remaining() <= 0

    def error(self) -> FetchError:
        where = self.url if self.hop == self.url else f"{self.url} (at redirect {self.hop})"
        detail = (
            f"{where}: response slower than the {self.seconds:g}s deadline "
            "(connect, headers, every redirect and body together)"
        )
        return _DeadlinePassed("timeout", detail, retryable=True)

    def track(self, sock: socket.socket) -> None:
        """Cut ``sock`` at the deadline instead of the previous one (at once if past)."""
        try:
            handle = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except OSError:
            return  # already closed: nothing left to cut
        with self._lock:
            if self._closed:
                old = handle
            else:
                old, self._handle = self._handle, handle
                if self._fired:
                    _shut(handle)
        if old is not None:
            old.close()

    def close(self) -> bool:
        """Stop the timer and drop the socket; True if it never fired."""
        self._timer.cancel()
        with self._lock:
            self._closed = True
            handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()
        return not self._fired

    def _fire(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._fired = True
            if self._handle is not None:
                _shut(self._handle)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv/send on every descriptor
    except OSError:
        pass  # the peer already closed it


class GuardedFetcher:
    """Thread-safe GET of whole bodies through a guarded connection pool."""

    def __init__(self, policy: FetchPolicy, *, maxsize: int = 8) -> None:
        self.policy = policy
        self._local = threading.local()  # the running attempt's _Deadline, per thread
        self._http = guarded_pool_manager(
            allow_loopback=policy.allow_loopback,
            allow_private=policy.allow_private,
            on_socket=self._track_socket,
            num_pools=max(10, maxsize),
            maxsize=maxsize,
            block=False,
            retries=False,
        )

    def __enter__(self) -> GuardedFetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.clear()

    def get(self, url: str) -> bytes:
        """One attempt at ``url``; returns the body or raises :class:`FetchError`."""
        deadline = _Deadline(self.policy.total_s, url)
        self._local.deadline = deadline
        try:
            return self._follow(url, deadline)
        except FetchError as exc:
            cut = deadline.passed and exc.reason != "blocked"  # keep policy refusals visible
            if cut and not isinstance(exc, _DeadlinePassed):
                # Whatever broke (EOF mid-headers, reset, TLS alert), we broke it.
                raise deadline.error() from exc
            raise
        finally:
            self._local.deadline = None
            deadline.close()

    def _track_socket(self, sock: socket.socket) -> None:
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None:
            deadline.track(sock)

    def _follow(self, url: str, deadline: _Deadline) -> bytes:
        policy = self.policy
        current = url
        for _hop in range(policy.max_redirects + 1):
            deadline.hop = current
            self._check(current)
            if deadline.passed:
                raise deadline.error()
            resp = self._request(current, deadline)
            released = False
            try:
                if resp.status in _REDIRECT_STATUSES:
                    location = resp.headers.get("Location")
                    if not location:
                        raise FetchError("redirect_error", f"HTTP {resp.status} without Location")
                    current = urljoin(current, location.strip())
                    continue
                if resp.status != 200:
                    retry = resp.status >= 500 or resp.status in _RETRY_STATUSES
                    raise FetchError(f"http_{resp.status}", f"HTTP {resp.status}", retryable=retry)
                data = self._read_body(current, resp, deadline)
                if not deadline.close():  # cut: the body may be short, the socket is dead
                    raise deadline.error()
                resp.release_conn()  # body fully read: keep-alive connection reusable
                released = True
                return data
            finally:
                if not released:
                    # Drop the connection rather than drain an unread body of
                    # unknown size (redirect, error page, aborted download).
                    resp.close()
        raise FetchError("redirect_error", f"more than {policy.max_redirects} redirects")

    def _check(self, url: str) -> None:
        try:
            check_url(
                url,
                allow_loopback=self.policy.allow_loopback,
                allow_private=self.policy.allow_private,
            )
        except BlockedURL as exc:
            raise FetchError("blocked", f"{url}: {exc}") from exc
        except socket.gaierror as exc:
            # EAI_AGAIN is a temporary resolver failure; NXDOMAIN and co. are final.
            retry = exc.errno == socket.EAI_AGAIN
            host = urlsplit(url).hostname
            raise FetchError("dns_error", f"{host}: {exc}", retryable=retry) from exc
        except (OSError, UnicodeError) as exc:
            raise FetchError("dns_error", f"{url}: {exc}") from exc

    def _request(self, url: str, deadline: _Deadline) -> urllib3.BaseHTTPResponse:
        per_read = self.policy.timeout_s
        # urllib3's total caps connect + the read timeout at what is left; the
        # _Deadline timer covers the rest (a read that keeps receiving bytes).
        left = max(deadline.remaining(), 0.001)  # urllib3 refuses a total <= 0
        timeout = urllib3.Timeout(connect=per_read, read=per_read, total=left)
        try:
            return self._http.request(
                "GET",
                url,
                headers=_HEADERS,
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,  # never inflate: see _read_body
                timeout=timeout,
            )
        except BlockedURL as exc:  # the peer check of guarded_pool_manager
            raise FetchError("blocked", str(exc)) from exc
        except Exception as exc:
            raise _network_failure(exc) from exc

    def _read_body(self, url: str, resp: urllib3.BaseHTTPResponse, deadline: _Deadline) -> bytes:
        max_bytes = self.policy.max_bytes
        encoding = resp.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in _PLAIN_ENCODINGS:
            raise FetchError(
                "content_encoding",
                f"{url}: Content-Encoding {encoding!r} refused (asked for identity; "
                f"max_bytes {max_bytes} counts decoded bytes, so encoded bodies are not inflated)",
            )
        length = resp.headers.get("Content-Length", "").strip()
        if length.isascii() and length.isdigit() and int(length) > max_bytes:  # "²".isdigit() too
            raise FetchError("too_large", f"Content-Length {int(length)} > max_bytes {max_bytes}")
        buf = bytearray()
        try:
            # read1 returns what has arrived, so the deadline is checked often.
            while chunk := resp.read1(_CHUNK, decode_content=False):
                buf += chunk
                if len(buf) > max_bytes:
                    raise FetchError("too_large", f"body exceeds max_bytes {max_bytes}")
                if deadline.passed:
                    raise deadline.error()
        except FetchError:
            raise
        except Exception as exc:
            raise _network_failure(exc) from exc
        return bytes(buf)


def _network_failure(exc: BaseException) -> FetchError:
    """Map a urllib3/socket exception to a reason (subclasses are tested first)."""
    if isinstance(exc, u3exc.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, u3exc.NameResolutionError):
        return FetchError("dns_error", text, retryable=True)
    # NewConnectionError subclasses ConnectTimeoutError: test it first.
    if isinstance(exc, u3exc.NewConnectionError):
        return FetchError("connection_error", text, retryable=True)
    if isinstance(exc, (u3exc.TimeoutError, TimeoutError)):
        return FetchError("timeout", text, retryable=True)
    if isinstance(exc, u3exc.ProtocolError):
        if any(isinstance(arg, http.client.IncompleteRead) for arg in exc.args):
            return FetchError("truncated", text, retryable=True)
        return FetchError("connection_error", text, retryable=True)
    if isinstance(exc, u3exc.SSLError):
        return FetchError("tls_error", text)
    if isinstance(exc, ValueError):  # includes urllib3's LocationValueError
        return FetchError("bad_url", text)
    if isinstance(exc, (u3exc.HTTPError, OSError)):
        return FetchError("connection_error", text, retryable=True)
    return FetchError("internal_error", text)
