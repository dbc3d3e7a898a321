"""Shared fixtures: the real demo data (fetched once per session) and a hostile web site."""

from __future__ import annotations

import io
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from curation.demo_data import DemoData, fetch_all  # noqa: E402
from curation.file_server import serve_folder  # noqa: E402
from tests.hostile_server import serve_hostile  # noqa: E402
from tests.demo_shards import write_demo_shards  # noqa: E402
from training.embed_cache import embed_shards  # noqa: E402
from training.image_towers import build_image_tower  # noqa: E402
from training.text_towers import TextSpec  # noqa: E402

# a real openclipart PNG of 20990 x 29700 pixels (623 M): a genuine decompression bomb
REAL_BOMB = "openclipart/png/transportation/roadsigns/stop_sign_right_font_mig_.png"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def demo_data() -> DemoData:
    return fetch_all()


@dataclass
class Row:
    url: str
    caption: str
    expect: str  # "downloaded" or an IngestReason value
    source_file: Path | None = None


def _real_images(demo: DemoData, count: int) -> list[Path]:
    """Small real openclipart and emoji PNGs, chosen by name so the choice is stable."""
    clipart = sorted((demo.cache / "openclipart" / "png" / "animals").rglob("*.png"))
    clipart = [p for p in clipart if p.stat().st_size < 200_000][: count // 2]
    emoji = sorted((demo.cache / "emoji" / "img" / "google" / "64").glob("1f4*.png"))[: count - len(clipart)]
    return clipart + emoji


def build_hostile_site(demo: DemoData, root: Path) -> list[tuple[str, str, str, Path | None]]:
    """Write the hostile site's files under root; return (path_or_url, caption, expect, source)."""
    root.mkdir(parents=True, exist_ok=True)
    entries: list[tuple[str, str, str, Path | None]] = []
    for index, image in enumerate(_real_images(demo, 8)):
        name = f"ok_{index}{image.suffix}"
        (root / name).write_bytes(image.read_bytes())
        entries.append((name, f"real image {image.stem}", "downloaded", image))
    # a real image re-encoded as JPEG, then cut in half
    source = _real_images(demo, 2)[0]
    buffer = io.BytesIO()
    Image.open(source).convert("RGB").resize((400, 300)).save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    entries.append(("truncated.jpg", "a truncated jpeg", "decode_error", None))
    (root / "page.jpg").write_bytes(b"<!doctype html><html><body>Not an image</body></html>")
    entries.append(("page.jpg", "html served as jpg", "not_an_image", None))
    (root / "empty.jpg").write_bytes(b"")
    entries.append(("empty.jpg", "a zero byte file", "empty_file", None))
    (root / "bomb.png").write_bytes((demo.cache / REAL_BOMB).read_bytes())
    entries.append(("bomb.png", "a real decompression bomb", "image_too_large", None))
    entries.append(("missing.jpg", "not on the server", "http_404", None))
    # odd but valid encodings of a real image: must come through, converted to RGB JPEG
    emoji = Image.open(_real_images(demo, 8)[-1])
    odd = {
        "cmyk.jpg": (emoji.convert("RGB").convert("CMYK"), "JPEG", {}),
        "gray16.png": (Image.fromarray(np.asarray(emoji.convert("L"), dtype=np.uint16) * 257), "PNG", {}),
        "palette.png": (emoji.convert("P"), "PNG", {}),
        "gray_alpha.png": (emoji.convert("LA"), "PNG", {}),
        "animated.gif": (emoji.convert("P"), "GIF", {"save_all": True, "append_images": [emoji.convert("P").rotate(90)]}),
    }
    for name, (image, fmt, options) in odd.items():
        image.save(root / name, fmt, **options)
        entries.append((name, f"odd encoding {name}", "downloaded", root / name))
    return entries


# the download limits the ingest tests run under (the hostile server's oversized bodies pass them)
HOSTILE_CAP = 4 << 20
HOSTILE_LIMITS = dict(deadline_s=3.0, max_body_bytes=HOSTILE_CAP, allow=("127.0.0.1",), timeout_s=5)


@pytest.fixture(scope="session")
def internal_site():
    """An "internal" server on 127.0.0.2, which the URL policy refuses: its log must stay empty."""
    with serve_hostile({}, "127.0.0.2") as (base_url, log):
        yield base_url, log


def _misbehaving_rows(hostile: str, internal: str, image: Path) -> list[Row]:
    """Rows served by the misbehaving server, each with the reason the fetcher must give."""
    return [
        Row(f"{hostile}/redirect/2/ok.png", "two redirects, then a real image", "downloaded", image),
        Row(f"{hostile}/to?u={internal}/img/ok.png", "redirect to an internal address", "blocked_redirect"),
        Row(f"{hostile}/loop/a", "a redirect loop", "too_many_redirects"),
        Row(f"{hostile}/big-cl", "Content-Length over the cap", "body_too_large"),
        Row(f"{hostile}/big-chunked", "an endless chunked body", "body_too_large"),
        Row(f"{hostile}/drip", "one byte every 0.1 s, forever", "download_deadline"),
        Row(f"{hostile}/retry-after/1/1/ok.png", "429 with Retry-After 1, then the image", "downloaded", image),
        Row(f"{hostile}/robots/noai/ok.png", "X-Robots-Tag: noai", "robots_disallowed"),
    ]


@pytest.fixture(scope="session")
def hostile_site(demo_data, internal_site, tmp_path_factory):
    """Loopback servers with real images, hostile files and misbehaving answers, plus URLs that
    must be refused.

    Yields (rows, base_url). Private-address URLs are refused before any connection is made;
    a redirect to one is refused before it is followed (``internal_site`` counts any request).
    """
    root = tmp_path_factory.mktemp("hostile_site")
    entries = build_hostile_site(demo_data, root)
    refused_port = free_port()  # nothing listens there
    image = _real_images(demo_data, 1)[0]
    with serve_folder(root) as base_url, serve_hostile({"ok.png": image.read_bytes()}, cap=HOSTILE_CAP) as (hostile, _):
        rows = [Row(f"{base_url}/{path}", caption, expect, src) for path, caption, expect, src in entries]
        rows += _misbehaving_rows(hostile, internal_site[0], image)
        rows += [
            Row(f"http://127.0.0.1:{refused_port}/x.jpg", "connection refused", "connection_refused"),
            Row("http://10.1.2.3/internal.jpg", "private network", "blocked_address"),
            Row("http://169.254.169.254/latest/meta-data/", "cloud metadata", "blocked_address"),
            Row("http://[::1]/x.jpg", "ipv6 loopback, not allowed", "blocked_address"),
            Row("http://224.0.0.1/x.jpg", "multicast", "blocked_address"),
            Row("ftp://127.0.0.1/x.jpg", "not http", "invalid_url"),
            Row("file:///etc/passwd", "local file", "invalid_url"),
            Row("", "empty url", "invalid_url"),
        ]
        yield rows, base_url


# a small scratch text tower: training tests that need it to learn something, fast
SMALL_TEXT = TextSpec(name="scratch", width=64, depth=2, heads=2, vocab_size=1000)


@pytest.fixture(scope="session")
def embedded_demo_corpus(demo_data, tmp_path_factory):
    """4 demo shards of 24 pairs, and the tiny image tower's embedding cache of them (tests only read it)."""
    root = tmp_path_factory.mktemp("embedded_corpus")
    shards = write_demo_shards(demo_data.cache, demo_data.catalogue, root / "shards", 4, 24)
    embed_shards(build_image_tower("tiny"), shards, root / "cache")
    return root
