"""Geometric verification: is a candidate (corpus image, eval image) pair really one picture?

pHash and embeddings *propose* eval duplicates; neither is precise enough to *decide* on its
own. pHash radius 8 puts distinct clip-art and emoji at distance 0, and an embedding cosine
threshold low enough to catch a 20 % crop also catches every other yellow smiley
(``bench/bench_dedup_quality.py`` measures both). So every candidate is checked the way copy
detection does it (DISC21, SSCD's verification): local features, matched under a similarity
transform, then the aligned images compared pixel by pixel.

1. Both images are scaled to :data:`SIDE` px on their longer side; OpenCV SIFT keypoints on the
   luminance (SIFT, not ORB: its scale and orientation are precise enough for step 2, and it
   ships in opencv-python-headless, which img2dataset already installs).
2. Matching with weak geometric consistency: a match must keep the keypoint's orientation within
   ``max_rotation`` degrees and its scale within [1/max_scale, max_scale]; Lowe's ratio test is
   then applied among the consistent candidates. This keeps rotationally symmetric drawings
   (stars, wheels) from matching themselves at the wrong angle, which a plain ratio test does.
3. RANSAC fits a similarity transform (``cv2.estimateAffinePartial2D``; OpenCV seeds its own
   RNG per call, so the result is deterministic), whose scale and rotation must lie in the
   same bounds.
4. The corpus image is warped onto the eval image and compared where both exist: grey-level
   correlation over the overlap (``ncc``), the share of textured 16-px blocks that correlate
   (``block_agreement``: catches a different drawing on the same layout) and, when both are
   in colour, the 90th percentile of the chroma difference (``chroma``: a recoloured drawing,
   like an emoji with another skin tone, is a different image).

Mirrors are checked by also matching against the mirrored eval image. A pair whose images
hold too few keypoints to ever reach ``min_inliers`` is ``undecided``: verification cannot veto
what it cannot see, so the proposing signal's verdict stands (see :meth:`Verifier.decide`).
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

SIDE = 256          # longer side (px) at which features are taken and images compared
BLOCK = 16          # block size (px) of the block agreement
MIN_BLOCK_STD = 6.0  # a block is textured when either image's grey levels vary this much


@dataclass(frozen=True)
class VerifyRules:
    """Thresholds of a confirmed match (defaults calibrated by ``bench/bench_dedup_quality.py``)."""

    min_inliers: int = 4           # RANSAC inliers of the similarity transform
    min_ncc: float = 0.7           # grey correlation over the overlap
    min_block_agreement: float = 0.8  # share of the eval image's textured blocks with correlation >= 0.7
    max_chroma: float = 20.0       # 90th pct of the Lab chroma difference (both in colour)
    # fewer keypoints in either image: undecided (the proposing signal decides). Off (0) by
    # default: on the quality benchmark a fallback at 4 or 8 keypoints added false positives
    # (flat, distinct emoji) without raising the lowest recall.
    min_keypoints: int = 0
    max_rotation: float = 20.0     # degrees
    max_scale: float = 2.0
    ratio: float = 0.8             # Lowe's ratio test

    def to_dict(self) -> dict:
        return asdict(self)

    def confirms(self, inliers: int, ncc: float, block_agreement: float, chroma: float) -> bool:
        return (inliers >= self.min_inliers and ncc >= self.min_ncc
                and block_agreement >= self.min_block_agreement and chroma <= self.max_chroma)


@dataclass(frozen=True)
class Verification:
    """What the check found for one pair (all values are from the better of direct and mirror)."""

    inliers: int
    ncc: float
    block_agreement: float
    chroma: float
    scale: float
    rotation: float
    mirrored: bool
    undecided: bool
    confirmed: bool

    def summary(self) -> str:
        if self.undecided:
            return "verification undecided (too few keypoints)"
        verdict = "confirmed" if self.confirmed else "not confirmed"
        return (f"{verdict}: {self.inliers} inliers{' (mirror)' if self.mirrored else ''}, ncc {self.ncc:.2f}, "
                f"blocks {self.block_agreement:.2f}, chroma {self.chroma:.1f}")


class Features:
    """One image prepared for verification: RGB at :data:`SIDE`, SIFT keypoints and descriptors."""

    __slots__ = ("rgb", "points", "descriptors", "colour")

    def __init__(self, image):
        import cv2

        rgb = np.asarray(image.convert("RGB"))
        scale = SIDE / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        self.rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        grey = cv2.cvtColor(self.rgb, cv2.COLOR_RGB2GRAY)
        keypoints, descriptors = _sift().detectAndCompute(grey, None)
        # x, y, orientation (degrees), size per keypoint
        self.points = np.float32([(k.pt[0], k.pt[1], k.angle, k.size) for k in keypoints]).reshape(-1, 4)
        self.descriptors = descriptors
        wide = self.rgb.astype(np.int16)
        self.colour = bool(max(np.abs(wide[..., 0] - wide[..., 1]).max(),
                               np.abs(wide[..., 1] - wide[..., 2]).max()) > 12)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Features":
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (SIDE, SIDE))  # reduced JPEG decode: we never need more than SIDE
            return cls(_on_white(image))

    def mirrored(self) -> "Features":
        from PIL import Image, ImageOps

        return Features(ImageOps.mirror(Image.fromarray(self.rgb)))

    def __len__(self) -> int:
        return len(self.points)


def _on_white(image):
    """Transparent pixels composited on white, as the thumbnails and eval sets show them."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


