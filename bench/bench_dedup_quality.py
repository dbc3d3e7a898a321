"""De-duplication quality: recall per edit and false-positive rate, pHash alone vs the full method.

    .venv/bin/python bench/bench_dedup_quality.py [--calibrate] [--sample 1] [--clipart 400 --emoji 200 --radius 8]

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

Ground truth: "distinct" must mean distinct. The raw sample holds the same picture twice (one
openclipart drawing filed under two categories, skimage's ``cat`` is ``chelsea``, a ``_bw``
drawing is its colour twin in grey) and emoji that are one drawing recoloured or mirrored
(skin-tone modifiers, the ``27a1`` "facing right" sequences). Those are near-duplicates by the
edits above, so one original per such family is kept (same file name, same name after removing
the modifiers, or the same 32 px grey thumbnail) and the count dropped is printed.

The originals are split in two halves by a hash of their name; each half is its own eval set,
queried with its own originals (negatives) and their edited copies. The verification thresholds
(``dedup.verify.VerifyRules``) were chosen on half 0 of sample 0 (``--calibrate`` prints that
grid and the rule it picks: the highest lowest-recall, where lowest recalls within one original
of the best count as tied, then the fewest false positives, then the stricter rule); the table
is half 1. Half 1 has been looked at while the method was built, so ``--sample 1`` (2, ...)
draws the next originals in the same hash order, disjoint from sample 0 and never used for
tuning, and reports both of its halves (no photos there: scikit-image has only the ones in
sample 0; the embedding-alone threshold is still calibrated on the sample's half 0, the full
method uses no threshold fitted to it). Signals, per (query, eval image of the same half):

  phash          pHash distance <= radius
  phash+mirror   ... or to the eval image's mirror hash (what the eval index stores)
  embedding      cosine of the locked tower's embeddings >= a threshold calibrated on half 0
                 to the target false-positive rate (the signal alone, as before verification)
  full           the method as deployed: candidates are phash+mirror within the radius and the
                 top-k eval images by cosine (>= min-cosine); each is verified (dedup.verify)

FPR = flagged distinct pairs / all distinct pairs (every query x every other eval image of its
half). Results go to bench/results/dedup_quality.json, with the full method's false positives
and misses listed by name so they can be looked at.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dedup.embedding import calibrate_threshold, embed_all  # noqa: E402
from training.eval_flags import tower_embedder  # noqa: E402
from dedup.phash import DEFAULT_SETTINGS, hash_image_bytes  # noqa: E402
from dedup.verify import Features, Verifier, VerifyRules, verify  # noqa: E402
from tests.images import on_white, png_bytes, shard_bytes  # noqa: E402


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


def originals(clipart: int, emoji: int, sample: int = 0) -> list[tuple[str, Image.Image]]:
    """Sample ``sample`` of the originals: the next ``clipart`` and ``emoji`` files in a stable hash order."""
    from curation.demo_data import fetch_all

    demo = fetch_all()
    key = lambda p: hashlib.sha256(str(p.relative_to(demo.cache)).encode()).hexdigest()  # noqa: E731
    clip = [p for p in (demo.cache / "openclipart/png").rglob("*.png") if 2_000 < p.stat().st_size < 400_000]
    emoji_files = sorted((demo.cache / "emoji/img/google/64").glob("*.png"), key=key)
    chosen = (sorted(clip, key=key)[sample * clipart:(sample + 1) * clipart]
              + emoji_files[sample * emoji:(sample + 1) * emoji])
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in chosen:
            image = on_white(Image.open(path))
            image.thumbnail((512, 512))
            out.append((str(path.relative_to(demo.cache)), image))
    if sample:
        return out
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
            image = on_white(Image.fromarray(array))
            image.thumbnail((512, 512))
            out.append((f"skimage/{name}", image))
    except ImportError:
        print("scikit-image not installed: no photos", file=sys.stderr)
    return out


def family(name: str) -> str:
    """Originals that are one picture: same file name, modifiers removed (see the docstring)."""
    base = name.split("/")[-1]
    if name.startswith("emoji/"):
        return "emoji:" + re.sub(r"-1f3f[b-f]|-200d-27a1-fe0f|-fe0f", "", base)
    if name.startswith("openclipart/"):
        return "openclipart:" + re.sub(r"_bw(?=[_.])", "", base)
    return name


def distinct_originals(items):
    kept, families, thumbs = [], set(), []
    for name, image in items:
        thumb = np.asarray(image.convert("L").resize((32, 32)), np.float32)
        if family(name) in families or any(np.abs(thumb - t).mean() < 3 for t in thumbs):
            continue
        families.add(family(name))
        thumbs.append(thumb)
        kept.append((name, image))
    return kept


def embeddings(tower: str, eval_blobs: list[bytes], query_blobs: list[bytes]):
    """Embeddings of eval and query images, cached under .cache/bench by tower and image bytes."""
    digest = hashlib.sha256(tower.encode())
    for blob in eval_blobs + query_blobs:
        digest.update(hashlib.sha256(blob).digest())
    cache = Path(__file__).resolve().parent.parent / ".cache" / "bench" / f"dedup_quality_{digest.hexdigest()[:16]}.npz"
    if cache.exists():
        stored = np.load(cache)
        return stored["eval"], stored["query"]
    embed = tower_embedder(tower)
    eval_vec = embed_all(embed, [Image.open(io.BytesIO(b)) for b in eval_blobs])
    query_vec = embed_all(embed, [Image.open(io.BytesIO(b)) for b in query_blobs])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, eval=eval_vec, query=query_vec)
    return eval_vec, query_vec


def verify_pairs(pairs, query_features, eval_features, eval_mirrors, rules, distances):
    return [verify(query_features[q], eval_features[e], rules, eval_mirrors[e], d) for (q, e), d in zip(pairs, distances)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clipart", type=int, default=400)
    parser.add_argument("--emoji", type=int, default=200)
    parser.add_argument("--radius", type=int, default=8)
    parser.add_argument("--tower", default="efficientnet-lite0", help="image tower for the embedding signal")
    parser.add_argument("--top-k", type=int, default=3, help="embedding candidates verified per query")
    parser.add_argument("--min-cosine", type=float, default=0.5)
    parser.add_argument("--max-fpr", type=float, default=1e-4)
    parser.add_argument("--calibrate", action="store_true", help="print the verification threshold grid on half 0")
    parser.add_argument("--sample", type=int, default=0, help="which disjoint sample of originals (0: the calibration one)")
    args = parser.parse_args()
    started = time.perf_counter()
    raw = originals(args.clipart, args.emoji, args.sample)
    items = distinct_originals(raw)
    names = [n for n, _ in items]
    half = np.array([int(hashlib.sha256(n.encode()).hexdigest(), 16) % 2 for n in names])
    eval_blobs = [png_bytes(im) for _, im in items]  # the eval image file the index hashes
    eval_hashes = np.array([hash_image_bytes(b, DEFAULT_SETTINGS) for b in eval_blobs], np.uint64)
    # queries: block 0 the originals themselves (negatives only), block b the b-th edit
    query_edit = ["original"] + list(EDITS)
    query_blobs = list(eval_blobs) + [shard_bytes(fn(im)) for fn in EDITS.values() for _, im in items]
    query_hashes = np.array([hash_image_bytes(b)[0] for b in query_blobs], np.uint64)
    n = len(items)
    print(f"{len(raw)} originals sampled, {len(raw) - n} dropped as the same picture; {n} distinct "
          f"({sum(x.startswith('openclipart') for x in names)} openclipart, {sum(x.startswith('emoji') for x in names)} "
          f"emoji, {sum(x.startswith('skimage') for x in names)} photos), {len(EDITS)} edits, radius {args.radius}",
          flush=True)

    t = time.perf_counter()
    eval_vec, query_vec = embeddings(args.tower, eval_blobs, query_blobs)
    print(f"embeddings of {len(eval_blobs) + len(query_blobs)} images ({args.tower}) in {time.perf_counter() - t:.0f} s",
          flush=True)
    t = time.perf_counter()
    eval_features = [Features.from_bytes(b) for b in eval_blobs]
    eval_mirrors = [f.mirrored() for f in eval_features]
    query_features = [Features.from_bytes(b) for b in query_blobs]
    print(f"features of {len(eval_blobs) + len(query_blobs)} images in {time.perf_counter() - t:.0f} s", flush=True)

    def signals(group):
        """Per query of the half: the phash/mirror distances, cosines and candidates vs its eval images."""
        members = np.flatnonzero(half == group)
        queries = np.concatenate([members + b * n for b in range(len(query_edit))])
        owner = queries % n
        own_d = np.bitwise_count(query_hashes[queries, None] ^ eval_hashes[None, members, 0])
        mir_d = np.bitwise_count(query_hashes[queries, None] ^ eval_hashes[None, members, 1])
        cos = query_vec[queries] @ eval_vec[members].T
        same = owner[:, None] == members[None, :]
        is_original = queries < n
        own_d[same & is_original[:, None]] = 99  # an original is not its own negative
        mir_d[same & is_original[:, None]] = 99
        cos[same & is_original[:, None]] = -2
        top = np.argsort(-cos, axis=1, kind="stable")[:, :args.top_k]
        by_embedding = np.zeros_like(same)
        np.put_along_axis(by_embedding, top, True, axis=1)
        by_embedding &= cos >= args.min_cosine
        candidate = (np.minimum(own_d, mir_d) <= args.radius) | by_embedding
        candidate[same & is_original[:, None]] = False
        return dict(members=members, queries=queries, owner=owner, own=own_d, mirror=np.minimum(own_d, mir_d),
                    cos=cos, candidate=candidate, same=same, is_original=is_original)

    timing = {}
    found_distances: list[int | None] = []

    def verified(sig, rules):
        qi, ei = np.nonzero(sig["candidate"])
        t = time.perf_counter()
        near = sig["mirror"][qi, ei]  # pHash distance (or mirror's) when pHash proposed the pair
        distances = [int(d) if d <= args.radius else None for d in near]
        found = verify_pairs(zip(sig["queries"][qi], sig["members"][ei]), query_features, eval_features, eval_mirrors,
                             rules, distances)
        found_distances.clear()
        found_distances.extend(distances)
        timing["ms_per_pair"] = 1000 * (time.perf_counter() - t) / max(1, len(found))
        print(f"verified {len(found):,} candidate pairs, {timing['ms_per_pair']:.1f} ms each "
              "(direct + mirror, features prepared)", flush=True)
        return qi, ei, found

    calib = signals(0)
    negatives0 = ~calib["same"] & (calib["cos"] > -2)
    threshold = calibrate_threshold(calib["cos"][negatives0], args.max_fpr)
    print(f"embedding-only threshold {threshold:.4f} (calibrated on {int(negatives0.sum()):,} distinct pairs of half 0)")
    chosen = None
    if args.calibrate:
        chosen = calibrate(calib, verified, found_distances, args)

    groups = [1] if args.sample == 0 else [0, 1]  # sample 0's half 0 chose the thresholds
    signal_names = ["phash", "phash+mirror", "embedding", "full"]
    hits = {s: np.zeros(len(EDITS), int) for s in signal_names}
    fp_count = dict.fromkeys(signal_names, 0)
    negatives_total = members_total = verified_total = 0
    false_pos, misses = [], {edit: [] for edit in EDITS}
    for group in groups:
        ev = signals(group)
        qi, ei, found = verified(ev, VerifyRules())
        verified_total += len(found)
        flagged = np.zeros_like(ev["candidate"])
        flagged[qi, ei] = [Verifier.decide(v) for v in found]
        masks = {"phash": ev["own"] <= args.radius, "phash+mirror": ev["mirror"] <= args.radius,
                 "embedding": ev["cos"] >= threshold, "full": flagged}
        negatives = ~ev["same"] & (ev["cos"] > -2)
        for signal, mask in masks.items():
            fp_count[signal] += int((mask & negatives).sum())
            hits[signal] += _edit_hits(ev, (mask & ev["same"]).any(axis=1))
        negatives_total += int(negatives.sum())
        members, nm = ev["members"], len(ev["members"])
        members_total += nm
        false_pos += [(query_edit[ev["queries"][q] // n], names[ev["owner"][q]], names[members[e]])
                      for q, e in zip(*np.nonzero(flagged & negatives))]
        found_rows = (flagged & ev["same"]).any(axis=1)[nm:].reshape(len(EDITS), nm)
        for b, edit in enumerate(EDITS):
            misses[edit] += [names[m] for m, hit in zip(members, found_rows[b]) if not hit]
    rows = [{"edit": edit, **{s: float(hits[s][b] / members_total) for s in signal_names}} for b, edit in enumerate(EDITS)]
    fp = {s: fp_count[s] / negatives_total for s in signal_names}
    where = "half 1" if args.sample == 0 else f"sample {args.sample}, both halves (never used for tuning)"
    print(f"\nrecall at radius {args.radius} over {members_total} originals ({where}); full = candidates "
          f"(phash+mirror, top-{args.top_k} cosine >= {args.min_cosine}) verified")
    print(f"{'edit':14s}" + "".join(f"{s:>14s}" for s in signal_names))
    for row in rows:
        print(f"{row['edit']:14s}" + "".join(f"{row[s]:14.3f}" for s in signal_names))
    print(f"{'min recall':14s}" + "".join(f"{min(r[s] for r in rows):14.3f}" for s in signal_names))
    print(f"{'FPR':14s}" + "".join(f"{fp[s]:14.2e}" for s in signal_names) + f"   ({negatives_total:,} distinct pairs)")
    print(f"full method: {len(false_pos)} false positives, e.g. {false_pos[:4]}")
    out = Path(__file__).resolve().parent / "results" / f"dedup_quality{'' if args.sample == 0 else f'_sample{args.sample}'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "sample": args.sample, "evaluated_on": where, "radius": args.radius, "tower": args.tower, "top_k": args.top_k,
        "min_cosine": args.min_cosine, "embedding_threshold": threshold, "verify": VerifyRules().to_dict(),
        "calibration_choice": chosen, "originals_sampled": len(raw), "distinct_originals": n,
        "evaluated": members_total, "distinct_pairs": negatives_total, "verified_candidates": verified_total,
        "verify_ms_per_pair": timing["ms_per_pair"], "recall": rows, "fpr": fp, "false_positives": false_pos,
        "misses": misses, "seconds": time.perf_counter() - started}, indent=2) + "\n")
    print(f"written {out} ({time.perf_counter() - started:.0f} s)")


def calibrate(calib, verified, found_distances, args) -> dict:
    """Print the verification threshold grid on half 0 and the rule it picks (see the module docstring)."""
    permissive = VerifyRules(min_inliers=0, min_ncc=-2, min_block_agreement=-2, max_colour_diff=float("inf"),
                             dense_min_ncc=-2, dense_min_block_agreement=-2)
    qi, ei, found = verified(calib, permissive)
    positive = calib["same"][qi, ei]
    total = int((~calib["same"]).sum())
    nm = len(calib["members"])
    distances = list(found_distances)
    grid = []
    for inl, ncc, block, colour, near_radius, near_block in itertools.product(
            (4, 6), (0.7,), (0.7, 0.8, 0.9), (0.2, 0.3, float("inf")), (2, 4, 6), (0.5, 0.6, 0.7, 1.01)):
        rules = VerifyRules(min_inliers=inl, min_ncc=ncc, min_block_agreement=block, max_colour_diff=colour,
                            dense_min_ncc=max(ncc, 0.9), dense_min_block_agreement=max(block, 0.9),
                            near_radius=near_radius, near_min_block_agreement=near_block)
        ok = np.array([rules.accepts(v.inliers, v.ncc, v.block_agreement, v.colour_diff, v.dense, d)
                       for v, d in zip(found, distances)])
        rows = np.zeros(len(calib["queries"]), bool)
        rows[qi[ok & positive]] = True
        grid.append(dict(min_recall=float(_edit_hits(calib, rows).min() / nm), fpr=float((ok & ~positive).sum()) / total,
                         min_inliers=inl, min_ncc=ncc, min_block_agreement=block, max_colour_diff=colour,
                         near_radius=near_radius, near_min_block_agreement=near_block))
    print("calibration grid (half 0): min_inliers min_ncc min_block max_colour_diff near_radius near_min_block "
          "-> min recall, FPR")
    within = [g for g in grid if g["fpr"] <= args.max_fpr]
    best = max(g["min_recall"] for g in within)
    # lowest recalls one original apart are a tie: then the fewest false positives, then the stricter rule
    tied = [g for g in within if g["min_recall"] >= best - 1 / nm - 1e-9]
    chosen = min(tied, key=lambda g: (g["fpr"], -g["min_inliers"], -g["min_block_agreement"], g["max_colour_diff"],
                                      g["near_radius"], -g["near_min_block_agreement"]))
    for g in sorted(within, key=lambda g: (-g["min_recall"], g["fpr"]))[:8]:
        print(f"  {[g[k] for k in list(g)[2:]]} -> {g['min_recall']:.3f}, {g['fpr']:.2e}")
    print(f"chosen (FPR <= {args.max_fpr:g}, best lowest recall {best:.3f}, ties within 1/{nm}): "
          f"{[chosen[k] for k in list(chosen)[2:]]} -> {chosen['min_recall']:.3f}, {chosen['fpr']:.2e}")
    defaults = VerifyRules()
    print("the defaults (dedup.verify.VerifyRules) are " + ("this rule" if all(
        getattr(defaults, k) == chosen[k] for k in list(chosen)[2:]) else "NOT this rule"))
    return chosen


def _edit_hits(sig, hit_rows: np.ndarray) -> np.ndarray:
    """Per edit: how many of the half's originals have their edited copy among the hit query rows."""
    nm = len(sig["members"])
    return hit_rows[nm:].reshape(len(EDITS), nm).sum(axis=1)


if __name__ == "__main__":
    main()
