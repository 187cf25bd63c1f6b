"""The pure functions of ``hf_api_prompt.masks`` (docs/method.md steps 6-8).

Every expected value is computed here independently: by hand, with an explicit
numpy loop, or with the library the reference code used (torchvision's
``to_pil_image`` for the 8-bit rule, plain PIL for resizing).
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_pil_image

from hf_api_prompt import PrompterConfig, masks
from hf_api_prompt.prompts import apply_prompt


# ----------------------------------------------------------------- helpers
def np_minmax(x):
    x = np.asarray(x, dtype=np.float64)
    return (x - x.min()) / (x.max() - x.min())


def np_enhance(x, coe):
    a = np_minmax(x)
    z = (a - a.mean()) / a.std(ddof=1)
    return 1.0 / (1.0 + np.exp(-coe * z))


def np_mean_filter(x, k):
    """Explicit loop: every output cell averages the k x k window, indices clamped (replicate)."""
    x = np.asarray(x, dtype=np.float64)
    h, w = x.shape
    r = k // 2
    out = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            total = 0.0
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    total += x[min(max(i + di, 0), h - 1), min(max(j + dj, 0), w - 1)]
            out[i, j] = total / (k * k)
    return out


def np_clip_mask(attention, tokens, coe, k):
    """docs/method.md step 6, written out for one image."""
    a = np_enhance(attention, coe)
    t = np.asarray(tokens, dtype=np.float64)
    b = (t.max() - t) / (t.max() - t.min())
    a = np_mean_filter(a, k)
    b = np_mean_filter(b, k)
    return np_minmax(a + b - a * b)


def t(x):
    return torch.tensor(np.asarray(x), dtype=torch.float32)


# ------------------------------------------------------------------ minmax
def test_minmax_hand_values():
    x = t([[[2.0, 4.0], [6.0, 10.0]]])
    np.testing.assert_allclose(masks.minmax(x).numpy(), [[[0.0, 0.25], [0.5, 1.0]]], atol=1e-7)


def test_minmax_is_per_map_in_a_batch():
    x = t([[[0.0, 1.0], [2.0, 4.0]], [[-10.0, 10.0], [0.0, 30.0]]])
    out = masks.minmax(x).numpy()
    np.testing.assert_allclose(out[0], [[0.0, 0.25], [0.5, 1.0]], atol=1e-7)
    np.testing.assert_allclose(out[1], [[0.0, 0.5], [0.25, 1.0]], atol=1e-7)


def test_minmax_constant_map_is_all_ones_not_nan():
    x = torch.stack([torch.full((3, 4), 7.5), torch.arange(12.0).reshape(3, 4)])
    out = masks.minmax(x).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], np.ones((3, 4)))
    np.testing.assert_allclose(out[1], np.arange(12.0).reshape(3, 4) / 11.0, atol=1e-7)


# ----------------------------------------------------------------- enhance
def test_enhance_matches_sigmoid_of_unbiased_standardisation():
    rng = np.random.RandomState(1)
    x = rng.rand(2, 5, 6) * np.array([3.0, 100.0])[:, None, None] - 1.0
    out = masks.enhance(t(x), 5.0).numpy()
    for i in range(2):
        np.testing.assert_allclose(out[i], np_enhance(x[i], 5.0), atol=1e-5)


def test_enhance_uses_unbiased_std_on_a_hand_example():
    # minmax([0, 1]) = [0, 1]; mean 0.5; unbiased std = sqrt(0.5) (biased would be 0.5).
    x = t([[[0.0, 1.0]]])
    out = masks.enhance(x, 1.0).numpy()[0, 0]
    z = 0.5 / math.sqrt(0.5)
    np.testing.assert_allclose(out, [1 / (1 + math.exp(z)), 1 / (1 + math.exp(-z))], atol=1e-6)
    biased = 1 / (1 + math.exp(-1.0))  # z = 0.5 / 0.5
    assert abs(out[1] - biased) > 1e-3


def test_enhance_is_invariant_to_positive_affine_maps():
    rng = np.random.RandomState(2)
    x = rng.randn(1, 4, 4)
    np.testing.assert_allclose(masks.enhance(t(x), 5.0).numpy(), masks.enhance(t(3.0 * x + 11.0), 5.0).numpy(), atol=1e-5)


def test_enhance_constant_map_is_finite_half():
    out = masks.enhance(torch.full((1, 3, 3), 2.0), 5.0).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, 0.5)  # sigmoid(0): no ranking, no sharpening


# ------------------------------------------------------------------ invert
def test_invert_hand_values():
    x = t([[[1.0, 3.0], [5.0, 2.0]]])
    # (max - x) / (max - min) = (5 - x) / 4
    np.testing.assert_allclose(masks.invert(x).numpy(), [[[1.0, 0.5], [0.0, 0.75]]], atol=1e-7)


# ------------------------------------------------------------- mean_filter
def test_mean_filter_k1_is_identity():
    x = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks.mean_filter(x, 1), x)


def test_mean_filter_k3_hand_grid():
    x = np.array([[0.0, 9.0, 0.0, 3.0], [1.0, 2.0, 3.0, 4.0], [8.0, 0.0, 5.0, 1.0]])
    out = masks.mean_filter(t(x[None]), 3).numpy()[0]
    assert out.shape == x.shape
    # Corner (0, 0) with replicate padding: window rows (0,0,1) x cols (0,0,1).
    corner = (0 + 0 + 9 + 0 + 0 + 9 + 1 + 1 + 2) / 9
    assert out[0, 0] == pytest.approx(corner, abs=1e-6)
    # Interior cell (1, 1): plain 3x3 average.
    assert out[1, 1] == pytest.approx((0 + 9 + 0 + 1 + 2 + 3 + 8 + 0 + 5) / 9, abs=1e-6)
    np.testing.assert_allclose(out, np_mean_filter(x, 3), atol=1e-6)


@pytest.mark.parametrize("k", [3, 5])
def test_mean_filter_matches_explicit_loop(k):
    rng = np.random.RandomState(k)
    x = rng.rand(2, 6, 5)
    out = masks.mean_filter(t(x), k).numpy()
    for i in range(2):
        np.testing.assert_allclose(out[i], np_mean_filter(x[i], k), atol=1e-6)


def test_mean_filter_keeps_constant_maps():
    x = torch.full((1, 4, 4), 0.3)
    np.testing.assert_allclose(masks.mean_filter(x, 3).numpy(), 0.3, atol=1e-7)


# --------------------------------------------------------------- clip_mask
@pytest.mark.parametrize("coe,k", [(5.0, 3), (2.0, 1), (5.0, 5)])
def test_clip_mask_matches_independent_numpy(coe, k):
    rng = np.random.RandomState(10 + k)
    attention = rng.randn(3, 7, 7) * 0.01
    tokens = rng.randn(3, 7, 7) * 40 + 3
    out = masks.clip_mask(t(attention), t(tokens), coe, k).numpy()
    assert out.shape == (3, 7, 7) and out.dtype == np.float32
    for i in range(3):
        want = np_clip_mask(attention[i], tokens[i], coe, k)
        np.testing.assert_allclose(out[i], want, atol=2e-6)
        assert out[i].min() == pytest.approx(0.0, abs=1e-7) and out[i].max() == pytest.approx(1.0, abs=1e-7)


def test_clip_mask_is_a_soft_union_of_attention_and_inverted_tokens():
    # The token map is inverted: with a flat attention map, the cell with the
    # highest token score is the lowest of the mask.
    attention = torch.zeros(1, 3, 3)
    tokens = t([[[0.0, 1.0, 2.0], [3.0, 9.0, 4.0], [5.0, 6.0, 7.0]]])
    out = masks.clip_mask(attention, tokens, 5.0, 1).numpy()[0]
    assert np.unravel_index(out.argmin(), out.shape) == (1, 1)
    assert np.unravel_index(out.argmax(), out.shape) == (0, 0)


def test_clip_mask_constant_maps_give_all_ones():
    out = masks.clip_mask(torch.full((2, 4, 4), 3.0), torch.full((2, 4, 4), -1.0), 5.0, 3).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, np.ones((2, 4, 4), np.float32))


def test_attention_mask_constant_heatmap_is_all_ones():
    """A constant heatmap carries no ranking: nothing must be dimmed (and no NaN)."""
    out = masks.attention_mask(torch.full((1, 4, 4), 0.25), 5.0, 3).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, np.ones((1, 4, 4), np.float32))


def test_attention_mask_matches_independent_numpy():
    rng = np.random.RandomState(4)
    h = rng.rand(1, 6, 6)
    out = masks.attention_mask(t(h), 5.0, 3).numpy()[0]
    np.testing.assert_allclose(out, np_mean_filter(np_enhance(h[0], 5.0), 3), atol=2e-6)


# ----------------------------------------------------------- mask_to_uint8
def test_mask_to_uint8_truncates():
    got = masks.mask_to_uint8(np.array([0.0, 0.5, 0.999999, 1.0, 1 / 255, 0.9980392], dtype=np.float32))
    assert got.dtype == np.uint8
    # 127.5 -> 127, 254.99974 -> 254, 255 -> 255, 1/255*255 in float32 -> 1, 254.49999 -> 254
    assert got.tolist() == [0, 127, 254, 255, 1, 254]


def test_mask_to_uint8_agrees_with_torchvision_to_pil_image():
    rng = np.random.RandomState(0)
    m = rng.rand(16, 16).astype(np.float32)
    m[0, :4] = [0.0, 1.0, 0.2, 0.6]
    want = np.asarray(to_pil_image(torch.from_numpy(m)[None]))
    np.testing.assert_array_equal(masks.mask_to_uint8(m), want)


# ---------------------------------------------------------- mask_to_pixels
@pytest.fixture
def grid_u8():
    rng = np.random.RandomState(5)
    g = rng.randint(0, 256, (8, 8)).astype(np.uint8)
    return g


@pytest.mark.parametrize("resample", [Image.Resampling.LANCZOS, Image.Resampling.NEAREST, Image.Resampling.BILINEAR])
def test_mask_to_pixels_no_box_is_plain_resize(grid_u8, resample):
    size = (37, 53)
    got = masks.mask_to_pixels(grid_u8, size, resample, None)
    want = Image.fromarray(grid_u8).resize(size, resample)
    assert got.mode == "L" and got.size == size
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("box", [(0, 0, 8, 8), (0.0, 0.0, 8.0, 8.0)])
def test_mask_to_pixels_full_grid_box_is_plain_resize(grid_u8, box):
    size = (70, 45)
    got = masks.mask_to_pixels(grid_u8, size, Image.Resampling.LANCZOS, box)
    want = Image.fromarray(grid_u8).resize(size, Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_mask_to_pixels_interior_box_is_a_crop(grid_u8):
    # A box inside the grid, 2 cells from every edge: NEAREST reads cell floor(x0 + (px + .5) * cells/px).
    box = (2.0, 2.0, 6.0, 6.0)
    got = np.asarray(masks.mask_to_pixels(grid_u8, (40, 20), Image.Resampling.NEAREST, box))
    cols = (2.0 + (np.arange(40) + 0.5) * 4 / 40).astype(int)
    rows = (2.0 + (np.arange(20) + 0.5) * 4 / 20).astype(int)
    np.testing.assert_array_equal(got, grid_u8[rows][:, cols])


def test_mask_to_pixels_box_outside_grid_replicates_edges():
    grid = np.full((8, 8), 50, np.uint8)
    grid[:, 0] = 200                       # left column
    grid[:, 1] = 10                        # a different neighbour, so leaking would show
    grid[:, -1] = 90                       # right column
    # The image spans 4 cells beyond each side horizontally: 16 cells over 160 px, 10 px per cell.
    box = (-4.0, 0.0, 12.0, 8.0)
    size = (160, 40)
    near = np.asarray(masks.mask_to_pixels(grid, size, Image.Resampling.NEAREST, box))
    assert near.shape == (40, 160)
    assert (near[:, :40] == 200).all()     # left of the grid: the left edge
    assert (near[:, 120:] == 90).all()     # right of the grid: the right edge
    np.testing.assert_array_equal(near[:, 40:50], 200)
    np.testing.assert_array_equal(near[:, 50:60], 10)
    lanczos = np.asarray(masks.mask_to_pixels(grid, size, Image.Resampling.LANCZOS, box))
    # Further than LANCZOS's 3-cell support from the grid edge, only replicated edge values are read.
    assert (lanczos[:, :10] == 200).all()
    assert (lanczos[:, 150:] == 90).all()


def test_mask_to_pixels_box_outside_grid_lanczos_constant_edge_region():
    grid = np.full((8, 8), 30, np.uint8)
    grid[:, :4] = 200                      # left half constant: every LANCZOS window left of the grid sees 200
    got = np.asarray(masks.mask_to_pixels(grid, (160, 40), Image.Resampling.LANCZOS, (-4.0, 0.0, 12.0, 8.0)))
    assert (got[:, :40] == 200).all()


# ------------------------------------------------------------------- blend
def reference_blend_pixel(p, m, g):
    """uint8(float32(p) * w + float64(1 - w) * g), w = float32(m) / 255, for one value."""
    w = np.float32(m) / np.float32(255)
    value = float(np.float32(p) * w) + float(np.float64(np.float32(1) - w)) * g
    return int(math.floor(value))


@pytest.mark.parametrize("gray", [0, 128, 200, 255])
def test_blend_hand_2x2(gray):
    img = np.array([[[10, 20, 30], [200, 100, 50]], [[255, 255, 255], [0, 7, 130]]], np.uint8)
    mask = np.array([[255, 0], [128, 77]], np.uint8)
    img_before, mask_before = img.copy(), mask.copy()
    image, mask_image = Image.fromarray(img), Image.fromarray(mask)
    out = masks.blend(image, mask_image, gray)
    assert out.mode == "RGB" and out.size == (2, 2)
    got = np.asarray(out)
    np.testing.assert_array_equal(got[0, 0], img[0, 0])           # mask 255 keeps the pixel
    np.testing.assert_array_equal(got[0, 1], [gray] * 3)           # mask 0 gives the gray value
    for (y, x) in [(1, 0), (1, 1)]:
        for c in range(3):
            assert got[y, x, c] == reference_blend_pixel(img[y, x, c], mask[y, x], gray), (y, x, c)
    # The caller's inputs are not modified.
    np.testing.assert_array_equal(np.asarray(image), img_before)
    np.testing.assert_array_equal(np.asarray(mask_image), mask_before)
    np.testing.assert_array_equal(img, img_before)


def test_blend_truncates_not_rounds():
    # 100 * 128/255 = 50.196..., 255 * 254/255 ~ 254.0000 in float32 -> check against the reference formula
    img = Image.fromarray(np.array([[[100, 255, 3]]], np.uint8))
    out = np.asarray(masks.blend(img, Image.fromarray(np.array([[128]], np.uint8)), 0))
    assert out[0, 0].tolist() == [reference_blend_pixel(v, 128, 0) for v in (100, 255, 3)]
    assert out[0, 0, 0] == 50 and out[0, 0, 2] == 1  # 3 * 0.50196 = 1.506 -> 1


def test_blend_large_band_boundaries():
    # More rows than one band holds: the banded loop must cover every row exactly once.
    rng = np.random.RandomState(3)
    img = rng.randint(0, 256, (300, 20000, 3)).astype(np.uint8)
    mask = rng.randint(0, 256, (300, 20000)).astype(np.uint8)
    got = np.asarray(masks.blend(Image.fromarray(img), Image.fromarray(mask), 37))
    w = mask.astype(np.float64)[..., None] / 255.0
    approx = img * w + (1 - w) * 37
    diff = approx - got
    assert diff.min() >= -1e-3 and diff.max() < 1.0 + 1e-3   # truncation of the exact value


@pytest.mark.parametrize(
    "image,mask",
    [
        (Image.new("RGBA", (4, 4)), Image.new("L", (4, 4))),
        (Image.new("L", (4, 4)), Image.new("L", (4, 4))),
        (Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4))),
        (Image.new("RGB", (4, 4)), Image.new("1", (4, 4))),
        (Image.new("RGB", (4, 4)), Image.new("L", (4, 5))),
        (Image.new("RGB", (5, 4)), Image.new("L", (4, 4))),
    ],
)
def test_blend_rejects_wrong_modes_and_sizes(image, mask):
    with pytest.raises(ValueError):
        masks.blend(image, mask, 0)


# ----------------------------------------------------------- the "mask" prompt style (stage 3)
def test_mask_prompt_paper_pipeline():
    rng = np.random.RandomState(8)
    m = rng.rand(2, 8, 8).astype(np.float32)
    images = [Image.fromarray(rng.randint(0, 256, (30, 50, 3)).astype(np.uint8)) for _ in range(2)]
    config = PrompterConfig(backend="clip", model="ViT-B-16", pretrained=None, layer_index=0, interpolation="bicubic", grayscale=60)
    out = [p.image for p in apply_prompt(config, images, m, [None, None])]
    for i in range(2):
        mask_img = to_pil_image(torch.from_numpy(m[i])[None]).resize((50, 30), Image.Resampling.BICUBIC)
        img, w = np.asarray(images[i]), np.asarray(mask_img)
        want = np.array(
            [[[reference_blend_pixel(img[y, x, c], w[y, x], 60) for c in range(3)] for x in range(50)] for y in range(30)]
        )
        np.testing.assert_array_equal(np.asarray(out[i]), want)


@pytest.mark.parametrize("gray", [0, 1, 37, 60, 100, 127, 128, 200, 254, 255])
def test_blend_equals_the_reference_arithmetic_on_every_8_bit_pair(gray):
    """Every (pixel, mask) pair, for the gray values the tests and the paper use: the lookup is exact."""
    pixel = np.tile(np.arange(256, dtype=np.uint8), (256, 1))  # row m, column p
    mask = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 256, axis=1)
    image = Image.fromarray(np.stack([pixel, 255 - pixel, pixel], axis=-1))
    got = np.asarray(masks.blend(image, Image.fromarray(mask), gray))
    want = np.array([[reference_blend_pixel(p, m, gray) for p in range(256)] for m in range(256)])
    np.testing.assert_array_equal(got[:, :, 0], want)
    np.testing.assert_array_equal(got[:, :, 2], want)
    np.testing.assert_array_equal(got[:, :, 1], want[:, ::-1])
