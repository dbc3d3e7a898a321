"""One image download that is safe on hostile servers and polite to all of them.

Every hop of a download is checked where its connection is made: the host is resolved once,
every address it resolves to must pass the URL policy (:mod:`curation.url_safety`), and the
connection goes to that checked address (the Host header and TLS name stay the URL's host),
so neither a redirect to an internal address nor DNS that changes between check and fetch
gets through. Redirects are followed by hand, at most ``max_redirects`` hops, and a loop is
named. Each response is bounded: ``Content-Length`` above ``max_body_bytes`` is refused before
the body is read, the body is read in pieces and cut off at the cap, and a watchdog shuts the
socket at the download's deadline (``deadline_s``: every hop, header, byte and wait
together), so an endless body or a one-byte-a-second drip ends on time.

Politeness, per host and per process (see :class:`HostGate`): at most
``host_connections`` downloads at once and ``host_requests_per_s`` request starts a second;
429 and 503 honour ``Retry-After`` (bounded by ``max_retry_after_s`` and the deadline) and the
wait holds back every thread of the process for that host. ``X-Robots-Tag`` opt-outs are
checked on the headers before the body is read; with ``robots_txt`` each origin's robots.txt
is fetched once (through the same checks) and obeyed. The User-Agent names litflow and, where
the operator gives one, their contact.

Why by hand: img2dataset fetches with ``urllib.request.urlopen``, which follows redirects
itself, reads the whole body and has only a per-socket-operation timeout, and no well-kept
HTTP client offers "connect only to this checked address" with a per-hop policy (urllib3 and
requests would need the same connection subclass; ``advocate`` did this for requests and is
unmaintained). The standard library's ``http.client`` with a connection that connects to the
pinned address is the smallest complete answer. :mod:`curation.guarded_download` plugs it
into img2dataset.

Memory: one response body at a time per thread, at most ``max_body_bytes``; the host gate
holds one small entry per host with a download in flight or a wait pending; the robots.txt
cache at most ``ROBOTS_CACHE`` origins' rules.
"""

from __future__ import annotations

import email.utils
import heapq
import http.client
import itertools
import socket
import ssl
import threading
import time
import urllib.robotparser
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit

from curation.reasons import TRANSIENT_REASONS, classify_error, own_error
from curation.url_safety import Refused, Resolver, UrlPolicy, cached_resolver
from infra.contract import IngestReason

VERSION = "0.1.0"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_AFTER_STATUSES = frozenset({429, 503})
# img2dataset's own default opt-outs
DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
READ_PIECE = 64 * 1024
ROBOTS_CACHE = 10_000  # origins whose robots.txt rules a fetcher keeps
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"  # left as they are when a path is quoted


@dataclass(frozen=True)
class FetchPolicy:
    """What one download may do; recorded whole in ``ingest.json``."""

    url_policy: UrlPolicy = field(default_factory=UrlPolicy)
    timeout_s: float = 10.0            # any single connect or read
    deadline_s: float = 60.0           # the whole download: every hop, byte and wait
    max_body_bytes: int = 32 * 1024 * 1024
    max_redirects: int = 5
    host_connections: int = 4          # downloads in flight per host, per process
    host_requests_per_s: float = 20.0  # request starts per host per second, per process; 0: no cap
    max_retry_after_s: float = 30.0    # longest Retry-After honoured; longer fails as transient
    retry_after_attempts: int = 2      # how many 429/503 answers are waited out per download
    contact: str | None = None         # the operator's URL or e-mail, sent in the User-Agent
    robots_txt: bool = False           # also obey each host's robots.txt (fetched once per host and process)
    user_agent_token: str = "litflow"  # the token X-Robots-Tag directives may address
    disallowed_directives: tuple[str, ...] = DISALLOWED_DIRECTIVES

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.deadline_s <= 0 or self.timeout_s <= 0 or self.max_redirects < 0:
            raise ValueError("max_body_bytes, deadline_s and timeout_s must be positive, max_redirects >= 0")
        if self.host_connections < 1 or self.host_requests_per_s < 0:
            raise ValueError("host_connections must be >= 1 and host_requests_per_s >= 0")

    @property
    def user_agent(self) -> str:
        contact = f"; +{self.contact}" if self.contact else ""
        return f"{self.user_agent_token}/{VERSION} (image-text corpus builder{contact})"

    def describe(self) -> dict:
        return {
            "url_policy": self.url_policy.describe(), "user_agent": self.user_agent,
            "timeout_s": self.timeout_s, "deadline_s": self.deadline_s, "max_body_bytes": self.max_body_bytes,
            "max_redirects": self.max_redirects, "host_connections": self.host_connections,
            "host_requests_per_s": self.host_requests_per_s, "max_retry_after_s": self.max_retry_after_s,
            "retry_after_attempts": self.retry_after_attempts, "robots_txt": self.robots_txt,
            "disallowed_directives": list(self.disallowed_directives),
            "scope_of_host_limits": "per host name, per downloader process",
        }


