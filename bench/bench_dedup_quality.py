"""De-duplication quality: recall per edit and false-positive rate, pHash alone vs full method.

    .venv/bin/python bench/bench_dedup_quality.py [--clipart 120 --emoji 60 --radius 8 --tower efficientnet-lite0]

Originals are real images: openclipart PNGs (a stable sample across categories: flags,
playing cards, stars... are natural hard negatives), Noto emoji, and scikit-image's bundled
photos. Each original is the *eval* image; each edited copy is what the *corpus* holds, stored
like a curated shard image (RGB JPEG q95, shorter side <= 256 px). Edits (definitions ours):

  jpeg_q30 / jpeg_q50   re-encoded at that JPEG quality
  resize_0.5            half the width and height
  crop_5/10/20          centred crop keeping (100-p)% of each side
  pad_10                a black border adding 10% to each side (5% each edge)
  mirror                horizontal flip
  grayscale             luminance only
  rotate_5              5 degrees, white fill, same canvas
  bright_+20 / -20      brightness x1.2 / x0.8
  text_overlay          a caption-like line of text drawn over the lower part

Signals: ``phash`` (distance <= radius), ``phash+mirror`` (also the eval image's mirror hash),
``embedding`` (cosine of the locked tower's embeddings >= a threshold) and ``full`` (any).
The embedding threshold is calibrated on the distinct-image pairs of one half of the originals
(the largest threshold-free rate <= --max-fpr) and everything is reported on the other half,
so the threshold is not tuned on the pairs it is judged by. FPR = flagged distinct-image pairs /
all distinct-image pairs (originals vs originals of the evaluation half).
Results go to bench/results/dedup_quality.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dedup.embedding import calibrate_threshold, embed_all, tower_embedder  # noqa: E402
from dedup.phash import DEFAULT_SETTINGS, hash_image_bytes  # noqa: E402


def _on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def _crop(image, p):
    w, h = image.size
    dx, dy = round(w * p / 200), round(h * p / 200)
    return image.crop((dx, dy, w - dx, h - dy))


def _text(image):
    image = image.copy()
    draw = ImageDraw.Draw(image)
    size = max(10, image.height // 12)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:
        font = ImageFont.load_default()
    draw.text((image.width // 20, image.height * 3 // 4), "www.example.com  free download", fill=(255, 0, 0), font=font)
    return image


def _jpeg_q(image, q):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=q)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


EDITS = {
    "jpeg_q30": lambda im: _jpeg_q(im, 30),
    "jpeg_q50": lambda im: _jpeg_q(im, 50),
    "resize_0.5": lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.Resampling.BICUBIC),
    "crop_5": lambda im: _crop(im, 5),
    "crop_10": lambda im: _crop(im, 10),
    "crop_20": lambda im: _crop(im, 20),
    "pad_10": lambda im: ImageOps.expand(im, border=(round(im.width * 0.05), round(im.height * 0.05)), fill="black"),
    "mirror": ImageOps.mirror,
    "grayscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "rotate_5": lambda im: im.rotate(5, resample=Image.Resampling.BICUBIC, fillcolor="white"),
    "bright_+20": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "bright_-20": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "text_overlay": _text,
}


def shard_bytes(image: Image.Image) -> bytes:
    """As a curated shard stores it: RGB JPEG q95, shorter side at most 256 px."""
    image = image.convert("RGB")
    scale = 256 / min(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def originals(clipart: int, emoji: int) -> list[tuple[str, Image.Image]]:
    from curation.demo_data import fetch_all

    demo = fetch_all()
    key = lambda p: hashlib.sha256(str(p.relative_to(demo.cache)).encode()).hexdigest()  # noqa: E731
    clip = [p for p in (demo.cache / "openclipart/png").rglob("*.png") if 2_000 < p.stat().st_size < 400_000]
    chosen = sorted(clip, key=key)[:clipart] + sorted((demo.cache / "emoji/img/google/64").glob("*.png"), key=key)[:emoji]
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in chosen:
            image = _on_white(Image.open(path))
            image.thumbnail((512, 512))
            out.append((str(path.relative_to(demo.cache)), image))
    try:
        import skimage.data as data

        for name in ("astronaut", "camera", "coffee", "chelsea", "rocket", "horse", "eagle", "brick", "grass",
                     "gravel", "moon", "page", "text", "clock", "coins", "hubble_deep_field", "logo", "retina",
                     "immunohistochemistry", "cat", "colorwheel", "motorcycle"):
            loader = getattr(data, name, None) or getattr(data, f"stereo_{name}", None)
            if loader is None:
                continue
            try:
                array = loader()
            except Exception:  # noqa: BLE001 - a photo that needs a download: skip it
                continue
            array = array[0] if isinstance(array, tuple) else array
            if array.dtype == bool:
                array = array.astype(np.uint8) * 255
            image = _on_white(Image.fromarray(array))
            image.thumbnail((512, 512))
            out.append((f"skimage/{name}", image))
    except ImportError:
        print("scikit-image not installed: no photos", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clipart", type=int, default=120)
    parser.add_argument("--emoji", type=int, default=60)
    parser.add_argument("--radius", type=int, default=8)
    parser.add_argument("--tower", default="efficientnet-lite0", help="image tower for the embedding check ('none' = skip)")
    parser.add_argument("--max-fpr", type=float, default=1e-4)
    args = parser.parse_args()
    started = time.perf_counter()
    items = originals(args.clipart, args.emoji)
    names = [n for n, _ in items]
    half = np.array([int(hashlib.sha256(n.encode()).hexdigest(), 16) % 2 for n in names])  # 0 calibrate, 1 evaluate
    eval_blobs = [_png(im) for _, im in items]  # the eval image file the index hashes
    eval_hashes = np.array([hash_image_bytes(b, DEFAULT_SETTINGS) for b in eval_blobs], np.uint64)
    edited = {edit: [Image.open(io.BytesIO(shard_bytes(fn(im)))).convert("RGB") for _, im in items] for edit, fn in EDITS.items()}
    edited_hashes = {edit: np.array([hash_image_bytes(shard_bytes(im))[0] for im in ims], np.uint64) for edit, ims in edited.items()}
    print(f"{len(items)} originals ({sum(n.startswith('openclipart') for n in names)} openclipart, "
          f"{sum(n.startswith('emoji') for n in names)} emoji, {sum(n.startswith('skimage') for n in names)} photos), "
          f"{len(EDITS)} edits, radius {args.radius}", flush=True)

    embed = None if args.tower == "none" else tower_embedder(args.tower)
    if embed:
        t = time.perf_counter()
        eval_vec = embed_all(embed, [Image.open(io.BytesIO(b)) for b in eval_blobs])
        edit_vec = {edit: embed_all(embed, ims) for edit, ims in edited.items()}
        print(f"embedded {len(items) * (1 + len(EDITS))} images with {args.tower} in {time.perf_counter() - t:.0f} s", flush=True)

    def distinct_pairs(group):
        idx = np.flatnonzero(half == group)
        i, j = np.triu_indices(len(idx), 1)
        return idx[i], idx[j]

    def phash_dist(h, i, j, mirror=True):
        d = np.bitwise_count(h[i] ^ eval_hashes[j, 0])
        return np.minimum(d, np.bitwise_count(h[i] ^ eval_hashes[j, 1])) if mirror else d

    threshold = None
    if embed:
        ci, cj = distinct_pairs(0)
        calib = np.einsum("ij,ij->i", eval_vec[ci], eval_vec[cj])
        threshold = calibrate_threshold(calib, args.max_fpr)
        print(f"embedding threshold {threshold:.4f} (calibrated on {len(ci):,} distinct pairs of the other half)")

    ei, ej = distinct_pairs(1)
    own = eval_hashes[:, 0]
    fp = {"phash": float(np.mean(phash_dist(own, ei, ej, mirror=False) <= args.radius)),
          "phash+mirror": float(np.mean(phash_dist(own, ei, ej) <= args.radius))}
    # both directions for the mirror signal: corpus i vs eval j's mirror, and j vs i's
    fp["phash+mirror"] = float(np.mean((phash_dist(own, ei, ej) <= args.radius) | (phash_dist(own, ej, ei) <= args.radius)))
    if embed:
        cos = np.einsum("ij,ij->i", eval_vec[ei], eval_vec[ej])
        fp["embedding"] = float(np.mean(cos >= threshold))
        fp["full"] = float(np.mean((cos >= threshold) | (phash_dist(own, ei, ej) <= args.radius)
                                   | (phash_dist(own, ej, ei) <= args.radius)))
    test = np.flatnonzero(half == 1)
    rows = []
    for edit in EDITS:
        h = edited_hashes[edit]
        ph = np.bitwise_count(h[test] ^ eval_hashes[test, 0]) <= args.radius
        pm = ph | (np.bitwise_count(h[test] ^ eval_hashes[test, 1]) <= args.radius)
        row = {"edit": edit, "phash": float(ph.mean()), "phash+mirror": float(pm.mean())}
        if embed:
            c = np.einsum("ij,ij->i", edit_vec[edit][test], eval_vec[test])
            row["embedding"] = float(np.mean(c >= threshold))
            row["full"] = float(np.mean(pm | (c >= threshold)))
            row["cos_min"] = float(c.min())
        rows.append(row)
    signals = [s for s in ("phash", "phash+mirror", "embedding", "full") if s in rows[0]]
    print(f"\nrecall at radius {args.radius} over {len(test)} originals (evaluation half)")
    print(f"{'edit':14s}" + "".join(f"{s:>14s}" for s in signals))
    for row in rows:
        print(f"{row['edit']:14s}" + "".join(f"{row[s]:14.3f}" for s in signals))
    print(f"{'min recall':14s}" + "".join(f"{min(r[s] for r in rows):14.3f}" for s in signals))
    print(f"{'FPR':14s}" + "".join(f"{fp[s]:14.2e}" for s in signals) + f"   ({len(ei):,} distinct pairs)")
    out = Path(__file__).resolve().parent / "results" / "dedup_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"radius": args.radius, "tower": args.tower, "threshold": threshold, "originals": len(items),
                               "evaluated": int(len(test)), "distinct_pairs": int(len(ei)), "recall": rows, "fpr": fp,
                               "seconds": time.perf_counter() - started}, indent=2) + "\n")
    print(f"written {out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
