"""Geometric verification on real images: edited copies are confirmed, distinct images are not.

Eval images are real files (scikit-image's photos, openclipart drawings, Noto emoji); the corpus
side is made here by editing them and storing the result as a curated shard stores an image
(RGB JPEG q95, shorter side <= 256 px). What is asserted follows from the rules and the edit:
a centred crop keeping 80 % of each side is the eval image at scale 0.8, a 5-degree rotation is a
rotation of 5 degrees, a mirror is found through the mirrored eval image only.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps, UnidentifiedImageError

from dedup.embedding import EmbeddingIndex, embedding_candidates, verify_candidates
from dedup.verify import GAIN_STEP, Features, Verifier, VerifyRules, _brightness_gain, verify
from tests.images import on_white, photo, png_bytes, shard_bytes

EMOJI = "emoji/img/google/64"
CLIPART = ("openclipart/png/animals/bugs/ladybug_01.png", "openclipart/png/animals/bugs/farfalla_butterfly_fra1.png")
PHOTOS = ("astronaut", "chelsea", "coffee")


# ---- images ------------------------------------------------------------------------------------


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _crop(image: Image.Image, keep: float) -> Image.Image:
    """Centred crop keeping ``keep`` of each side."""
    w, h = image.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return image.crop((dx, dy, w - dx, h - dy))


def _text(image: Image.Image) -> Image.Image:
    """A caption-like line of red text over the lower quarter."""
    image = image.copy()
    font = ImageFont.load_default(size=max(10, image.height // 12))
    ImageDraw.Draw(image).text((image.width // 20, image.height * 3 // 4), "www.example.com  free download",
                               fill=(255, 0, 0), font=font)
    return image


def _rotate(image: Image.Image, degrees: float) -> Image.Image:
    return image.rotate(degrees, resample=Image.Resampling.BICUBIC, fillcolor="white")


# edit -> (function, scale and rotation of corpus -> eval that the edit implies, mirrored)
EDITS = {
    "crop_10": (lambda im: _crop(im, 0.9), 0.9, 0.0, False),
    "crop_20": (lambda im: _crop(im, 0.8), 0.8, 0.0, False),
    # 10 % of the width / height added at each edge: the picture is 1/1.2 of the padded frame
    "pad_10": (lambda im: ImageOps.expand(im, border=(round(im.width * 0.1), round(im.height * 0.1)), fill="black"),
               1.2, 0.0, False),
    "mirror": (ImageOps.mirror, 1.0, 0.0, True),
    "rotate_5": (lambda im: _rotate(im, 5), 1.0, 5.0, False),
    "jpeg_q30": (lambda im: Image.open(io.BytesIO(_jpeg(im, 30))), 1.0, 0.0, False),
    "grayscale": (lambda im: ImageOps.grayscale(im).convert("RGB"), 1.0, 0.0, False),
    "text_overlay": (_text, 1.0, 0.0, False),
    "resize_0.5": (lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC), 1.0, 0.0, False),
    "bright_+20": (lambda im: ImageEnhance.Brightness(im).enhance(1.2), 1.0, 0.0, False),
    "bright_-20": (lambda im: ImageEnhance.Brightness(im).enhance(0.8), 1.0, 0.0, False),
}
# A 64-px emoji holds up to these edits. JPEG q30 and halving (to 32 px) are left out: they smear
# the colours of so small an image (8-px JPEG blocks), and the colour check then sees a share of
# it differ, so the method does not claim them for emoji (the quality benchmark counts them).
EMOJI_EDITS = ("crop_10", "crop_20", "pad_10", "mirror", "rotate_5", "grayscale", "text_overlay", "bright_+20",
               "bright_-20")


@pytest.fixture(scope="module")
def originals(demo_data) -> dict[str, bytes]:
    """name -> the eval image's file bytes."""
    out = {name: png_bytes(photo(name)) for name in PHOTOS}
    for path in CLIPART:
        out[Path(path).name] = (demo_data.cache / path).read_bytes()
    out["1f98a"] = (demo_data.cache / EMOJI / "1f98a.png").read_bytes()
    return out


def _eval(data: bytes) -> tuple[Features, Features]:
    features = Features.from_bytes(data)
    return features, features.mirrored()


