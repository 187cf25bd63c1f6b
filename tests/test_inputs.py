"""Bad and unusual inputs: at the ``hf_api_prompt.inputs`` level, through a direct
call of the prompter on a batch dict, and through ``prompter.map(dataset)``.

Expected pixels are computed from first principles (palette look-ups, CMYK
corner cases, 16-bit -> 8-bit scaling, EXIF rotation as a numpy rotation).
"""

import gc
import io
import math
import resource
import struct
import zlib
from fractions import Fraction

import numpy as np
import pytest
from datasets import Array2D, Dataset, Features, Image as ImageFeature, Value
from PIL import Image

from hf_api_prompt import ImagePrompter, RowError
from hf_api_prompt.inputs import check_question, open_image, to_rgb

from compare import stored_image

Q = "where is the red car?"


# ------------------------------------------------------------------ helpers
def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def rgb_image(w, h, seed=0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (h, w, 3)).astype(np.uint8))


def truncated_png() -> bytes:
    data = encode(rgb_image(40, 40, seed=9))
    return data[: len(data) // 2]


def level_16(value: int) -> int:
    """Nearest 8-bit level of a 16-bit sample, exactly: round(v * 255 / 65535), halves up."""
    return math.floor(Fraction(value * 255, 65535) + Fraction(1, 2))


def as_dict(data: bytes) -> dict:
    return {"bytes": data, "path": None}


def arr(image) -> np.ndarray:
    return np.asarray(image)


def mode_cases():
    """(name, PIL image, encoded bytes, expected RGB array) for unusual modes."""
    cases = []
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 255]], [[0, 0, 0, 128], [255, 255, 255, 7]]], np.uint8)
    im = Image.frombytes("RGBA", (2, 2), rgba.tobytes())
    cases.append(("RGBA", im, encode(im), rgba[..., :3]))  # alpha is dropped, colour kept

    palette = [10, 20, 30, 200, 100, 0, 5, 250, 7]
    im = Image.new("P", (3, 2))
    im.putpalette(palette + [0] * (768 - len(palette)))
    idx = np.array([[2, 0, 1], [1, 1, 0]])
    im.putdata(idx.ravel().tolist())
    want = np.array(palette, np.uint8).reshape(3, 3)[idx]
    cases.append(("P", im, encode(im), want))

    la = np.array([[77, 0], [200, 255]], np.uint8)  # (L, A) pairs, 2x1 image
    im = Image.frombytes("LA", (2, 1), la.tobytes())
    cases.append(("LA", im, encode(im), np.repeat(la[:, 0][None, :, None], 3, axis=2)))

    gray = np.array([[0, 1, 128], [254, 255, 60]], np.uint8)
    im = Image.frombytes("L", (3, 2), gray.tobytes())
    cases.append(("L", im, encode(im), np.repeat(gray[..., None], 3, axis=2)))

    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [0, 255, 0, 0]]], np.uint8)
    im = Image.frombytes("CMYK", (4, 1), cmyk.tobytes())
    # no ink = white; full cyan = (0, 255, 255); full black = black; full magenta = (255, 0, 255)
    want = np.array([[[255, 255, 255], [0, 255, 255], [0, 0, 0], [255, 0, 255]]], np.uint8)
    cases.append(("CMYK", im, encode(im, "TIFF"), want))

    ramp = np.linspace(0, 65535, 24 * 5).round().astype(np.uint16).reshape(5, 24)
    ramp[0, :6] = [0, 128, 129, 257, 385, 386]   # around the rounding points of v / 257
    im = Image.fromarray(ramp)
    assert im.mode == "I;16"
    want8 = np.floor(ramp.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)  # nearest 8-bit level
    assert want8[0, :6].tolist() == [0, 0, 1, 1, 1, 2]
    cases.append(("I;16", im, encode(im), np.repeat(want8[..., None], 3, axis=2)))

    bits = Image.frombytes("1", (8, 2), bytes([0b10100000, 0b00000001]))
    want = np.zeros((2, 8), np.uint8)
    want[0, 0] = want[0, 2] = want[1, 7] = 255
    cases.append(("1", bits, encode(bits), np.repeat(want[..., None], 3, axis=2)))
    return cases


MODE_CASES = mode_cases()
MODE_IDS = [c[0] for c in MODE_CASES]