_SIFT = None


def _sift():
    global _SIFT
    if _SIFT is None:
        import cv2

        cv2.setNumThreads(1)  # parallelism comes from Beam workers, not OpenCV threads
        _SIFT = cv2.SIFT_create(nfeatures=800, contrastThreshold=0.02)
    return _SIFT


def _align(query: Features, ref: Features, rules: VerifyRules):
    """The similarity transform query -> ref and its inlier count, or (None, 0)."""
    import cv2

    if len(query) < 2 or len(ref) < 2:
        return None, 0
    src, dst = [], []
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    for candidates in matcher.knnMatch(query.descriptors, ref.descriptors, k=4):
        consistent = []
        for m in candidates:
            q, r = query.points[m.queryIdx], ref.points[m.trainIdx]
            turn = (r[2] - q[2] + 180.0) % 360.0 - 180.0
            if abs(turn) <= rules.max_rotation and 1 / rules.max_scale <= r[3] / q[3] <= rules.max_scale:
                consistent.append(m)
        if consistent and (len(consistent) == 1 or consistent[0].distance < rules.ratio * consistent[1].distance):
            src.append(query.points[consistent[0].queryIdx, :2])
            dst.append(ref.points[consistent[0].trainIdx, :2])
    if len(src) < 3:
        return None, 0
    matrix, mask = cv2.estimateAffinePartial2D(np.float32(src), np.float32(dst), method=cv2.RANSAC,
                                               ransacReprojThreshold=3.0, maxIters=2000, confidence=0.995,
                                               refineIters=10)
    if matrix is None:
        return None, 0
    scale = math.hypot(matrix[0, 0], matrix[1, 0])
    rotation = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
    if not (1 / rules.max_scale <= scale <= rules.max_scale and abs(rotation) <= rules.max_rotation):
        return None, 0
    return matrix, int(mask.sum())


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def _compare(query: Features, ref: Features, matrix) -> tuple[float, float, float]:
    """(ncc, block agreement, chroma) of the query warped onto the ref, over their overlap."""
    import cv2

    height, width = ref.rgb.shape[:2]
    warped = cv2.warpAffine(query.rgb, matrix, (width, height), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones(query.rgb.shape[:2], np.uint8), matrix, (width, height),
                            flags=cv2.INTER_NEAREST, borderValue=0)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8)) > 0  # no interpolated border pixels
    if inside.mean() < 0.25:
        return 0.0, 0.0, float("inf")

    def grey(rgb):
        return cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), (3, 3), 0)

    a, b = grey(warped), grey(ref.rgb)
    ncc = _correlation(a[inside], b[inside])
    blocks = []
    for y0 in range(0, height - BLOCK + 1, BLOCK):
        for x0 in range(0, width - BLOCK + 1, BLOCK):
            if not inside[y0:y0 + BLOCK, x0:x0 + BLOCK].all():
                continue
            pa, pb = a[y0:y0 + BLOCK, x0:x0 + BLOCK], b[y0:y0 + BLOCK, x0:x0 + BLOCK]
            if pb.std() < MIN_BLOCK_STD:
                continue  # flat in the eval image: what the corpus image adds there (a border, a caption) is no evidence
            blocks.append(_correlation(pa, pb))
    agreement = float(np.mean(np.asarray(blocks) >= 0.7)) if blocks else ncc
    chroma = 0.0
    if query.colour and ref.colour:
        la = cv2.cvtColor(cv2.GaussianBlur(warped, (5, 5), 0), cv2.COLOR_RGB2LAB).astype(np.float32)
        lb = cv2.cvtColor(cv2.GaussianBlur(ref.rgb, (5, 5), 0), cv2.COLOR_RGB2LAB).astype(np.float32)
        chroma = float(np.percentile(np.hypot(la[..., 1] - lb[..., 1], la[..., 2] - lb[..., 2])[inside], 90))
    return ncc, agreement, chroma