def _corpus(data: bytes, edit: str) -> Features:
    image = on_white(Image.open(io.BytesIO(data)))
    return Features.from_bytes(shard_bytes(EDITS[edit][0](image)))


def _check_confirmed(v, edit: str) -> None:
    _, scale, rotation, mirrored = EDITS[edit]
    assert v.confirmed and not v.undecided, v
    assert v.mirrored == mirrored, v
    assert v.scale == pytest.approx(scale, abs=0.03), v
    assert v.rotation == pytest.approx(rotation, abs=1.0), v


# ---- edited copies -----------------------------------------------------------------------------


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("name", PHOTOS)
def test_edited_photo_is_confirmed(originals, name, edit):
    ref, ref_mirror = _eval(originals[name])
    _check_confirmed(verify(_corpus(originals[name], edit), ref, VerifyRules(), ref_mirror), edit)


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("name", [Path(p).name for p in CLIPART])
def test_edited_drawing_is_confirmed(originals, name, edit):
    ref, ref_mirror = _eval(originals[name])
    _check_confirmed(verify(_corpus(originals[name], edit), ref, VerifyRules(), ref_mirror), edit)


@pytest.mark.parametrize("edit", EMOJI_EDITS)
def test_edited_emoji_is_confirmed(originals, edit):
    ref, ref_mirror = _eval(originals["1f98a"])
    assert Image.open(io.BytesIO(originals["1f98a"])).size == (64, 64)
    _check_confirmed(verify(_corpus(originals["1f98a"], edit), ref, VerifyRules(), ref_mirror), edit)


# ---- distinct images ---------------------------------------------------------------------------


def test_different_photos_are_not_confirmed():
    photos = {name: photo(name) for name in ("astronaut", "chelsea", "coffee", "rocket", "camera")}
    corpus = {name: Features.from_bytes(shard_bytes(image)) for name, image in photos.items()}
    evals = {name: _eval(png_bytes(image)) for name, image in photos.items()}
    for a in photos:
        for b in photos:
            ref, mirror = evals[b]
            v = verify(corpus[a], ref, VerifyRules(), mirror)
            assert v.confirmed == (a == b), (a, b, v)


def test_different_drawings_are_not_confirmed(demo_data):
    paths = [demo_data.cache / p for p in CLIPART] + [demo_data.cache / "openclipart/png/animals/bugs/spider.png"]
    corpus = [Features.from_bytes(shard_bytes(on_white(Image.open(p)))) for p in paths]
    evals = [_eval(p.read_bytes()) for p in paths]
    for i, query in enumerate(corpus):
        for j, (ref, mirror) in enumerate(evals):
            assert verify(query, ref, VerifyRules(), mirror).confirmed == (i == j), (paths[i].name, paths[j].name)


def _emoji_pair(demo_data, corpus_code: str, eval_code: str):
    corpus = Features.from_bytes(shard_bytes(on_white(Image.open(demo_data.cache / EMOJI / f"{corpus_code}.png"))))
    ref, mirror = _eval((demo_data.cache / EMOJI / f"{eval_code}.png").read_bytes())
    return corpus, ref, mirror


def test_recoloured_emoji_is_not_confirmed(demo_data):
    """Waving hand in the default yellow vs dark skin tone: same drawing, other colours."""
    corpus, ref, mirror = _emoji_pair(demo_data, "1f44b", "1f44b-1f3ff")
    assert corpus.colour and ref.colour  # the colour axes are compared
    v = verify(corpus, ref, VerifyRules(), mirror)
    assert not v.confirmed and v.colour_diff > VerifyRules().max_colour_diff, v
    # the drawing itself does line up: it is the colour that tells them apart
    assert v.block_agreement >= VerifyRules().min_block_agreement, v


def test_skin_tone_variants_are_not_confirmed(demo_data):
    """Light vs dark skin: the skin differs in lightness and hue, the outline does not."""
    corpus, ref, mirror = _emoji_pair(demo_data, "1f44b-1f3fb", "1f44b-1f3ff")
    assert corpus.colour and ref.colour
    v = verify(corpus, ref, VerifyRules(), mirror)
    assert not v.confirmed and v.colour_diff > VerifyRules().max_colour_diff, v