def exif_rotated_jpeg():
    """A 40x24 stored JPEG with EXIF Orientation=6 (display = stored rotated 90 deg clockwise)."""
    stored = np.zeros((24, 40, 3), np.uint8)
    stored[:12, :20] = (255, 255, 255)      # top-left quadrant white
    stored[12:, 20:] = (0, 0, 255)          # bottom-right quadrant blue
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    decoded_stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # JPEG pixels, not rotated
    return data, np.rot90(decoded_stored, k=-1)  # k=-1: clockwise


@pytest.fixture(scope="module")
def prompter(tiny_clip):
    return ImagePrompter("clip", model=tiny_clip, layer_index=1)


@pytest.fixture(scope="module")
def passthrough(tiny_clip):
    return ImagePrompter("clip", model=tiny_clip, layer_index=1, on_error="passthrough")


# ========================================================== inputs module
class TestOpenImage:
    def test_none(self):
        with pytest.raises(ValueError, match="missing"):
            open_image(None)

    def test_dict_without_bytes_or_path(self):
        with pytest.raises(ValueError, match="missing"):
            open_image({"bytes": None, "path": None})

    @pytest.mark.parametrize("value", [b"not an image", as_dict(b"not an image"), truncated_png(), as_dict(truncated_png())],
                             ids=["bytes", "dict", "truncated", "truncated-dict"])
    def test_undecodable(self, value):
        with pytest.raises(ValueError, match="could not be decoded"):
            open_image(value)

    def test_missing_file(self, tmp_path):
        with pytest.raises(ValueError, match="could not be decoded"):
            open_image(str(tmp_path / "nope.png"))

    def test_unsupported_type(self):
        with pytest.raises(ValueError, match="unsupported type"):
            open_image(12345)

    def test_path_and_bytes_and_pil_agree(self, tmp_path):
        image = rgb_image(7, 5)
        path = tmp_path / "x.png"
        image.save(path)
        for value in (str(path), encode(image), as_dict(encode(image)), {"bytes": None, "path": str(path)}, image):
            out = open_image(value)
            assert out.mode == "RGB" and out.size == (7, 5)
            np.testing.assert_array_equal(arr(out), arr(image))

    @pytest.mark.parametrize("case", MODE_CASES, ids=MODE_IDS)
    def test_modes_become_rgb(self, case):
        name, image, data, want = case
        for value in (image, data, as_dict(data)):
            out = open_image(value)
            assert out.mode == "RGB" and out.size == image.size, name
            np.testing.assert_array_equal(arr(out), want)

    def test_i16_is_scaled_not_clipped(self):
        image = Image.fromarray(np.array([[1000, 30000, 65535]], np.uint16))
        assert arr(to_rgb(image))[0, :, 0].tolist() == [4, 117, 255]  # round(v / 257)

    def test_16_bit_pgm_is_scaled_by_its_range(self):
        # P5 written by hand: header, then big-endian 16-bit samples (maxval 65535).
        samples = [0, 128, 129, 257, 385, 386, 1000, 30000, 65406, 65407]
        data = b"P5\n5 2\n65535\n" + b"".join(v.to_bytes(2, "big") for v in samples)
        want = [level_16(v) for v in samples]
        assert want[:6] == [0, 0, 1, 1, 1, 2]
        assert want[-2:] == [254, 255]  # 65406 / 257 = 254.498, 65407 / 257 = 254.502
        for value in (data, as_dict(data), Image.open(io.BytesIO(data))):
            out = open_image(value)
            assert out.mode == "RGB" and out.size == (5, 2)
            assert arr(out)[..., 0].ravel().tolist() == want
            assert (arr(out)[..., 0] == arr(out)[..., 2]).all()

    def test_dark_16_bit_pgm_stays_dark(self):
        # Every sample <= 255: 16-bit data by the file's depth, not 8-bit levels.
        data = b"P5\n3 1\n65535\n" + b"".join(v.to_bytes(2, "big") for v in (0, 128, 255))
        assert arr(open_image(data))[0, :, 0].tolist() == [0, 0, 1]

    def test_pgm_with_other_maxval(self):
        samples = [0, 1, 2, 511, 512, 1022, 1023]
        data = b"P5\n7 1\n1023\n" + b"".join(v.to_bytes(2, "big") for v in samples)
        got = arr(open_image(data))[0, :, 0].astype(int)
        want = np.array([math.floor(Fraction(v * 255, 1023) + Fraction(1, 2)) for v in samples])
        assert np.abs(got - want).max() <= 1  # Pillow rescales to 0..65535 first: one rounding more

    def test_16_bit_png_written_by_hand(self):
        samples = [[0, 257, 1000, 65535], [32767, 32768, 128, 129]]
        raw = b"".join(b"\x00" + b"".join(v.to_bytes(2, "big") for v in row) for row in samples)  # filter 0 per row
        def chunk(kind, body):
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 2, 16, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
        want = [[level_16(v) for v in row] for row in samples]
        assert arr(open_image(data))[..., 0].tolist() == want
        # The same pixels as a 32-bit mode I image made in memory (no file depth: by range).
        as_i = Image.open(io.BytesIO(data)).convert("I")
        assert as_i.mode == "I" and arr(to_rgb(as_i))[..., 0].tolist() == want

    def test_mode_i_within_8_bits_and_out_of_range(self):
        levels = Image.fromarray(np.array([[0, 7, 200, 255]], np.int32), mode="I")
        assert arr(to_rgb(levels))[0, :, 0].tolist() == [0, 7, 200, 255]
        wide = Image.fromarray(np.array([[-5, 10, 70000]], np.int32), mode="I")
        assert arr(to_rgb(wide))[0, :, 0].tolist() == [0, 10, 255]  # clipped

    def test_mode_f_fractions_are_scaled(self):
        values = np.array([[0.0, 0.25, 0.5, 1 / 255, 0.999, 1.0]], np.float32)
        image = Image.fromarray(values)
        assert image.mode == "F"
        want = [math.floor(Fraction(float(v)) * 255 + Fraction(1, 2)) for v in values[0]]
        assert want == [0, 64, 128, 1, 255, 255]
        assert arr(to_rgb(image))[0, :, 0].tolist() == want
        tiff = encode(image, "TIFF")
        assert arr(open_image(tiff))[0, :, 0].tolist() == want

    def test_mode_f_outside_0_1_is_clipped(self):
        image = Image.fromarray(np.array([[-3.0, 2.4, 2.6, 300.0]], np.float32))
        assert arr(to_rgb(image))[0, :, 0].tolist() == [0, 2, 3, 255]

    @pytest.mark.parametrize("mode", ["F", "I;16"])
    def test_large_deep_gray_is_converted_in_bands(self, mode):
        """A 24-Mpixel deep gray image: the conversion's wide (int64, float64) temporaries stay band-sized.

        Converted whole, they would be several full-resolution copies of 8 bytes a pixel
        (over 190 MB each here); numpy reports its buffers to tracemalloc, Pillow's are not counted.
        """
        import tracemalloc

        rng = np.random.default_rng(0)
        if mode == "F":
            samples = rng.random((4000, 6000), dtype=np.float32)  # fractions: level = round(v * 255)
            want_row = np.floor(samples[1234].astype(np.float64) * 255 + 0.5)
        else:
            samples = rng.integers(0, 65536, (4000, 6000), dtype=np.uint16)
            want_row = (samples[1234].astype(np.int64) * 510 + 65535) // 131070
        image = Image.fromarray(samples)
        assert image.mode == mode
        tracemalloc.start()
        try:
            rgb = to_rgb(image)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert np.array_equal(arr(rgb)[1234, :, 0], want_row)
        # np.asarray's copy of the samples (Pillow's tobytes holds them twice at its peak), the uint8 levels, and
        # the band temporaries (a few 8-byte copies of 2**20 pixels).
        assert peak < image.width * image.height * (2 * samples.itemsize + 1) + 64 * 2 ** 20, peak

    def test_mode_f_nan_is_an_error(self):
        image = Image.fromarray(np.array([[0.5, np.nan]], np.float32))
        with pytest.raises(ValueError, match="NaN"):
            open_image(image)

    def test_exif_orientation_is_applied(self):
        data, upright = exif_rotated_jpeg()
        out = open_image(data)
        assert out.size == (24, 40)                      # transposed: width 24, height 40
        np.testing.assert_array_equal(arr(out), upright)
        # From first principles: the white stored top-left quadrant is now top-right.
        assert arr(out)[2:18, 14:22].min() > 240 and arr(out)[2:18, 2:10].max() < 15

    def test_one_pixel(self):
        out = open_image(encode(Image.new("RGB", (1, 1), (9, 8, 7))))
        assert out.size == (1, 1) and arr(out)[0, 0].tolist() == [9, 8, 7]


