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
   same bounds; dense ECC alignment (``cv2.findTransformECC``) then refines it, since a
   transform from a handful of inliers is a few pixels off. Smooth graphics (a gradient
   button, a flag) have too few keypoints for any transform: ECC alone then aligns them,
   starting from the whole-frame mapping, and only a near-exact photometric match counts. That
   dense alignment is first tried at half size (:func:`_may_align_densely`), where it costs a
   quarter: a pair that converges there to a low correlation is not aligned at full size.
4. The corpus image is warped onto the eval image and compared where both exist: grey-level
   correlation over the overlap (``ncc``), the share of the eval image's textured 16-px blocks
   that correlate (``block_agreement``: catches a different drawing on the same layout; blocks
   flat in the eval image are skipped, so a border or a caption added to the copy does not
   count against it) and the share of the overlap whose colour differs after a global
   gain/offset fit per channel (``colour_diff``: a recoloured drawing, like an emoji with
   another skin tone, is a different image; a brighter copy is not).
5. Brightening clips: ``x 1.2`` turns a golden yellow into a pure one and light grey lines
   into white, which no fit in step 4 undoes. So before comparing, the gain ``k >= 1`` for which
   ``clip(k * eval)`` best explains the copy is fitted (:func:`_brightness_gain`) and the eval
   image is compared in that form. A block the gain washes out (textured in the eval image,
   flat after the gain) is no evidence either way; a block that keeps some texture still has to
   agree, which is what tells two thin-line stars apart once both are brightened.