@pytest.mark.xfail(strict=True, reason="method claim does not hold: grinning face vs grinning face with big "
                   "eyes differ only in the eyes (ncc ~0.95, blocks ~0.9) -> confirmed")
def test_different_emoji_faces_are_not_confirmed(demo_data):
    corpus, ref, mirror = _emoji_pair(demo_data, "1f603", "1f600")
    assert not verify(corpus, ref, VerifyRules(), mirror).confirmed


# ---- brightening -------------------------------------------------------------------------------

STARS = "openclipart/png/shapes/stars"
SATURATED = ("openclipart/png/signs_and_symbols/flags/america/united_states/usa_newmexico.png",
             f"{EMOJI}/1f973.png")


def _brightened(path: Path, factor: float = 1.2) -> Features:
    return Features.from_bytes(shard_bytes(ImageEnhance.Brightness(on_white(Image.open(path))).enhance(factor)))


def test_brightness_gain_is_fitted_only_to_a_brightened_copy():
    rng = np.random.default_rng(0)
    # flat 8-px patches of random colour: the fit works at a quarter of the size, so each
    # patch stays a patch (per-pixel noise would be averaged before the clipping it models)
    ref = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    inside = np.ones((64, 64), bool)

    def gain(copy, max_gain=1.6):
        return _brightness_gain(copy.astype(np.uint8), ref, inside, max_gain)

    assert gain(np.minimum(ref * 1.3, 255)) == pytest.approx(1.3, abs=GAIN_STEP)
    assert gain(ref) == 1.0                                    # unedited
    assert gain(ref * 0.8) == 1.0                              # darkening clips nothing: no gain needed
    assert gain(np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1)))) == 1.0  # another picture
    assert gain(np.minimum(ref * 1.3, 255), max_gain=1.0) == 1.0  # modelling off


@pytest.mark.parametrize("path", SATURATED)
def test_brightened_saturated_colours_are_compared_under_the_gain(demo_data, path):
    """x1.2 clips saturated channels (golden yellow turns pure yellow): only the gain explains it."""
    ref, mirror = _eval((demo_data.cache / path).read_bytes())
    corpus = _brightened(demo_data.cache / path)
    v = verify(corpus, ref, VerifyRules(), mirror)
    assert v.confirmed and v.gain == pytest.approx(1.2, abs=2 * GAIN_STEP), v
    assert "brightened" in v.summary()
    # it is the gain that confirms it: compared as it is, the colours differ
    plain = verify(corpus, ref, VerifyRules(max_gain=1.0), mirror)
    assert plain.gain == 1.0 and not plain.confirmed and plain.colour_diff > VerifyRules().max_colour_diff, plain


def test_brightened_thin_line_stars_are_told_apart(demo_data):
    """Brightening washes a thin-line star's light lines out; what keeps some texture must agree.

    Skipping every washed block would leave only the ring the stars share (the copy of one star
    would then match another); the blocks with faint lines left tell them apart.
    """
    own, own_mirror = _eval((demo_data.cache / STARS / "star_83pt24step.png").read_bytes())
    other, other_mirror = _eval((demo_data.cache / STARS / "star_85pt21step.png").read_bytes())
    corpus = _brightened(demo_data.cache / STARS / "star_83pt24step.png")
    same = verify(corpus, own, VerifyRules(), own_mirror)
    assert same.confirmed and same.gain > 1.0, same
    different = verify(corpus, other, VerifyRules(), other_mirror)
    assert different.gain > 1.0 and different.block_agreement < VerifyRules().min_block_agreement, different
    assert not different.confirmed, different


@pytest.mark.xfail(strict=True, reason="method claim does not hold: brightened, star_85pt21's lines wash out "
                   "until what is left (ring, faint lines) agrees with star_83pt24's (blocks ~0.88) -> confirmed")
def test_brightened_star_is_not_confirmed_as_its_neighbour(demo_data):
    other, mirror = _eval((demo_data.cache / STARS / "star_83pt24step.png").read_bytes())
    assert not verify(_brightened(demo_data.cache / STARS / "star_85pt21step.png"), other, VerifyRules(), mirror).confirmed


# ---- the rules' bounds -------------------------------------------------------------------------