class TestCheckQuestion:
    @pytest.mark.parametrize("value,match", [(None, "missing"), ("", "empty"), ("  ", "empty"), ("\n\t", "empty"),
                                             (7, "string"), (b"why?", "string"), (["a"], "string")])
    def test_bad(self, value, match):
        with pytest.raises(ValueError, match=match):
            check_question(value)

    @pytest.mark.parametrize("value", ["why?", "  padded question  ", "x"])
    def test_good_is_unmodified(self, value):
        assert check_question(value) == value


def test_row_error_names_row():
    error = RowError(3, "image could not be decoded (boom)")
    assert isinstance(error, ValueError)
    assert str(error) == "row 3: image could not be decoded (boom)"
    assert error.row == 3 and error.reason == "image could not be decoded (boom)"


# ======================================================= direct batch calls
BAD_IMAGES = [
    (None, "missing"),
    (as_dict(b"not an image"), "could not be decoded"),
    (as_dict(truncated_png()), "could not be decoded"),
]
BAD_QUESTIONS = [(None, "missing"), ("", "empty"), ("  ", "empty"), (42, "string")]


@pytest.mark.parametrize("value,reason", BAD_IMAGES, ids=["none", "junk", "truncated"])
def test_direct_bad_image_raises_with_row_index(prompter, value, reason):
    images = [rgb_image(20, 20, 1), value, rgb_image(20, 20, 2)]
    with pytest.raises(RowError, match=rf"^row 11: image .*{reason}") as info:
        prompter({"image": images, "question": [Q] * 3}, [10, 11, 12])
    assert info.value.row == 11
    with pytest.raises(RowError, match=r"^row 1 of this batch: image"):
        prompter({"image": images, "question": [Q] * 3})


