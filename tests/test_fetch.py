"""The fetcher against real sockets: a misbehaving "public" server on 127.0.0.1 (allowed) and an
"internal" one on 127.0.0.2 (refused by the URL policy) that must never see a request."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from curation.fetch import Fetcher, FetchFailed, FetchPolicy, HostGate, retry_after_s, robots_opt_out
from curation.url_safety import UrlPolicy
from infra.contract import IngestReason
from tests.hostile_server import serve_hostile

CAP = 1 << 20


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(buffer, "PNG")
    return buffer.getvalue()


IMAGES = {"red.png": _png("red"), "blue.png": _png("blue")}


@pytest.fixture(scope="module")
def servers():
    with serve_hostile(IMAGES, "127.0.0.1", cap=CAP) as public, serve_hostile(IMAGES, "127.0.0.2") as internal:
        yield public, internal


def policy(**changes) -> FetchPolicy:
    settings = dict(url_policy=UrlPolicy.allowing(["127.0.0.1/32"]), max_body_bytes=CAP, deadline_s=2.0,
                    timeout_s=5.0, host_requests_per_s=0)
    settings.update(changes)
    return FetchPolicy(**settings)


def failure(fetcher: Fetcher, url: str) -> FetchFailed:
    with pytest.raises(FetchFailed) as caught:
        fetcher.fetch(url)
    return caught.value


def test_a_plain_image_and_a_chain_within_the_limit(servers):
    (public, log), _ = servers
    fetcher = Fetcher(policy())
    assert fetcher.fetch(f"{public}/img/red.png") == IMAGES["red.png"]
    assert fetcher.fetch(f"{public}/redirect/5/blue.png") == IMAGES["blue.png"]  # 5 redirects: the default limit
    assert all(agent.startswith("litflow/") for agent in log.user_agents)


def test_a_chain_longer_than_the_limit_and_a_loop(servers):
    (public, _), _ = servers
    fetcher = Fetcher(policy())
    too_long = failure(fetcher, f"{public}/redirect/6/blue.png")
    assert too_long.reason is IngestReason.TOO_MANY_REDIRECTS and "more than 5" in too_long.detail
    loop = failure(fetcher, f"{public}/loop/a")
    assert loop.reason is IngestReason.TOO_MANY_REDIRECTS and "loop" in loop.detail


def test_a_redirect_to_an_internal_address_is_refused_before_connecting(servers):
    (public, _), (internal, internal_log) = servers
    fetcher = Fetcher(policy())
    before = internal_log.hits()
    # through two public hops, then to the internal server
    failed = failure(fetcher, f"{public}/to?u={public}/to?u={internal}/img/red.png")
    assert failed.reason is IngestReason.BLOCKED_REDIRECT
    assert "hop 2" in failed.detail and "127.0.0.2" in failed.detail
    # schemes are checked on every hop too
    assert failure(fetcher, f"{public}/to?u=file:///etc/passwd").reason is IngestReason.BLOCKED_REDIRECT
    assert internal_log.hits() == before == 0


def test_the_connection_goes_to_the_address_that_was_checked(servers):
    """DNS rebinding: the name resolves to a public address when the list was vetted and to an
    internal one at fetch time; the fetcher checks what it connects to, so it refuses."""
    (public, _), (internal, internal_log) = servers
    answers = iter([["127.0.0.1"], ["127.0.0.2"]])
    rebinding = lambda host: next(answers)  # noqa: E731
    port = internal.rsplit(":", 1)[1]
    url = f"http://images.example:{port}/img/red.png"
    assert policy().url_policy.check(url, rebinding) is None  # the vetting on the driver passes
    failed = failure(Fetcher(policy(), resolve=rebinding), url)
    assert failed.reason is IngestReason.BLOCKED_ADDRESS and "127.0.0.2" in failed.detail
    # a redirect to a name that resolves internally is refused the same way
    named = failure(Fetcher(policy(), resolve=lambda host: ["127.0.0.2"]), f"{public}/to?u={url}")
    assert named.reason is IngestReason.BLOCKED_REDIRECT
    assert internal_log.hits() == 0
    # and a name that resolves to the public server is fetched from the address it resolved to
    public_port = public.rsplit(":", 1)[1]
    assert Fetcher(policy(), resolve=lambda host: ["127.0.0.1"]).fetch(
        f"http://images.example:{public_port}/img/red.png") == IMAGES["red.png"]


def test_bodies_over_the_cap_with_and_without_content_length(servers):
    (public, _), _ = servers
    fetcher = Fetcher(policy())
    announced = failure(fetcher, f"{public}/big-cl")
    assert announced.reason is IngestReason.BODY_TOO_LARGE and f"Content-Length {2 * CAP}" in announced.detail
    endless = failure(fetcher, f"{public}/big-chunked")
    assert endless.reason is IngestReason.BODY_TOO_LARGE and f"more than {CAP} bytes" in endless.detail


def test_a_slow_drip_ends_at_the_deadline(servers):
    (public, _), _ = servers
    fetcher = Fetcher(policy(deadline_s=1.5))
    started = time.monotonic()
    failed = failure(fetcher, f"{public}/drip")
    elapsed = time.monotonic() - started
    assert failed.reason is IngestReason.DOWNLOAD_DEADLINE
    assert 1.5 <= elapsed < 4.0  # every byte came within the 5 s socket timeout: only the deadline ends it


def test_429_honours_retry_after_and_refuses_a_wait_beyond_the_bound(servers):
    (public, log), _ = servers
    fetcher = Fetcher(policy(deadline_s=10))
    started = time.monotonic()
    assert fetcher.fetch(f"{public}/retry-after/1/1/red.png") == IMAGES["red.png"]
    assert time.monotonic() - started >= 1.0
    starts = log.starts("/retry-after/1/1/")
    assert len(starts) == 2 and starts[1] - starts[0] >= 1.0
    started = time.monotonic()
    refused = failure(fetcher, f"{public}/retry-after/120/5/red.png")
    assert refused.reason is IngestReason.HTTP_429 and "120" in refused.detail
    assert time.monotonic() - started < 1.0  # 120 s is past max_retry_after_s: failed at once, as transient


@pytest.mark.parametrize("value, fetched", [
    ("noai", False), ("noimageai, nofollow", False), ("litflow: noai", False),
    ("otherbot: noai", True), ("nofollow", True),
])
def test_x_robots_tag_opt_outs_are_read_before_the_body(servers, value, fetched):
    (public, _), _ = servers
    fetcher = Fetcher(policy())
    url = f"{public}/robots/{value}/red.png"
    if fetched:
        assert fetcher.fetch(url) == IMAGES["red.png"]
    else:
        assert failure(fetcher, url).reason is IngestReason.ROBOTS_DISALLOWED


def test_the_per_host_connection_limit_is_observed_at_the_server(servers):
    (public, log), _ = servers
    fetcher = Fetcher(policy(host_connections=2, deadline_s=10))
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(fetcher.fetch, [f"{public}/slow/red.png"] * 8))
    assert bodies == [IMAGES["red.png"]] * 8
    assert log.max_in_flight == 2  # reached, never passed
    assert len(fetcher.gate) == 0  # nothing in flight: the host's entry is gone


def test_the_per_host_request_rate_is_observed_at_the_server(servers):
    (public, log), _ = servers
    fetcher = Fetcher(policy(host_connections=8, host_requests_per_s=10, deadline_s=10))
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(fetcher.fetch, [f"{public}/img/blue.png?{i}" for i in range(6)]))
    starts = [t for t in log.starts("/img/blue.png")][-6:]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # 10 a second: starts 0.1 s apart at the client; the server sees them give or take its scheduling
    assert starts[-1] - starts[0] >= 5 * 0.1 - 0.05 and min(gaps) >= 0.05, gaps


def test_connection_refused_and_timeouts_have_their_reasons():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        refused = failure(Fetcher(policy()), f"http://127.0.0.1:{port}/x.png")  # bound, not listening
        assert refused.reason is IngestReason.CONNECTION_REFUSED
        sock.listen(1)  # accepts into the backlog, never answers
        silent = failure(Fetcher(policy(timeout_s=0.5, deadline_s=5)), f"http://127.0.0.1:{port}/x.png")
        assert silent.reason is IngestReason.TIMEOUT


def test_retry_after_values():
    assert retry_after_s("7") == 7.0
    assert retry_after_s("Wed, 02 Dec 2026 10:00:30 GMT", now=1796205600.0) == 30.0
    assert retry_after_s("soon") is None and retry_after_s(None) is None


def test_robots_parsing_addresses_agents():
    from email.message import Message

    headers = Message()
    headers["X-Robots-Tag"] = "googlebot: noindex"
    headers["X-Robots-Tag"] = "litflow: noimageai"
    assert robots_opt_out(headers, "litflow", ("noimageai",)) == "litflow: noimageai"
    assert robots_opt_out(headers, "otherbot", ("noindex", "noimageai")) is None


def test_host_gate_holds_off_every_thread_after_a_retry_after():
    gate = HostGate(connections=4, requests_per_s=0)
    gate.hold_off("a.example", 0.5)
    started = time.monotonic()
    done = []

    def take():
        gate.acquire("a.example")
        done.append(time.monotonic() - started)
        gate.release("a.example")

    threads = [threading.Thread(target=take) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(done) == 3 and min(done) >= 0.5
    gate.acquire("b.example")  # another host is not held off
    gate.release("b.example")


def test_robots_txt_is_obeyed_when_asked_fetched_once_per_origin(servers):
    (public, log), _ = servers
    before = log.hits("/robots.txt")
    obeying = Fetcher(policy(robots_txt=True))
    assert obeying.fetch(f"{public}/img/red.png") == IMAGES["red.png"]
    refused = failure(obeying, f"{public}/private/red.png")
    assert refused.reason is IngestReason.ROBOTS_DISALLOWED and "robots.txt" in refused.detail
    # a redirect into the disallowed path is refused at that hop
    assert failure(obeying, f"{public}/to?u=/private/blue.png").reason is IngestReason.ROBOTS_DISALLOWED
    assert log.hits("/robots.txt") - before == 1
    assert Fetcher(policy()).fetch(f"{public}/private/red.png") == IMAGES["red.png"]  # off by default
    assert log.hits("/robots.txt") - before == 1


def test_an_unreachable_robots_txt_disallows_and_a_missing_one_allows(tmp_path):
    import socket

    from curation.file_server import serve_folder

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens: robots.txt unreachable
        rules = Fetcher(policy(robots_txt=True)).robots_for(f"http://127.0.0.1:{port}/x.png")
        assert rules.disallow_all
    (tmp_path / "red.png").write_bytes(IMAGES["red.png"])
    with serve_folder(tmp_path) as base:  # no robots.txt there: 404
        fetcher = Fetcher(policy(robots_txt=True))
        assert fetcher.robots_for(f"{base}/red.png").allow_all
        assert fetcher.fetch(f"{base}/red.png") == IMAGES["red.png"]