def test_mirror_is_found_only_through_the_mirrored_eval_image(originals):
    ref, ref_mirror = _eval(originals["chelsea"])
    query = _corpus(originals["chelsea"], "mirror")
    assert not verify(query, ref, VerifyRules(), None).confirmed
    v = verify(query, ref, VerifyRules(), ref_mirror)
    assert v.confirmed and v.mirrored
    # the unedited copy is found directly, not through the mirror
    direct = verify(Features.from_bytes(shard_bytes(photo("chelsea"))), ref, VerifyRules(), ref_mirror)
    assert direct.confirmed and not direct.mirrored


def test_a_pair_can_be_checked_one_way_round_only(originals):
    ref, ref_mirror = _eval(originals["chelsea"])
    mirrored = _corpus(originals["chelsea"], "mirror")
    only_mirror = verify(mirrored, None, VerifyRules(), ref_mirror)
    assert only_mirror.confirmed and only_mirror.mirrored
    assert not verify(mirrored, ref, VerifyRules(), None).confirmed
    with pytest.raises(ValueError, match="both"):
        verify(mirrored, None, VerifyRules(), None)


def _pill() -> Image.Image:
    """A gradient pill button on white: smooth, a handful of keypoints."""
    width, height = 240, 120
    ramp = np.tile(np.linspace(40, 220, width, dtype=np.float32), (height, 1))
    fill = Image.fromarray(np.stack([ramp, ramp * 0.6 + 60, 255 - ramp], -1).astype(np.uint8))
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rounded_rectangle((4, 4, width - 5, height - 5), 50, fill=255)
    out = Image.new("RGB", (width, height), "white")
    out.paste(fill, mask=mask)
    return out


def test_dense_fallback_runs_only_below_the_keypoint_bound():
    ref = Features.from_bytes(png_bytes(_pill()))
    query = Features.from_bytes(_jpeg(_pill(), 50))
    fewest = min(len(ref), len(query))
    assert fewest < VerifyRules().dense_max_keypoints
    found = verify(query, ref, VerifyRules(), None)
    # no keypoint transform: only the dense alignment confirms it
    assert found.confirmed and found.dense and found.inliers < VerifyRules().min_inliers, found
    # "fewer keypoints than dense_max_keypoints": at the bound itself the fallback does not run
    assert verify(query, ref, VerifyRules(dense_max_keypoints=fewest + 1), None).confirmed
    assert not verify(query, ref, VerifyRules(dense_max_keypoints=fewest), None).confirmed


def _disc(width: int = 200, height: int = 200) -> Image.Image:
    """A vertically shaded disc on white: smooth like the pill, another picture."""
    ramp = np.tile(np.linspace(220, 40, height, dtype=np.float32)[:, None], (1, width))
    fill = Image.fromarray(np.stack([ramp * 0.5 + 80, ramp, 255 - ramp * 0.8], -1).astype(np.uint8))
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse((6, 6, width - 7, height - 7), fill=255)
    out = Image.new("RGB", (width, height), "white")
    out.paste(fill, mask=mask)
    return out


def test_dense_alignment_is_screened_at_half_size(monkeypatch):
    from dedup import verify as verify_module

    ref = Features.from_bytes(png_bytes(_pill()))
    aligned: list[bool] = []
    real = verify_module._dense_align
    monkeypatch.setattr(verify_module, "_dense_align", lambda *a: aligned.append(True) or real(*a))

    def check(image, rules):
        aligned.clear()
        found = verify(Features.from_bytes(_jpeg(image, 50)), ref, rules, None)
        return found, bool(aligned)

    screened, unscreened = VerifyRules(), VerifyRules(dense_screen_min_cc=0)
    # a copy correlates near 1 at half size: aligned at full size and confirmed, as without the screen
    found, ran = check(_pill(), screened)
    assert ran and found.confirmed and found.dense and found.inliers < screened.min_inliers
    assert found == check(_pill(), unscreened)[0]
    assert not check(_pill(), VerifyRules(dense_screen_min_cc=0.99999))[1]  # the bound gates it
    # another smooth picture converges at half size to a lower correlation: never aligned at full
    # size, and the verdict is the one the full-size alignment would have reached
    found, ran = check(_disc(), screened)
    assert not ran and not found.confirmed
    found_unscreened, ran = check(_disc(), unscreened)
    assert ran and not found_unscreened.confirmed
    # where ECC does not converge at half size (the pill upside down), only full size can tell
    assert check(_pill().rotate(180), screened)[1]