@pytest.mark.parametrize("value,reason", BAD_QUESTIONS, ids=["none", "empty", "blank", "int"])
def test_direct_bad_question_raises_with_row_index(prompter, value, reason):
    with pytest.raises(RowError, match=rf"^row 6: question .*{reason}"):
        prompter({"image": [rgb_image(20, 20, 1)] * 2, "question": [Q, value]}, [5, 6])


def test_direct_passthrough(prompter, passthrough):
    good = [rgb_image(30, 20, 1), rgb_image(20, 30, 2), rgb_image(25, 25, 3)]
    l_image = Image.fromarray(np.full((10, 12), 90, np.uint8))
    batch = {
        "image": [good[0], None, as_dict(b"not an image"), l_image, good[1], as_dict(truncated_png()), good[2],
                  rgb_image(9, 9, 4), rgb_image(9, 9, 5)],
        "question": [Q, Q, Q, "   ", Q, Q, Q, None, 42],
    }
    out = passthrough(batch, list(range(100, 109)))
    masked = [stored_image(value) for value in out["masked_image"]]
    status = out["api_status"]
    assert len(status) == len(out["heatmap"]) == len(out["masked_image"]) == 9
    assert status[0] == status[4] == status[6] == "ok"
    assert "missing" in status[1] and "could not be decoded" in status[2] and "could not be decoded" in status[5]
    assert "question" in status[3] and "empty" in status[3] and "question" in status[7] and "missing" in status[7]
    assert "question must be a string" in status[8]
    for i in (1, 2, 3, 5, 7, 8):
        assert out["heatmap"][i] is None
    assert masked[1] is None and masked[2] is None and masked[5] is None
    # Decodable rows with a bad question pass through unmasked (as RGB).
    np.testing.assert_array_equal(arr(masked[3]), np.full((10, 12, 3), 90, np.uint8))
    np.testing.assert_array_equal(arr(masked[7]), arr(rgb_image(9, 9, 4)))
    # The good rows are masked exactly as when they run alone.
    alone = prompter({"image": good, "question": [Q] * 3})
    for slot, i in enumerate((0, 4, 6)):
        np.testing.assert_array_equal(np.asarray(out["heatmap"][i]), np.asarray(alone["heatmap"][slot]))
        np.testing.assert_array_equal(arr(masked[i]), arr(stored_image(alone["masked_image"][slot])))
        assert not np.array_equal(arr(masked[i]), arr(good[slot]))


def test_direct_all_bad_batch_passthrough(passthrough):
    out = passthrough({"image": [None, as_dict(b"junk")], "question": [Q, Q]})
    assert out["masked_image"] == [None, None] and out["heatmap"] == [None, None]
    assert all(s != "ok" for s in out["api_status"])


