"""A small static HTTP server on loopback that serves a folder (the demo data cache).

The standard library's ThreadingHTTPServer is enough here: it only has to stand in for the
web during demos, tests and benchmarks, and it must never listen beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # img2dataset opens many connections at once


@contextlib.contextmanager
def serve_folder(root: str | Path, host: str = "127.0.0.1", port: int = 0):
    """Serve ``root`` over HTTP in a background thread; yields the base URL."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: folder to serve does not exist")
    handler = functools.partial(_QuietHandler, directory=str(root))
    try:
        server = _Server((host, port), handler)
    except OSError as err:
        raise RuntimeError(f"cannot serve {root} on {host}:{port}: {err.strerror or err} "
                           f"(is another demo or program using that port?)") from err
    thread = threading.Thread(target=server.serve_forever, name="litflow-file-server", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