def _textured_blocks(features: Features) -> int:
    """The rule's count over the whole frame: 16-px blocks whose (3x3 blurred) grey levels vary by >= 6."""
    import cv2

    from dedup.verify import BLOCK, MIN_BLOCK_STD

    grey = cv2.GaussianBlur(cv2.cvtColor(features.rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), (3, 3), 0)
    height, width = grey.shape
    return sum(grey[y:y + BLOCK, x:x + BLOCK].std() >= MIN_BLOCK_STD
               for y in range(0, height - BLOCK + 1, BLOCK) for x in range(0, width - BLOCK + 1, BLOCK))


def test_a_confirmation_without_inliers_needs_enough_textured_blocks():
    ref = Features.from_bytes(png_bytes(_pill()))
    query = Features.from_bytes(_jpeg(_pill(), 50))
    found = verify(query, ref, VerifyRules(min_blocks_without_inliers=0), None)
    assert found.confirmed and found.dense and found.inliers < VerifyRules().min_inliers, found
    # the count is the eval image's textured blocks inside the overlap: at most the whole frame's
    assert 0 < found.blocks <= _textured_blocks(ref)
    assert f"of {found.blocks} textured" in found.summary()  # the audit report shows what it rested on
    assert found.blocks >= VerifyRules().min_blocks_without_inliers  # the default keeps this copy
    assert verify(query, ref, VerifyRules(min_blocks_without_inliers=found.blocks), None).confirmed
    assert not verify(query, ref, VerifyRules(min_blocks_without_inliers=found.blocks + 1), None).confirmed
    # an eval image with fewer textured blocks in its whole frame than the floor is not even
    # aligned densely (it could not be confirmed that way); at the floor it is
    whole = _textured_blocks(ref)
    assert int(ref.textured().sum()) == whole
    assert verify(query, ref, VerifyRules(min_blocks_without_inliers=whole), None).dense
    assert not verify(query, ref, VerifyRules(min_blocks_without_inliers=whole + 1), None).dense
    # a copy confirmed by keypoint inliers does not need it
    image = photo("chelsea")
    ref, mirror = _eval(png_bytes(image))
    strict = VerifyRules(min_blocks_without_inliers=10 ** 6)
    kept = verify(Features.from_bytes(shard_bytes(image)), ref, strict, mirror)
    assert kept.confirmed and kept.inliers >= strict.min_inliers


def test_a_confirmation_without_inliers_needs_a_high_correlation():
    ref = Features.from_bytes(png_bytes(_pill()))
    query = Features.from_bytes(_jpeg(_pill(), 50))
    found = verify(query, ref, VerifyRules(min_ncc_without_inliers=0), None)
    assert found.confirmed and found.dense and found.inliers < VerifyRules().min_inliers, found
    assert VerifyRules().min_ncc_without_inliers == 0  # off by default (measured, not deployed)
    assert verify(query, ref, VerifyRules(min_ncc_without_inliers=found.ncc), None).confirmed
    above = float(np.nextafter(np.float32(found.ncc), np.float32(2)))
    refused = verify(query, ref, VerifyRules(min_ncc_without_inliers=above), None)
    assert not refused.confirmed and refused.ncc == found.ncc
    # with min_inliers keypoint inliers the copy needs only min_ncc
    rules = VerifyRules(min_ncc_without_inliers=1.0)
    assert rules.accepts(rules.min_inliers, rules.min_ncc, rules.min_block_agreement, 0.0, dense=False)
    assert not rules.accepts(rules.min_inliers - 1, 0.999, 1.0, 0.0, dense=True, phash_distance=0, blocks=100)
    floor = VerifyRules(min_ncc_without_inliers=0.95)
    assert floor.accepts(rules.min_inliers - 1, 0.95, 1.0, 0.0, dense=True, phash_distance=0, blocks=100)
    assert not floor.accepts(rules.min_inliers - 1, 0.9499, 1.0, 0.0, dense=True, phash_distance=0, blocks=100)
    assert VerifyRules().accepts(rules.min_inliers - 1, 0.9499, 1.0, 0.0, dense=True, phash_distance=0, blocks=100)