def test_direct_missing_column(prompter):
    with pytest.raises(KeyError, match=r"question_column='question'.*\['image', 'query'\]"):
        prompter({"image": [rgb_image(8, 8)], "query": [Q]})
    with pytest.raises(KeyError, match=r"image_column='image'.*\['picture', 'question'\]"):
        prompter({"picture": [rgb_image(8, 8)], "question": [Q]})


def test_direct_unusual_modes(prompter):
    images = [case[1] for case in MODE_CASES]
    out = prompter({"image": images, "question": [Q] * len(images)})
    # Same result as feeding the first-principles RGB version of each image.
    want = prompter({"image": [Image.fromarray(case[3]) for case in MODE_CASES], "question": [Q] * len(images)})
    for case, value, expected in zip(MODE_CASES, out["masked_image"], want["masked_image"]):
        masked = stored_image(value)
        assert masked.mode == "RGB" and masked.size == case[1].size, case[0]
        np.testing.assert_array_equal(arr(masked), arr(stored_image(expected)))


def as_stored_jpeg(value) -> np.ndarray:
    """A lossless masked image as the default ``image_format="source"`` stores it for a JPEG source: JPEG q75."""
    return arr(Image.open(io.BytesIO(encode(stored_image(value), "JPEG", quality=75))))


def test_direct_exif_rotated(prompter):
    data, upright = exif_rotated_jpeg()
    stored = Image.open(io.BytesIO(data))
    assert stored.size == (40, 24)
    out = prompter({"image": [as_dict(data), stored], "question": [Q, Q]})
    # The upright pixels made in memory: masked the same way, stored losslessly.
    want = prompter({"image": [Image.fromarray(np.ascontiguousarray(upright))] * 2, "question": [Q, Q]})
    for value, expected in zip(out["masked_image"], want["masked_image"]):
        masked = stored_image(value)
        assert masked.size == (24, 40) and masked.format == "JPEG"
        np.testing.assert_array_equal(arr(masked), as_stored_jpeg(expected))


@pytest.mark.parametrize("geometry", ["paper", "aligned"])
def test_direct_one_pixel_images(tiny_clip, geometry):
    p = ImagePrompter("clip", model=tiny_clip, layer_index=1, geometry=geometry)
    images = [Image.new("RGB", (1, 1), (200, 10, 10)), Image.new("L", (1, 1), 77), Image.new("RGB", (1, 3), (5, 6, 7))]
    out = p({"image": images, "question": [Q] * 3})
    masked = [stored_image(value) for value in out["masked_image"]]
    assert [m.size for m in masked] == [(1, 1), (1, 1), (1, 3)]
    assert all(m.mode == "RGB" for m in masked)
    for h in out["heatmap"]:
        h = np.asarray(h)
        assert h.shape == (8, 8) and np.isfinite(h).all() and 0 <= h.min() and h.max() <= 1


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # decoding its 96-Mpixel output, on purpose
def test_direct_very_large_image_bounded_memory(prompter):
    prompter({"image": [rgb_image(16, 16)], "question": [Q]})  # model loaded before measuring
    gc.collect()
    before = _rss_bytes()
    small = np.zeros((8, 12, 3), np.uint8)
    small[:, :6] = (255, 255, 255)
    small[4:, :, 1] = 128
    image = Image.fromarray(small).resize((12000, 8000), Image.Resampling.NEAREST)  # 288 MB of pixels
    out = prompter({"image": [image], "question": [Q]})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes (before the test decodes)
    masked = stored_image(out["masked_image"][0])
    assert masked.size == (12000, 8000) and masked.mode == "RGB"
    assert np.asarray(out["heatmap"][0]).shape == (8, 8)
    growth = peak - before
    assert growth < 3 * 2**30, f"peak RSS grew by {growth / 2**30:.2f} GiB"
    # Spot check: grayscale 0, so every pixel is at most the original.
    corner = np.asarray(masked.crop((0, 0, 50, 50)))
    assert (corner <= np.asarray(image.crop((0, 0, 50, 50)))).all()
    del image, masked, out
    gc.collect()


# ================================================================ via map
def dataset(images, questions) -> Dataset:
    return Dataset.from_dict(
        {"image": images, "question": questions, "id": list(range(len(images)))},
        features=Features({"image": ImageFeature(), "question": Value("string"), "id": Value("int64")}),
    )