def verify(query: Features, ref: Features, rules: VerifyRules = VerifyRules(),
           ref_mirrored: Features | None = None) -> Verification:
    """Check ``query`` (corpus image) against ``ref`` (eval image) and, if given, its mirror."""
    undecided = min(len(query), len(ref)) < rules.min_keypoints
    best = None
    for mirrored, target in ((False, ref), (True, ref_mirrored)):
        if target is None:
            continue
        matrix, inliers = _align(query, target, rules)
        if matrix is None:
            found = Verification(0, 0.0, 0.0, float("inf"), 0.0, 0.0, mirrored, undecided, False)
        else:
            ncc, agreement, chroma = _compare(query, target, matrix)
            confirmed = rules.confirms(inliers, ncc, agreement, chroma)
            found = Verification(inliers, ncc, agreement, chroma, math.hypot(matrix[0, 0], matrix[1, 0]),
                                 math.degrees(math.atan2(matrix[1, 0], matrix[0, 0])), mirrored,
                                 undecided and not confirmed, confirmed)
        if best is None or (found.confirmed, found.block_agreement, found.inliers) > (
                best.confirmed, best.block_agreement, best.inliers):  # ties: the direct match
            best = found
    return best


class Verifier:
    """Verifies candidates against eval images read on demand, with their features cached.

    ``read_ref(ref) -> bytes`` loads an eval image (``dedup.evalsets.read_ref``); the most recent
    ``cache_size`` eval images' features (and their mirrors') are kept, so a worker that meets
    the same popular eval image many times prepares it once.
    """

    def __init__(self, rules: VerifyRules = VerifyRules(), read_ref: Callable[[str], bytes] | None = None,
                 cache_size: int = 512):
        if read_ref is None:
            from dedup.evalsets import read_ref
        self.rules, self.read_ref, self.cache_size = rules, read_ref, cache_size
        self._cache: OrderedDict[str, tuple[Features, Features]] = OrderedDict()

    def _eval_features(self, ref: str) -> tuple[Features, Features]:
        if ref in self._cache:
            self._cache.move_to_end(ref)
            return self._cache[ref]
        features = Features.from_bytes(self.read_ref(ref))
        pair = (features, features.mirrored())
        self._cache[ref] = pair
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return pair

    def check(self, corpus: Features | bytes, eval_ref: str) -> Verification:
        query = corpus if isinstance(corpus, Features) else Features.from_bytes(corpus)
        ref, ref_mirror = self._eval_features(eval_ref)
        return verify(query, ref, self.rules, ref_mirror)

    @staticmethod
    def decide(verification: Verification) -> bool:
        """A candidate is an eval duplicate when confirmed, or when verification is undecided."""
        return verification.confirmed or verification.undecided