@pytest.mark.parametrize("name", ["astronaut", "chelsea"])
def test_rotation_beyond_the_bound_is_not_confirmed(name):
    image = photo(name)
    ref, mirror = _eval(png_bytes(image))
    rules = VerifyRules()
    assert rules.max_rotation < 45
    small = verify(Features.from_bytes(shard_bytes(_rotate(image, 5))), ref, rules, mirror)
    assert small.confirmed and small.rotation == pytest.approx(5, abs=1)
    large = Features.from_bytes(shard_bytes(_rotate(image, 45)))
    assert not verify(large, ref, rules, mirror).confirmed
    # it is the bound that rejects it: allowed 50 degrees, the same pair is confirmed at 45
    wide = verify(large, ref, VerifyRules(max_rotation=50), mirror)
    assert wide.confirmed and wide.rotation == pytest.approx(45, abs=1), wide


def _almost_blank() -> Image.Image:
    """A white page with one faint grey dot: next to no keypoints."""
    image = Image.new("RGB", (256, 256), "white")
    ImageDraw.Draw(image).ellipse((126, 126, 130, 130), fill=(235, 235, 235))
    return image


def test_almost_blank_image_is_undecided_and_decide_keeps_it(originals):
    blank = Features(_almost_blank())
    ref, mirror = _eval(originals["astronaut"])
    rules = VerifyRules(min_keypoints=8)
    assert len(blank) < rules.min_keypoints <= len(ref)
    v = verify(blank, ref, rules, mirror)
    assert v.undecided and not v.confirmed
    assert Verifier.decide(v)  # verification cannot veto what it cannot see
    assert "undecided" in v.summary()
    # the same in the other direction: an eval image with too few keypoints
    assert verify(Features.from_bytes(originals["astronaut"]), blank, rules, blank.mirrored()).undecided
    # under the default rules the fallback is whatever min_keypoints says (0: off)
    default = verify(blank, ref, VerifyRules(), mirror)
    assert default.undecided == (len(blank) < VerifyRules().min_keypoints) and not default.confirmed
    assert Verifier.decide(default) == default.undecided
    # a confirmed pair is decided by its confirmation
    confirmed = verify(ref, ref, rules, mirror)
    assert confirmed.confirmed and not confirmed.undecided and Verifier.decide(confirmed)


# ---- determinism, cache ------------------------------------------------------------------------


def test_verification_is_deterministic(originals):
    pairs = [(originals["coffee"], "crop_20", originals["coffee"]),          # a copy
             (originals["coffee"], "rotate_5", originals["chelsea"]),        # distinct photos
             (originals["ladybug_01.png"], "pad_10", originals["ladybug_01.png"])]
    for corpus_data, edit, eval_data in pairs:
        results = []
        for _ in range(2):  # everything rebuilt from the bytes each time: features, mirror, verification
            ref, mirror = _eval(eval_data)
            results.append(verify(_corpus(corpus_data, edit), ref, VerifyRules(), mirror))
        assert results[0] == results[1]
        a, b = _corpus(corpus_data, edit), _corpus(corpus_data, edit)
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.descriptors, b.descriptors)