class FetchFailed(Exception):
    """A download that did not yield a body: its reason and detail."""

    def __init__(self, reason: IngestReason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    @property
    def message(self) -> str:
        return own_error(self.reason, self.detail)


class HostGate:
    """Per-host limits shared by the threads of one process: at most ``connections`` holders at
    once and at least ``1/requests_per_s`` between two starts; :meth:`hold_off` pushes a host's
    next start back (a Retry-After). Entries with nothing in flight and no wait pending are
    dropped, so the table holds only the hosts being downloaded from."""

    def __init__(self, connections: int, requests_per_s: float):
        self._connections = connections
        self._interval = 1.0 / requests_per_s if requests_per_s > 0 else 0.0
        self._lock = threading.Condition()
        self._hosts: dict[str, list[float]] = {}  # host -> [in flight, earliest next start]

    def acquire(self, host: str) -> None:
        with self._lock:
            while True:
                entry = self._hosts.setdefault(host, [0, 0.0])
                now = time.monotonic()
                if entry[0] < self._connections and now >= entry[1]:
                    entry[0] += 1
                    entry[1] = now + self._interval
                    return
                self._lock.wait(timeout=None if entry[0] >= self._connections else entry[1] - now)

    def release(self, host: str) -> None:
        with self._lock:
            entry = self._hosts[host]
            entry[0] -= 1
            if entry[0] == 0 and entry[1] <= time.monotonic():
                del self._hosts[host]
            self._lock.notify_all()

    def hold_off(self, host: str, seconds: float) -> None:
        with self._lock:
            entry = self._hosts.setdefault(host, [0, 0.0])
            entry[1] = max(entry[1], time.monotonic() + seconds)
            self._lock.notify_all()

    def __len__(self) -> int:
        return len(self._hosts)


class _Watchdog:
    """One thread per process that shuts a socket down at its deadline: a blocked read then
    returns at once, whatever the server does."""

    def __init__(self):
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._live: set[int] = set()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: float) -> int:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="litflow-fetch-watchdog", daemon=True)
                self._thread.start()
            ident = next(self._ids)
            heapq.heappush(self._heap, (deadline, ident, sock))
            self._live.add(ident)
            self._lock.notify()
            return ident

    def forget(self, ident: int) -> None:
        with self._lock:
            self._live.discard(ident)

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._lock.wait()
                    continue
                deadline, ident, sock = self._heap[0]
                now = time.monotonic()
                if now < deadline:
                    self._lock.wait(timeout=deadline - now)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(ident)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