def goods(n, seed=0):
    return [as_dict(encode(rgb_image(24 + 4 * k, 20 + 2 * k, seed + k))) for k in range(n)]


@pytest.mark.parametrize("bad,reason", [(None, "missing"), (as_dict(b"not an image"), "could not be decoded"),
                                        (as_dict(truncated_png()), "could not be decoded")],
                         ids=["none", "junk", "truncated"])
def test_map_bad_image_names_absolute_row(prompter, bad, reason):
    images = goods(6)
    images[3] = bad
    with pytest.raises(RowError, match=rf"^row 3: image .*{reason}") as info:
        prompter.map(dataset(images, [Q] * 6), batch_size=2)
    assert info.value.row == 3


@pytest.mark.parametrize("bad,reason", [(None, "missing"), ("", "empty"), ("  ", "empty")], ids=["none", "empty", "blank"])
def test_map_bad_question_names_absolute_row(prompter, bad, reason):
    questions = [Q] * 5
    questions[4] = bad
    with pytest.raises(RowError, match=rf"^row 4: question .*{reason}"):
        prompter.map(dataset(goods(5), questions), batch_size=2)


def test_map_non_string_question(prompter):
    ds = Dataset.from_dict({"image": goods(2), "question": [3, 4]},
                           features=Features({"image": ImageFeature(), "question": Value("int64")}))
    with pytest.raises(RowError, match=r"^row 0: question must be a string"):
        prompter.map(ds)


def test_map_non_string_question_passthrough(passthrough):
    ds = Dataset.from_dict({"image": goods(2), "question": [3, 4]},
                           features=Features({"image": ImageFeature(), "question": Value("int64")}))
    out = passthrough.map(ds)
    assert all("question must be a string" in s for s in out["api_status"][:])
    assert out["heatmap"][:] == [None, None]
    np.testing.assert_array_equal(arr(out[1]["masked_image"]), arr(Image.open(io.BytesIO(goods(2)[1]["bytes"]))))


def test_map_missing_column(tiny_clip):
    p = ImagePrompter("clip", model=tiny_clip, layer_index=1, question_column="query")
    with pytest.raises(KeyError, match=r"question_column='query'.*\['image', 'question', 'id'\]"):
        p.map(dataset(goods(1), [Q]))


def test_map_passthrough(prompter, passthrough):
    good = goods(4, seed=20)
    images = [as_dict(b"not an image"), None,           # first batch: all bad
              good[0], good[1],                          # row 3: bad question
              good[2], as_dict(truncated_png()),
              good[3]]
    questions = [Q, Q, Q, "  ", Q, Q, Q]
    ds = dataset(images, questions)
    out = passthrough.map(ds, batch_size=2)
    # Declared types survive although the first batch has no good row.
    assert out.features["masked_image"] == ImageFeature()
    assert out.features["heatmap"] == Array2D((8, 8), "float32")
    assert out.features["api_status"] == Value("string")
    assert out.features["image"] == ImageFeature()
    rows = out  # rows 0 and 5 held undecodable bytes: their image reads back as None
    assert [rows[i]["image"] is None for i in range(7)] == [True, True, False, False, False, True, False]
    status = rows["api_status"][:]
    assert "could not be decoded" in status[0] and "missing" in status[1]
    assert "question" in status[3] and "could not be decoded" in status[5]
    assert [status[i] for i in (2, 4, 6)] == ["ok"] * 3
    for i in (0, 1, 3, 5):
        assert rows[i]["heatmap"] is None
    for i in (0, 1, 5):
        assert rows[i]["masked_image"] is None
    # Row 3 passes through unmasked.
    np.testing.assert_array_equal(arr(rows[3]["masked_image"]), arr(Image.open(io.BytesIO(good[1]["bytes"]))))
    # The good rows are masked, identically to running them alone (same one-image batches).
    alone = prompter.map(dataset([good[0], good[2], good[3]], [Q] * 3), batch_size=1)
    for slot, i in enumerate((2, 4, 6)):
        h = np.asarray(rows[i]["heatmap"], dtype=np.float32)
        assert h.shape == (8, 8)
        np.testing.assert_array_equal(h, np.asarray(alone[slot]["heatmap"], dtype=np.float32))
        np.testing.assert_array_equal(arr(rows[i]["masked_image"]), arr(alone[slot]["masked_image"]))
    original = arr(Image.open(io.BytesIO(good[0]["bytes"])))
    assert not np.array_equal(arr(rows[2]["masked_image"]), original)