def test_verifier_caches_eval_features(originals, tmp_path):
    refs = {}
    for name in ("chelsea", "coffee"):
        refs[name] = str(tmp_path / f"{name}.png")
        Path(refs[name]).write_bytes(originals[name])
    reads = []

    def read_ref(ref):
        reads.append(ref)
        return Path(ref).read_bytes()

    verifier = Verifier(read_ref=read_ref)
    crop = shard_bytes(_crop(photo("chelsea"), 0.8))
    results = [verifier.check(crop, refs["chelsea"]) for _ in range(3)]
    assert reads == [refs["chelsea"]]
    ref, mirror = _eval(originals["chelsea"])
    assert results[0] == results[1] == results[2] == verify(Features.from_bytes(crop), ref, verifier.rules, mirror)
    assert results[0].confirmed
    assert not verifier.check(Features.from_bytes(crop), refs["coffee"]).confirmed  # Features or bytes
    verifier.check(crop, refs["chelsea"])
    assert reads == [refs["chelsea"], refs["coffee"]]
    # a cache of one eval image reads again when the other comes between
    small = Verifier(read_ref=read_ref, cache_size=1)
    reads.clear()
    for name in ("chelsea", "coffee", "chelsea"):
        small.check(crop, refs[name])
    assert reads == [refs["chelsea"], refs["coffee"], refs["chelsea"]]
    # checked one way round, the other way's features are not made; asked for later, they are
    one_way = Verifier(read_ref=read_ref)
    mirrored = shard_bytes(ImageOps.mirror(photo("chelsea")))
    assert not one_way.check(mirrored, refs["chelsea"], ways=(True, False)).confirmed
    assert one_way._cache[refs["chelsea"]][1] is None
    found = one_way.check(mirrored, refs["chelsea"], ways=(False, True))
    assert found.confirmed and found.mirrored


# ---- hostile input -----------------------------------------------------------------------------


def _truncated_jpeg() -> bytes:
    data = _jpeg(photo("astronaut"), 90)
    return data[: len(data) // 2]


def test_unreadable_bytes_raise_clear_errors():
    with pytest.raises(OSError, match="truncated"):
        Features.from_bytes(_truncated_jpeg())
    for junk in (b"<!doctype html><html><body>Not an image</body></html>", b""):
        with pytest.raises(UnidentifiedImageError, match="cannot identify image file"):
            Features.from_bytes(junk)


def test_verify_candidates_keeps_unreadable_corpus_images_flagged(originals, tmp_path):
    refs = []
    for name in ("chelsea", "coffee"):
        refs.append(str(tmp_path / f"{name}.png"))
        Path(refs[-1]).write_bytes(originals[name])
    index = EmbeddingIndex(np.eye(2), ["photos"] * 2, ["test"] * 2, ["chelsea", "coffee"], refs)
    keys = ["copy", "truncated", "html", "missing"]
    # each corpus key's nearest eval image: the copy -> chelsea, the rest -> coffee
    vectors = np.array([[1.0, 0.1], [0.1, 1.0], [0.1, 1.0], [0.1, 1.0]])
    candidates = embedding_candidates(keys, vectors, index, top_k=1, min_cosine=0.5)
    assert candidates["key"].tolist() == keys and candidates["eval_key"].tolist() == ["chelsea"] + ["coffee"] * 3
    images = {"copy": shard_bytes(_crop(photo("chelsea"), 0.8)), "truncated": _truncated_jpeg(),
              "html": b"<!doctype html><html></html>"}  # "missing": no bytes at all
    checked = verify_candidates(candidates, images, index, Verifier()).set_index("key")
    assert checked.loc["copy", "confirmed"] and checked.loc["copy", "flagged"]
    assert checked.loc["copy", "verification"].startswith("confirmed")
    for key in ("truncated", "html", "missing"):
        row = checked.loc[key]
        assert row["flagged"] and row["undecided"] and not row["confirmed"], key
        assert row["verification"] == "corpus image unreadable"


def test_verify_candidates_keeps_pairs_with_an_unreadable_eval_image_flagged(originals, tmp_path):
    """An eval image gone since indexing: no verdict, so the pair stays flagged (not a crash)."""
    present, gone = str(tmp_path / "chelsea.png"), str(tmp_path / "gone.png")
    Path(present).write_bytes(originals["chelsea"])
    index = EmbeddingIndex(np.eye(2), ["photos"] * 2, ["test"] * 2, ["chelsea", "gone"], [present, gone])
    candidates = embedding_candidates(["copy", "other"], np.array([[1.0, 0.1], [0.1, 1.0]]), index,
                                      top_k=1, min_cosine=0.5)
    images = {"copy": shard_bytes(_crop(photo("chelsea"), 0.8)), "other": shard_bytes(photo("coffee"))}
    checked = verify_candidates(candidates, images, index, Verifier()).set_index("key")
    assert checked.loc["copy", "confirmed"]
    row = checked.loc["other"]
    assert row["eval_key"] == "gone" and row["flagged"] and row["undecided"] and not row["confirmed"]
    assert row["verification"] == "eval image unreadable"