_WATCHDOG = _Watchdog()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to one checked address; the Host header stays the URL's host."""

    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to one checked address, the certificate verified against the URL's host."""

    def __init__(self, host, port, address, timeout, context):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def robots_opt_out(headers: http.client.HTTPMessage, token: str, directives: tuple[str, ...]) -> str | None:
    """The X-Robots-Tag value that opts this image out for ``token`` (or every agent), else None."""
    wanted = {d.lower() for d in directives}
    for value in headers.get_all("X-Robots-Tag") or []:
        agent, _, rest = value.partition(":") if ":" in value else ("", "", value)
        agent = agent.strip().lower()
        if agent and agent != token.lower():
            continue
        if wanted & {d.strip().lower() for d in rest.split(",")}:
            return value.strip()
    return None


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Fetcher:
    """Downloads under one :class:`FetchPolicy`; thread-safe, one per process and run."""

    def __init__(self, policy: FetchPolicy, resolve: Resolver | None = None):
        self.policy = policy
        self.resolve = resolve or cached_resolver()
        self.gate = HostGate(policy.host_connections, policy.host_requests_per_s)
        self._tls = ssl.create_default_context()
        self._robots: OrderedDict[str, urllib.robotparser.RobotFileParser] = OrderedDict()
        self._robots_lock = threading.Lock()

    def robots_for(self, url: str) -> urllib.robotparser.RobotFileParser:
        """The rules of the URL's origin, from its /robots.txt fetched under this policy (cached,
        at most ROBOTS_CACHE origins). As RFC 9309 says: a 4xx answer allows everything; a
        server error or no answer at all disallows everything for now."""
        parts = urlsplit(url)
        origin = f"{parts.scheme.lower()}://{parts.netloc.lower()}"
        with self._robots_lock:
            if origin in self._robots:
                self._robots.move_to_end(origin)
                return self._robots[origin]
        rules = urllib.robotparser.RobotFileParser(f"{origin}/robots.txt")
        try:
            rules.parse(self._fetch(f"{origin}/robots.txt", robots=False).decode("utf-8", "replace").splitlines())
        except FetchFailed as failed:
            if failed.reason in TRANSIENT_REASONS:
                rules.disallow_all = True
            else:
                rules.allow_all = True
        with self._robots_lock:
            self._robots[origin] = rules
            while len(self._robots) > ROBOTS_CACHE:
                self._robots.popitem(last=False)
        return rules

    def fetch(self, url: str) -> bytes:
        """The body of ``url`` after its redirects; raise :class:`FetchFailed` with a reason."""
        return self._fetch(url, robots=self.policy.robots_txt)

    def _fetch(self, url: str, robots: bool) -> bytes:
        """:meth:`fetch`, each hop first checked against its origin's robots.txt when ``robots``.

        The deadline starts when the first request may start: time spent queueing behind this
        process's own per-host limit is not the server's doing."""
        deadline = None
        chain = [url]
        waits = 0
        while True:
            hop = len(chain) - 1
            try:
                addresses = self.policy.url_policy.addresses(url, self.resolve)
            except Refused as refused:
                if hop == 0:
                    raise FetchFailed(refused.reason, str(refused)) from None
                if refused.reason is IngestReason.DNS_FAILURE:
                    raise FetchFailed(refused.reason, f"hop {hop}: {refused}") from None
                raise FetchFailed(IngestReason.BLOCKED_REDIRECT, f"hop {hop}: {chain[-2]} -> {url}: {refused}"[:500]) from None
            if robots and not self.robots_for(url).can_fetch(self.policy.user_agent_token, url):
                raise FetchFailed(IngestReason.ROBOTS_DISALLOWED, f"robots.txt disallows {url}"[:500])
            host = (urlsplit(url).hostname or "").lower()
            self.gate.acquire(host)
            try:
                deadline = deadline or time.monotonic() + self.policy.deadline_s
                status, headers, body = self._one_request(url, str(addresses[0]), deadline)
            finally:
                self.gate.release(host)
            if status in REDIRECT_STATUSES and headers.get("Location"):
                target = urljoin(url, headers["Location"].strip())
                if target in chain:
                    raise FetchFailed(IngestReason.TOO_MANY_REDIRECTS,
                                      f"redirect loop: {' -> '.join(chain + [target])}"[:500])
                if hop + 1 > self.policy.max_redirects:
                    raise FetchFailed(IngestReason.TOO_MANY_REDIRECTS,
                                      f"more than {self.policy.max_redirects} redirects: {' -> '.join(chain[:3])} ..."[:500])
                chain.append(target)
                url = target
                continue
            if status in RETRY_AFTER_STATUSES:
                wait = retry_after_s(headers.get("Retry-After"))
                wait = min(2.0 ** waits, self.policy.max_retry_after_s) if wait is None else wait
                self.gate.hold_off(host, min(wait, self.policy.max_retry_after_s))
                left = deadline - time.monotonic()
                if waits < self.policy.retry_after_attempts and wait <= min(self.policy.max_retry_after_s, left):
                    waits += 1
                    time.sleep(wait)
                    continue
                reason = IngestReason.HTTP_429 if status == 429 else IngestReason.HTTP_5XX
                raise FetchFailed(reason, f"HTTP Error {status} after {waits} wait(s); "
                                          f"Retry-After {headers.get('Retry-After')!r}")
            if not 200 <= status < 300:
                detail = f"HTTP Error {status}: {url}"[:500]
                raise FetchFailed(classify_error(detail), detail)  # the one status -> reason table
            return body

    def _one_request(self, url: str, address: str, deadline: float) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One GET to a checked address: (status, headers, body); the body only for a 2xx."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        timeout = min(self.policy.timeout_s, max(0.001, deadline - time.monotonic()))
        if parts.scheme.lower() == "https":
            conn = _PinnedHTTPSConnection(host, parts.port or 443, address, timeout, self._tls)
        else:
            conn = _PinnedHTTPConnection(host, parts.port or 80, address, timeout)
        # what a browser sends for a list's unencoded spaces and non-ASCII (requests does the same)
        path = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=_URL_SAFE)
        watched = None
        try:
            conn.connect()
            watched = _WATCHDOG.watch(conn.sock, deadline)
            conn.putrequest("GET", path)
            conn.putheader("User-Agent", self.policy.user_agent)
            conn.putheader("Accept", "image/*,*/*;q=0.5")
            conn.endheaders()
            response = conn.getresponse()
            status = response.status
            if not 200 <= status < 300:
                return status, response.headers, b""
            opted_out = robots_opt_out(response.headers, self.policy.user_agent_token,
                                       self.policy.disallowed_directives)
            if opted_out:
                raise FetchFailed(IngestReason.ROBOTS_DISALLOWED, f"X-Robots-Tag: {opted_out}")
            return status, response.headers, self._read_body(response, deadline)
        except FetchFailed:
            raise
        except (OSError, http.client.HTTPException, ValueError) as err:
            raise self._failure(err, deadline) from None
        finally:
            if watched is not None:
                _WATCHDOG.forget(watched)
            conn.close()

    def _read_body(self, response: http.client.HTTPResponse, deadline: float) -> bytes:
        cap = self.policy.max_body_bytes
        length = response.getheader("Content-Length")
        if length and length.strip().isdigit() and int(length) > cap:
            raise FetchFailed(IngestReason.BODY_TOO_LARGE, f"Content-Length {int(length)} > {cap} bytes")
        pieces, size = [], 0
        while True:
            piece = response.read1(READ_PIECE)  # at most one read from the socket: the cap holds to a piece
            if not piece:
                break
            size += len(piece)
            if size > cap:
                raise FetchFailed(IngestReason.BODY_TOO_LARGE, f"more than {cap} bytes read, no end in sight")
            pieces.append(piece)
        if time.monotonic() >= deadline:  # the watchdog's shutdown looks like an early end
            raise FetchFailed(IngestReason.DOWNLOAD_DEADLINE, f"not complete after {self.policy.deadline_s} s")
        return b"".join(pieces)

    def _failure(self, err: Exception, deadline: float) -> FetchFailed:
        if time.monotonic() >= deadline:
            # the same words whatever the socket said when the watchdog shut it: same list, same report
            return FetchFailed(IngestReason.DOWNLOAD_DEADLINE, f"not complete after {self.policy.deadline_s} s")
        text = f"{type(err).__name__}: {err}"[:300]
        if isinstance(err, ConnectionRefusedError):
            return FetchFailed(IngestReason.CONNECTION_REFUSED, text)
        if isinstance(err, (TimeoutError, socket.timeout)):
            return FetchFailed(IngestReason.TIMEOUT, f"no answer within {self.policy.timeout_s} s ({text})")
        if isinstance(err, socket.gaierror):
            return FetchFailed(IngestReason.DNS_FAILURE, text)
        return FetchFailed(IngestReason.CONNECTION_ERROR, text)