def test_map_passthrough_bad_questions_status(passthrough):
    questions = [Q, None, "", "  ", Q]
    out = passthrough.map(dataset(goods(5), questions), batch_size=5)
    status = out["api_status"][:]
    assert status[0] == status[4] == "ok"
    assert "missing" in status[1] and "empty" in status[2] and "empty" in status[3]
    assert all("question" in status[i] for i in (1, 2, 3))
    assert [h is None for h in out["heatmap"][:]] == [False, True, True, True, False]


def test_map_unusual_modes(prompter):
    ds = dataset([as_dict(case[2]) for case in MODE_CASES], [Q] * len(MODE_CASES))
    out = prompter.map(ds, batch_size=len(MODE_CASES))
    want = prompter({"image": [Image.fromarray(case[3]) for case in MODE_CASES], "question": [Q] * len(MODE_CASES)})
    for case, row, expected in zip(MODE_CASES, out, want["masked_image"]):
        assert row["masked_image"].mode == "RGB" and row["masked_image"].size == case[1].size, case[0]
        np.testing.assert_array_equal(arr(row["masked_image"]), arr(stored_image(expected)))  # PNG and TIFF sources: lossless


def test_map_exif_rotated(prompter):
    data, upright = exif_rotated_jpeg()
    out = prompter.map(dataset([as_dict(data)], [Q]))
    assert out[0]["masked_image"].size == (24, 40) and out[0]["masked_image"].format == "JPEG"
    want = prompter({"image": [Image.fromarray(np.ascontiguousarray(upright))], "question": [Q]})
    np.testing.assert_array_equal(arr(out[0]["masked_image"]), as_stored_jpeg(want["masked_image"][0]))


def test_map_one_pixel(prompter):
    out = prompter.map(dataset([as_dict(encode(Image.new("RGB", (1, 1), (1, 2, 3))))], [Q]))
    assert out[0]["masked_image"].size == (1, 1)
    assert np.asarray(out[0]["heatmap"]).shape == (8, 8)


# ======================================================= column clashes
@pytest.mark.parametrize("params,field", [
    (dict(answer_column="question"), "answer_column"),
    (dict(answer_column="image"), "answer_column"),
    (dict(masked_image_column="image"), "masked_image_column"),
    (dict(heatmap_column="question"), "heatmap_column"),
    (dict(on_error="passthrough", status_column="question"), "status_column"),
    (dict(question_column="image"), "question_column"),
])
def test_config_rejects_an_output_named_like_an_input(params, field):
    from hf_api_prompt import PrompterConfig

    with pytest.raises(ValueError, match=rf"distinct: \w+_column and {field} are both"):
        PrompterConfig(backend="llava", model="m", pretrained=None, layer_index=0, **params)


def existing_column_dataset(column: str) -> Dataset:
    return Dataset.from_dict(
        {"image": goods(2), "question": [Q, Q], column: ["x", "y"]},
        features=Features({"image": ImageFeature(), "question": Value("string"), column: Value("string")}),
    )


@pytest.mark.parametrize("column,params,field", [
    ("heatmap", {}, "heatmap_column"),
    ("masked_image", {}, "masked_image_column"),
    ("api_status", dict(on_error="passthrough"), "status_column"),
    ("mask", dict(masked_image_column="mask"), "masked_image_column"),
])
def test_existing_output_column_is_an_error_before_any_work(tiny_clip, column, params, field, monkeypatch):
    p = ImagePrompter("clip", model=tiny_clip, layer_index=1, **params)
    monkeypatch.setattr(ImagePrompter, "backend", lambda *a, **k: pytest.fail("a model was loaded"))
    ds = existing_column_dataset(column)
    message = rf"already has a column '{column}'.*set {field} to another name"
    with pytest.raises(ValueError, match=message):
        p.map(ds)
    with pytest.raises(ValueError, match=message):  # a plain map: the batch holds the column
        ds.map(p, batched=True)
    assert ds[column] == ["x", "y"]


def test_status_column_may_exist_without_passthrough(prompter):
    out = prompter.map(existing_column_dataset("api_status"))
    assert out["api_status"] == ["x", "y"]
    assert np.asarray(out[0]["heatmap"]).shape == (8, 8)
