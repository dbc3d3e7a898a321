"""An HTTP server on loopback that misbehaves on purpose, and one that must never be reached.

Routes of :func:`serve_hostile` (``/img/NAME`` serves ``images[NAME]``):
- ``/redirect/N/NAME``: N redirects, then the image;
- ``/to?u=URL``: one redirect to any URL (an internal one, say);
- ``/loop/a`` <-> ``/loop/b``: redirects forever;
- ``/big-cl``: announces ``2 * cap`` bytes in Content-Length and starts sending them;
- ``/big-chunked``: a chunked body that never ends, as fast as it can;
- ``/drip``: a chunked body of one byte every 0.1 s, forever;
- ``/retry-after/S/K/NAME``: 429 with ``Retry-After: S`` for its first K requests, then the image;
- ``/flaky/K/NAME``: 500 for its first K requests, then the image (a failure a retry run recovers);
- ``/robots/VALUE/NAME``: the image with ``X-Robots-Tag: VALUE``;
- ``/slow/NAME``: the image after 0.3 s (connections in flight are counted);
- ``/robots.txt``: disallows ``/private/`` to litflow and ``/`` to ``otherbot``; ``/private/NAME`` is the image.

Every request is recorded (path, start time); the counters are what tests assert on.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class ServerLog:
    requests: list[tuple[str, float]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    user_agents: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hits(self, prefix: str = "/") -> int:
        with self.lock:
            return sum(path.startswith(prefix) for path, _ in self.requests)

    def starts(self, prefix: str) -> list[float]:
        with self.lock:
            return sorted(t for path, t in self.requests if path.startswith(prefix))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def _handler(images: dict[str, bytes], cap: int, log: ServerLog):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - stdlib signature
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def _image(self, name: str, headers: dict | None = None) -> None:
            if name not in images:
                self._send(404)
            else:
                self._send(200, images[name], {"Content-Type": "image/png", **(headers or {})})

        def _chunked(self, piece: bytes, pause: float) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
                    if pause:
                        time.sleep(pause)
            except OSError:
                pass  # the client hung up: what it should do

        def do_GET(self):  # noqa: N802 - stdlib name
            path = urlsplit(self.path).path
            with log.lock:
                log.requests.append((path, time.monotonic()))
                log.user_agents.add(self.headers.get("User-Agent", ""))
                count = sum(p == path for p, _ in log.requests)
            parts = [unquote(p) for p in path.strip("/").split("/")]
            head = parts[0]
            if head == "img" or head == "private":
                self._image(parts[1])
            elif head == "robots.txt":
                self._send(200, b"User-agent: otherbot\nDisallow: /\n\nUser-agent: litflow\nDisallow: /private/\n",
                           {"Content-Type": "text/plain"})
            elif head == "redirect":
                left = int(parts[1])  # redirects still to come
                if left == 0:
                    self._image(parts[2])
                else:
                    self._send(302, headers={"Location": f"/redirect/{left - 1}/{parts[2]}"})
            elif head == "to":
                self._send(302, headers={"Location": parse_qs(urlsplit(self.path).query)["u"][0]})
            elif head == "loop":
                self._send(302, headers={"Location": "/loop/b" if parts[1] == "a" else "/loop/a"})
            elif head == "big-cl":
                self.send_response(200)
                self.send_header("Content-Length", str(2 * cap))
                self.end_headers()
                try:
                    self.wfile.write(b"\0" * min(2 * cap, 1 << 16))
                except OSError:
                    pass
            elif head == "big-chunked":
                self._chunked(b"\0" * 65536, 0)
            elif head == "drip":
                self._chunked(b"\0", 0.1)
            elif head == "retry-after":
                seconds, first_k, name = parts[1], int(parts[2]), parts[3]
                if count <= first_k:
                    self._send(429, b"slow down", {"Retry-After": seconds})
                else:
                    self._image(name)
            elif head == "flaky":  # /flaky/K/NAME: 500 for the first K requests of this path, then the image
                if count <= int(parts[1]):
                    self._send(500, b"try again later")
                else:
                    self._image(parts[2])
            elif head == "robots":
                self._image(parts[2], {"X-Robots-Tag": parts[1]})
            elif head == "slow":
                with log.lock:
                    log.in_flight += 1
                    log.max_in_flight = max(log.max_in_flight, log.in_flight)
                try:
                    time.sleep(0.3)
                finally:
                    # counted out *before* the response is sent: a client can only release its
                    # connection slot (and start another request) after it has the response, so
                    # the count never includes a request the client has already finished (counting
                    # out after sending let a loaded machine show 3 of a limit of 2)
                    with log.lock:
                        log.in_flight -= 1
                self._image(parts[1])
            else:
                self._send(404)

    return Handler


@contextlib.contextmanager
def serve_hostile(images: dict[str, bytes], host: str = "127.0.0.1", cap: int = 1 << 20):
    """Serve the routes above on ``host`` (a loopback address); yields (base URL, log)."""
    log = ServerLog()
    server = _Server((host, 0), _handler(images, cap, log))
    thread = threading.Thread(target=server.serve_forever, name="hostile-http", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