Mirrors are checked by also matching against the mirrored eval image, when the caller does not
know which way round the pair is: a pHash candidate is checked only the way(s) its hashes say
(the corpus image's pHash near the eval image's, or near its mirror's): the mirror's features
and its alignment are work a pHash candidate rarely needs, and on the tuning sample
(``bench_dedup_quality`` sample 0) checking one way lost no true match. A pair whose images
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
MIN_BLOCK_STD = 6.0  # a block is textured when the eval image's grey levels vary this much
COLOUR_DELTA = 16.0  # a pixel differs when its fitted Lab colour is this far off (8-bit Lab units)
FEW_KEYPOINTS = 50   # below this, keypoints are looked for again at a lower contrast threshold
# brightening modelled as copy = clip(k * eval): k from 1 to VerifyRules.max_gain in GAIN_STEP steps,
# kept only when it cuts the mean absolute error of identity by GAIN_EVIDENCE (an unedited copy gains
# nothing from a gain; on the quality benchmark a brightened line drawing's error drops by 85-90 %)
GAIN_STEP = 0.025
GAIN_EVIDENCE = 0.3


@dataclass(frozen=True)
class VerifyRules:
    """Thresholds of a confirmed match (defaults calibrated by ``bench/bench_dedup_quality.py``)."""

    min_inliers: int = 6           # RANSAC inliers of the similarity transform
    min_ncc: float = 0.7           # grey correlation over the overlap
    min_block_agreement: float = 0.8  # share of the eval image's textured blocks with correlation >= 0.7
    max_colour_diff: float = 0.3   # share of the overlap whose colour differs (after a global fit)
    # fewer keypoints in either image: undecided (the proposing signal decides). Off (0) by
    # default: on the quality benchmark a fallback at 4 or 8 keypoints added false positives
    # (flat, distinct emoji) without raising the lowest recall.
    min_keypoints: int = 0
    max_rotation: float = 20.0     # degrees
    max_scale: float = 2.0
    ratio: float = 0.8             # Lowe's ratio test
    refine: bool = True            # ECC refinement of the keypoint transform before comparing
    # with no keypoint transform (smooth graphics have a handful of keypoints), align densely
    # (ECC from the whole-frame mapping); an ECC-aligned pair is also confirmed without
    # min_inliers when the aligned images agree at these stricter thresholds
    dense_fallback: bool = True
    # ... only when either image has fewer keypoints than this. A pair rich in keypoints none of
    # which match is not one picture, and the dense alignment was most of the cost of verifying
    # the random pHash candidates a large eval index brings. On the tuning sample
    # (bench_dedup_quality sample 0) every confirmation the fallback made had <= 235 keypoints.
    dense_max_keypoints: int = 300
    # ECC iterations at most (a copy converges in a few; a pair that is not one picture runs to
    # the cap, so it sets the cost of a rejection). On the tuning sample 15 lost no confirmation
    # that 50 made; 10 lost one.
    ecc_iterations: int = 15
    # the dense fallback first runs ECC at half size (a quarter of the pixels) from the same start,
    # and aligns at full size only when that converged to at least this correlation, or threw (0:
    # off). On the tuning sample (bench_dedup_quality sample 0, half 1) the 84 pairs it confirmed
    # all correlated >= 0.956 at half size, or threw there (one, a pad); 0.8 keeps a margin below
    # that and lets 34 % of the dense alignments through, most of them ones that threw.
    dense_screen_min_cc: float = 0.8
    dense_min_ncc: float = 0.9
    dense_min_block_agreement: float = 0.9
    # a pHash candidate this close is strong evidence by itself: its blocks need agree less
    # (brightening or halving a line drawing loses its faint lines, not its layout)
    near_radius: int = 2
    near_min_block_agreement: float = 0.7
    # brightest edit modelled: the eval image is compared as clip(k * eval), k in [1, max_gain]
    # fitted to the copy (1.0: off). Brightening clips, and no fit of the comparison undoes that.
    max_gain: float = 1.6
    # a confirmation without min_inliers keypoint inliers (ECC-aligned, or a near pHash candidate)
    # rests on the pixels alone: its block agreement must be over at least this many textured
    # blocks of the eval image (0: off). At 82k eval images the false removals of both held-out
    # splits were such confirmations on near-flat images (5 textured blocks); on the tuning sample
    # (bench_dedup_quality sample 0) the 153 true copies confirmed this way had >= 24, but one
    # (a 5-degree rotation, 2 blocks), and no distinct pair was confirmed this way.
    min_blocks_without_inliers: int = 16
    # ... and its grey correlation at least this (0: off). Measured and not deployed: at 0.95 (the
    # highest two-decimal value that lost at most 3 of the 242 true copies the tuning sample,
    # bench_dedup_quality sample 0, confirmed this way) it rejected 5 of the 9 false removals of
    # split 4 at 82k eval images (flat enigma tiles against other flat squares, ncc 0.90-0.94),
    # which suggested it, but on held-out split 5 it rejected no false removal and lost 6 of
    # 3,000 copies (12 on split 4): small game sprites after JPEG or resizing (bench_dedup_scale
    # --alternative). Worth turning on where the corpus holds many flat tiles.
    min_ncc_without_inliers: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def accepts(self, inliers: int, ncc: float, block_agreement: float, colour_diff: float, dense: bool,
                phash_distance: int | None = None, blocks: int | None = None) -> bool:
        """The decision, one of three ways, and the colours always agreeing:

        * keypoints: ``min_inliers``, ``min_ncc`` and ``min_block_agreement``;
        * ECC-aligned (``dense``), whatever the inliers: the stricter ``dense_*`` thresholds;
        * a pHash candidate within ``near_radius``, aligned either way: ``min_ncc`` and the
          looser ``near_min_block_agreement``;

        the last two, with fewer than ``min_inliers`` inliers, only over at least
        ``min_blocks_without_inliers`` textured blocks (``blocks``) and at a grey correlation of
        at least ``min_ncc_without_inliers``.
        """
        if colour_diff > self.max_colour_diff:
            return False
        aligned = inliers >= self.min_inliers or dense
        if inliers >= self.min_inliers and ncc >= self.min_ncc and block_agreement >= self.min_block_agreement:
            return True
        if inliers < self.min_inliers and ((blocks is not None and blocks < self.min_blocks_without_inliers)
                                           or ncc < self.min_ncc_without_inliers):
            # no keypoint evidence, and too little structure for the pixels to be any, or pixels
            # that agree only as well as two flat squares do
            return False
        if dense and ncc >= self.dense_min_ncc and block_agreement >= self.dense_min_block_agreement:
            return True
        near = phash_distance is not None and phash_distance <= self.near_radius
        return near and aligned and ncc >= self.min_ncc and block_agreement >= self.near_min_block_agreement


@dataclass(frozen=True)
class Verification:
    """What the check found for one pair (all values are from the better of direct and mirror)."""

    inliers: int
    ncc: float
    block_agreement: float
    colour_diff: float
    scale: float
    rotation: float
    mirrored: bool
    undecided: bool
    confirmed: bool
    dense: bool = False  # the transform was refined (or found) by dense ECC alignment
    gain: float = 1.0    # brightening k the copy was compared under (1: none; see _brightness_gain)
    blocks: int = 0      # textured blocks of the eval image the block agreement was computed over

    def summary(self) -> str:
        if self.undecided:
            return "verification undecided (too few keypoints)"
        verdict = "confirmed" if self.confirmed else "not confirmed"
        how = f"{self.inliers} inliers" + (", ECC-aligned" if self.dense else "")
        how += f", brightened x{self.gain:.2f}" if self.gain != 1.0 else ""
        return (f"{verdict}: {how}{' (mirror)' if self.mirrored else ''}, ncc {self.ncc:.2f}, "
                f"blocks {self.block_agreement:.2f} of {self.blocks} textured, colour differs on {self.colour_diff:.0%}")


def features_id() -> str:
    """What the keypoints of :class:`Features` depend on: a stored copy made under another id
    (another side, SIFT setting or OpenCV build) is not used (``dedup.feature_store``)."""
    import cv2

    return f"sift-side{SIDE}-n{SIFT_FEATURES}-c{SIFT_CONTRAST}-faint{SIFT_FAINT_CONTRAST}-few{FEW_KEYPOINTS}-cv{cv2.__version__}"


class Features:
    """One image prepared for verification: RGB at :data:`SIDE`, SIFT keypoints and descriptors.

    ``keypoints``: (points, descriptors) as :meth:`arrays` gave them for this same image (an eval
    image's, stored at index build); SIFT, most of the cost of preparing an image, is then skipped.
    """

    __slots__ = ("rgb", "points", "descriptors", "colour", "_textured")

    def __init__(self, image, keypoints: tuple[np.ndarray, np.ndarray] | None = None):
        import cv2

        rgb = np.asarray(image.convert("RGB"))
        scale = SIDE / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        self.rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        if keypoints is not None:
            points, descriptors = keypoints
            self.points = np.asarray(points, np.float32).reshape(-1, 4)
            self.descriptors = np.asarray(descriptors, np.float32).reshape(-1, 128) if len(self.points) else None
        else:
            grey = cv2.cvtColor(self.rgb, cv2.COLOR_RGB2GRAY)
            found, descriptors = _sift().detectAndCompute(grey, None)
            if len(found) < FEW_KEYPOINTS:
                # smooth graphics (gradients, pill buttons) yield a handful at the usual contrast
                # threshold: look again for fainter ones rather than give up on the image
                found, descriptors = _sift(faint=True).detectAndCompute(grey, None)
            # x, y, orientation (degrees), size per keypoint
            self.points = np.float32([(k.pt[0], k.pt[1], k.angle, k.size) for k in found]).reshape(-1, 4)
            self.descriptors = descriptors
        wide = self.rgb.astype(np.int16)
        self.colour = bool(max(np.abs(wide[..., 0] - wide[..., 1]).max(),
                               np.abs(wide[..., 1] - wide[..., 2]).max()) > 12)
        self._textured = None

    def textured(self) -> np.ndarray:
        """Per 16-px block (rows x columns, from the top left): is it textured (grey levels vary
        by :data:`MIN_BLOCK_STD`)? As an eval image, only those blocks count in the agreement."""
        if self._textured is None:
            self._textured = _blocks(_grey(self.rgb)).std(axis=2) >= MIN_BLOCK_STD
        return self._textured

    @classmethod
    def from_bytes(cls, data: bytes, keypoints: tuple[np.ndarray, np.ndarray] | None = None) -> "Features":
        from PIL import Image

        from dedup.phash import flatten_on_white

        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (SIDE, SIDE))  # reduced JPEG decode: we never need more than SIDE
            return cls(flatten_on_white(image), keypoints)  # Features converts the rest to RGB

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(points float32 (n, 4), descriptors uint8 (n, 128)): what a store keeps, losslessly
        (OpenCV's SIFT descriptors are whole numbers in 0..255, held as float32)."""
        if self.descriptors is None or not len(self.points):
            return np.zeros((0, 4), np.float32), np.zeros((0, 128), np.uint8)
        return self.points, self.descriptors.astype(np.uint8)

    def mirrored(self, keypoints: tuple[np.ndarray, np.ndarray] | None = None) -> "Features":
        """The mirrored image's features; ``keypoints``: as :meth:`arrays` gave them for the
        mirror of this same image (an eval image's, stored at index build)."""
        from PIL import Image, ImageOps

        return Features(ImageOps.mirror(Image.fromarray(self.rgb)), keypoints)

    def __len__(self) -> int:
        return len(self.points)


_SIFT: dict[bool, object] = {}
SIFT_FEATURES = 800          # keypoints kept at most (the strongest)
SIFT_CONTRAST = 0.02         # OpenCV's contrastThreshold
SIFT_FAINT_CONTRAST = 0.002  # ... when an image has fewer than FEW_KEYPOINTS at SIFT_CONTRAST


def _sift(faint: bool = False):
    if faint not in _SIFT:
        import cv2

        cv2.setNumThreads(1)  # parallelism comes from Beam workers, not OpenCV threads
        _SIFT[faint] = cv2.SIFT_create(nfeatures=SIFT_FEATURES,
                                       contrastThreshold=SIFT_FAINT_CONTRAST if faint else SIFT_CONTRAST)
    return _SIFT[faint]


def _align(query: Features, ref: Features, rules: VerifyRules):
    """(transform query -> ref, inlier count, ECC refined it) or (None, 0, False)."""
    import cv2

    if len(query) < 2 or len(ref) < 2:
        return None, 0, False
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
        return None, 0, False
    matrix, mask = cv2.estimateAffinePartial2D(np.float32(src), np.float32(dst), method=cv2.RANSAC,
                                               ransacReprojThreshold=3.0, maxIters=2000, confidence=0.995,
                                               refineIters=10)
    if matrix is None:
        return None, 0, False
    scale = math.hypot(matrix[0, 0], matrix[1, 0])
    rotation = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
    if not (1 / rules.max_scale <= scale <= rules.max_scale and abs(rotation) <= rules.max_rotation):
        return None, 0, False
    refined = _refine(_ecc_grey(query.rgb), _ecc_grey(ref.rgb), matrix, rules) if rules.refine else None
    if refined is None:
        return matrix, int(mask.sum()), False  # ECC failed: keep the keypoints' estimate
    return refined, int(mask.sum()), True


def _whole_frame(query: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The mapping that stretches the query's frame onto the ref's."""
    return np.float32([[ref.shape[1] / query.shape[1], 0, 0], [0, ref.shape[0] / query.shape[0], 0]])


def _dense_align(query_grey: np.ndarray, ref_grey: np.ndarray, rules: VerifyRules):
    """ECC from the whole-frame mapping (query frame stretched onto ref frame), or None."""
    return _refine(query_grey, ref_grey, _whole_frame(query_grey, ref_grey), rules)


def _ecc_grey(rgb: np.ndarray) -> np.ndarray:
    """What ECC aligns: an image's blurred grey levels (:func:`verify` makes them once per pair
    for both the half-size screen and the full-size dense alignment)."""
    import cv2

    return cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), (5, 5), 0)


def _ecc(ref_grey: np.ndarray, query_grey: np.ndarray, matrix, rules: VerifyRules):
    """(correlation, transform query -> ref) that ECC converges to from ``matrix``; raises cv2.error
    when it does not converge (flat or unrelated images)."""
    import cv2

    # ECC maps template coordinates to input coordinates: template = ref, input = query, so
    # start from the inverse of query -> ref and invert back
    warp = cv2.invertAffineTransform(matrix).astype(np.float32)
    correlation, warp = cv2.findTransformECC(
        ref_grey, query_grey, warp, cv2.MOTION_AFFINE,
        (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, rules.ecc_iterations, 1e-4), None, 1)
    return correlation, cv2.invertAffineTransform(warp)


def _may_align_densely(query_grey: np.ndarray, ref_grey: np.ndarray, rules: VerifyRules) -> bool:
    """Can the dense alignment lead anywhere? ECC at half size from the whole-frame mapping: a pair
    it converges on at a correlation under ``dense_screen_min_cc`` is not aligned at full size.

    Why: at 82k eval images the dense fallback was 27 % of verification time on the clean images of
    ``bench_dedup_scale`` split 1, and it confirmed none of them; at half size ECC costs about a
    quarter. A pair where ECC throws at half size goes on to full size (one true copy on the tuning
    sample converged only there). The full-size alignment starts from the same mapping as before,
    so a pair that passes is decided exactly as without the screen.
    """
    if rules.dense_screen_min_cc <= 0:
        return True
    import cv2

    def half(grey: np.ndarray) -> np.ndarray:
        return cv2.resize(grey, (max(1, grey.shape[1] // 2), max(1, grey.shape[0] // 2)), interpolation=cv2.INTER_AREA)

    a, b = half(query_grey), half(ref_grey)
    try:
        correlation, _ = _ecc(b, a, _whole_frame(a, b), rules)
    except cv2.error:
        return True
    return correlation >= rules.dense_screen_min_cc


def _refine(query_grey: np.ndarray, ref_grey: np.ndarray, matrix, rules: VerifyRules):
    """Dense ECC refinement of a transform query -> ref (:func:`_ecc_grey` of each); None when ECC
    fails or strays."""
    import cv2

    try:
        _, refined = _ecc(ref_grey, query_grey, matrix, rules)
    except cv2.error:
        return None  # did not converge (flat images)
    sx, sy = math.hypot(refined[0, 0], refined[1, 0]), math.hypot(refined[0, 1], refined[1, 1])
    moved = np.abs(refined[:, 2] - matrix[:, 2]).max()
    if not (1 / rules.max_scale <= min(sx, sy) and max(sx, sy) <= rules.max_scale and abs(sx - sy) < 0.1 * sx
            and moved < 0.1 * SIDE):
        return None  # ECC wandered off (shear, a jump)
    rotation = math.degrees(math.atan2(refined[1, 0], refined[0, 0]))
    return refined if abs(rotation) <= rules.max_rotation else None


def _grey(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), (3, 3), 0)


def _blocks(image: np.ndarray) -> np.ndarray:
    """(rows, columns, BLOCK * BLOCK): the whole 16-px blocks of a 2-D array, from the top left,
    in float64 (one pass over all blocks; a loop of per-block numpy calls cost more than SIFT)."""
    rows, cols = image.shape[0] // BLOCK, image.shape[1] // BLOCK
    cut = image[:rows * BLOCK, :cols * BLOCK].astype(np.float64)
    return cut.reshape(rows, BLOCK, cols, BLOCK).swapaxes(1, 2).reshape(rows, cols, BLOCK * BLOCK)


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def _compare(query: Features, ref: Features, matrix, max_gain: float) -> tuple[float, float, float, float, int]:
    """(ncc, block agreement, colour difference, gain, blocks) of the query warped onto the ref, over
    their overlap; ``blocks``: how many textured blocks the agreement was computed over."""
    import cv2

    height, width = ref.rgb.shape[:2]
    warped = cv2.warpAffine(query.rgb, matrix, (width, height), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones(query.rgb.shape[:2], np.uint8), matrix, (width, height),
                            flags=cv2.INTER_NEAREST, borderValue=0)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8)) > 0  # no interpolated border pixels
    if inside.mean() < 0.25:
        return 0.0, 0.0, 1.0, 1.0, 0
    gain = _brightness_gain(warped, ref.rgb, inside, max_gain)
    target = ref.rgb if gain == 1.0 else np.clip(ref.rgb * np.float32(gain) + 0.5, 0, 255).astype(np.uint8)

    a, b = _grey(warped), _grey(target)
    textured = ref.textured()  # which blocks are textured: the eval image as it is
    ncc = _correlation(a[inside], b[inside])
    # blocks wholly inside the overlap and textured in the eval image (where the eval image is flat,
    # what the corpus image adds there, a border or a caption, is no evidence)
    used = _blocks(inside).all(axis=2) & textured
    pb = _blocks(b)
    if gain != 1.0:
        used &= pb.std(axis=2) >= MIN_BLOCK_STD / 2  # washed out by the brightening: no evidence either way
    pa, pb = _blocks(a)[used], pb[used]
    pa -= pa.mean(axis=1, keepdims=True)
    pb -= pb.mean(axis=1, keepdims=True)
    denominator = np.sqrt((pa * pa).sum(axis=1) * (pb * pb).sum(axis=1))
    correlations = np.divide((pa * pb).sum(axis=1), denominator, out=np.zeros(len(pa)), where=denominator > 0)
    agreement = float(np.mean(correlations >= 0.7)) if len(pa) else ncc
    return ncc, agreement, _colour_difference(warped, target, inside, query.colour and ref.colour), gain, len(pa)


def _brightness_gain(warped: np.ndarray, ref: np.ndarray, inside: np.ndarray, max_gain: float) -> float:
    """The brightening ``k`` (1 to ``max_gain``) for which ``clip(k * ref)`` best explains the copy, or 1.

    Fitted by mean absolute error at a quarter of :data:`SIDE` (robust to the part of a copy that
    is not the eval image: a caption, another picture), over all three channels: one gain for
    all, so hue only moves where a channel clips, as it does in the copy. Kept only when it cuts
    identity's error by :data:`GAIN_EVIDENCE`: distinct drawings of light lines would otherwise
    "explain" each other by washing their differences out.
    """
    import cv2

    height, width = ref.shape[:2]
    size = (max(1, width // 4), max(1, height // 4))
    keep = cv2.resize(inside.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.999
    if keep.sum() < 16 or max_gain <= 1.0:
        return 1.0
    eval_pixels = cv2.resize(ref, size, interpolation=cv2.INTER_AREA)[keep].astype(np.float32)
    copy_pixels = cv2.resize(warped, size, interpolation=cv2.INTER_AREA)[keep].astype(np.float32)
    gains = np.arange(1.0, max_gain + GAIN_STEP / 2, GAIN_STEP)
    errors = [float(np.abs(np.minimum(k * eval_pixels, 255.0) - copy_pixels).mean()) for k in gains]
    best = int(np.argmin(errors))
    if best == 0 or errors[best] > (1 - GAIN_EVIDENCE) * errors[0]:
        return 1.0
    return float(gains[best])


def _colour_difference(warped: np.ndarray, ref: np.ndarray, inside: np.ndarray, both_colour: bool) -> float:
    """Share of the overlap whose colour differs by more than :data:`COLOUR_DELTA` (Lab, 8-bit units).

    Compared at an eighth of :data:`SIDE`, where JPEG's blurred colour edges average out and a
    recoloured region does not. Lightness is first fitted by one gain and offset (least squares
    over the overlap), so a brightness or contrast change costs nothing; the two colour axes
    share one gain (saturation may change, hue may not: a per-channel fit would also map a
    yellow hand onto a pink one). So another skin tone counts as another image; a grey copy (or
    a grey eval image) is compared on lightness only.
    """
    import cv2

    height, width = ref.shape[:2]
    size = (max(1, width // 8), max(1, height // 8))
    la = cv2.cvtColor(cv2.resize(warped, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2LAB).astype(np.float32)
    lb = cv2.cvtColor(cv2.resize(ref, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2LAB).astype(np.float32)
    # only cells wholly inside the overlap: a cell that averages in the black fill is no evidence
    keep = cv2.resize(inside.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.999
    if not keep.any():
        return 1.0
    la, lb = la[keep], lb[keep]
    x, y = la[:, 0], lb[:, 0]
    spread = float(x.var())
    gain = float(((x - x.mean()) * (y - y.mean())).mean() / spread) if spread > 1e-6 else 0.0
    squared = (gain * (x - x.mean()) + y.mean() - y) ** 2
    if both_colour:
        # one common gain for the two colour axes (about neutral grey): saturation may change
        # (a brightness edit scales it), hue may not
        ca, cb = la[:, 1:] - 128.0, lb[:, 1:] - 128.0
        power = float((ca * ca).sum())
        saturation = float((ca * cb).sum() / power) if power > 1e-6 else 1.0
        squared = squared + ((saturation * ca - cb) ** 2).sum(axis=1)
    return float(np.mean(squared > COLOUR_DELTA ** 2))


def verify(query: Features, ref: Features | None, rules: VerifyRules = VerifyRules(),
           ref_mirrored: Features | None = None, phash_distance: int | None = None) -> Verification:
    """Check ``query`` (corpus image) against ``ref`` (eval image) and/or its mirror.

    Either may be None (not checked that way round), not both. ``phash_distance``: the
    candidate's pHash distance (to the eval image or its mirror) when pHash proposed it; see
    :attr:`VerifyRules.near_radius`.
    """
    if ref is None and ref_mirrored is None:
        raise ValueError("verify needs the eval image, its mirror, or both")
    undecided = min(len(query), len(ref if ref is not None else ref_mirrored)) < rules.min_keypoints
    best = None
    for mirrored, target in ((False, ref), (True, ref_mirrored)):
        if target is None:
            continue
        matrix, inliers, dense = _align(query, target, rules)
        # a dense-only confirmation needs min_blocks_without_inliers textured blocks in the overlap:
        # an eval image with fewer in its whole frame cannot get one, so it is not aligned densely
        # (the same decision, without the ECC run that was a third of a clean image's cost)
        can_rest_on_pixels = int(target.textured().sum()) >= rules.min_blocks_without_inliers
        if (matrix is None and rules.dense_fallback and can_rest_on_pixels
                and min(len(query), len(target)) < rules.dense_max_keypoints):
            greys = _ecc_grey(query.rgb), _ecc_grey(target.rgb)
            if _may_align_densely(*greys, rules):
                matrix = _dense_align(*greys, rules)
                dense = matrix is not None
        if matrix is None:
            found = Verification(0, 0.0, 0.0, 1.0, 0.0, 0.0, mirrored, undecided, False)
        else:
            ncc, agreement, colour_diff, gain, blocks = _compare(query, target, matrix, rules.max_gain)
            confirmed = rules.accepts(inliers, ncc, agreement, colour_diff, dense, phash_distance, blocks)
            found = Verification(inliers, ncc, agreement, colour_diff, math.hypot(matrix[0, 0], matrix[1, 0]),
                                 math.degrees(math.atan2(matrix[1, 0], matrix[0, 0])), mirrored,
                                 undecided and not confirmed, confirmed, dense, gain, blocks)
        if best is None or (found.confirmed, found.block_agreement, found.inliers) > (
                best.confirmed, best.block_agreement, best.inliers):  # ties: the direct match
            best = found
    return best


class Verifier:
    """Verifies candidates against eval images read on demand, with their features cached.

    ``read_ref(ref) -> bytes`` loads an eval image (``dedup.evalsets.read_ref``); the most recent
    ``cache_size`` eval images' features (and their mirrors', made when first needed) are kept,
    so a worker that meets the same popular eval image many times prepares it once.
    ``stored(ref, mirrored) -> (points, descriptors) | None``: the eval image's keypoints (or its
    mirror's) as computed at index build (:class:`dedup.feature_store.FeatureStore`), so that SIFT
    runs on the corpus image only; the decision is the same, since they are the same keypoints.
    """

    def __init__(self, rules: VerifyRules = VerifyRules(), read_ref: Callable[[str], bytes] | None = None,
                 cache_size: int = 512,
                 stored: Callable[[str, bool], tuple[np.ndarray, np.ndarray] | None] | None = None):
        if read_ref is None:
            from dedup.evalsets import read_ref
        self.rules, self.read_ref, self.cache_size, self.stored = rules, read_ref, cache_size, stored
        self._cache: OrderedDict[str, list[Features | None]] = OrderedDict()  # [features, mirror or None]

    def _eval_features(self, ref: str, mirror: bool) -> tuple[Features, Features | None]:
        if ref in self._cache:
            self._cache.move_to_end(ref)
        else:
            keypoints = self.stored(ref, False) if self.stored is not None else None
            self._cache[ref] = [Features.from_bytes(self.read_ref(ref), keypoints), None]
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        pair = self._cache[ref]
        if mirror and pair[1] is None:
            pair[1] = pair[0].mirrored(self.stored(ref, True) if self.stored is not None else None)
        return pair[0], pair[1] if mirror else None

    def check(self, corpus: Features | bytes, eval_ref: str, phash_distance: int | None = None,
              ways: tuple[bool, bool] = (True, True)) -> Verification:
        """``ways``: (as it is, mirrored): which way round the eval image is compared."""
        query = corpus if isinstance(corpus, Features) else Features.from_bytes(corpus)
        ref, ref_mirror = self._eval_features(eval_ref, ways[1])
        return verify(query, ref if ways[0] else None, self.rules, ref_mirror, phash_distance)

    @staticmethod
    def corpus_features(data: bytes) -> Features | None:
        """Features of a corpus image, or None when it cannot be decoded now."""
        try:
            return Features.from_bytes(data)
        except Exception:  # noqa: BLE001 - any decoder failure: the caller treats it as undecided
            return None

    def try_check(self, corpus: Features | None, eval_ref: str, phash_distance: int | None = None,
                  ways: tuple[bool, bool] = (True, True)) -> Verification | None:
        """:meth:`check`, or None when either image cannot be read now: no verdict, so the
        proposing signal's stands (callers flag the pair as undecided)."""
        if corpus is None:
            return None
        try:
            return self.check(corpus, eval_ref, phash_distance, ways)
        except (OSError, KeyError, ValueError):
            return None

    @staticmethod
    def decide(verification: Verification) -> bool:
        """A candidate is an eval duplicate when confirmed, or when verification is undecided."""
        return verification.confirmed or verification.undecided
