"""Where the mask lands: grid orientation, "paper" stretching, "aligned" crop geometry.

Uses the session's tiny random CLIP (64 px input, patch 8, 8x8 grid, 3 blocks,
open_clip preprocessing: resize shortest side to 64 bicubic, center crop 64).
"""

import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.transforms.functional import to_pil_image

from hf_api_prompt import ImagePrompter, masks

from compare import stored_image

SIDE, PATCH, GRID = 64, 8, 8
QUESTION = "where is the red car?"


def blend_reference(image: Image.Image, mask_l: Image.Image, gray: int) -> np.ndarray:
    """docs/method.md step 8: uint8(float32(img) * w + float64(1 - w) * gray), w = mask / 255."""
    img = np.asarray(image.convert("RGB"))
    w = np.asarray(mask_l).astype(np.float32)[..., None] / np.float32(255)
    # (1 - w) is formed in float32 and multiplied by the gray value in float64 (golden README, step 7).
    value = (img.astype(np.float32) * w).astype(np.float64) + (np.float32(1) - w).astype(np.float64) * gray
    return np.floor(value).astype(np.uint8)


def mask_u8_reference(heatmap) -> Image.Image:
    """The 8-bit grid mask as the reference code makes it (torchvision ``to_pil_image``)."""
    return to_pil_image(torch.from_numpy(np.asarray(heatmap, dtype=np.float32))[None])


def crop_geometry(size):
    """torchvision Resize(64) + CenterCrop(64), from first principles.

    Returns (resized_w, resized_h, left, top) in resized pixels.
    """
    w, h = size
    if w <= h:
        rw, rh = SIDE, (SIDE * h) // w          # the long side is truncated
    else:
        rw, rh = (SIDE * w) // h, SIDE
    left = int(round((rw - SIDE) / 2.0))
    top = int(round((rh - SIDE) / 2.0))
    return rw, rh, left, top


def cell_of_pixel_centres(n_pixels, resized, offset):
    """For each original pixel along one axis: the exact (Fraction) grid coordinate of its centre."""
    return [(Fraction(2 * x + 1, 2) * Fraction(resized, n_pixels) - offset) / PATCH for x in range(n_pixels)]


def expected_nearest(size):
    """Independent expectation for NEAREST upsampling under "aligned" geometry.

    Returns the exact grid coordinates of the pixel centres ``(xs, ys)``, the cell
    row/column each pixel should take (floor of the coordinate, clamped to the grid:
    outside the crop, the nearest edge), and the pixels whose centre falls exactly on a
    cell border, where either neighbour is right (per axis, and as a ``[h, w]`` mask).
    """
    w, h = size
    rw, rh, left, top = crop_geometry(size)
    xs = cell_of_pixel_centres(w, rw, left)
    ys = cell_of_pixel_centres(h, rh, top)
    col = np.array([min(max(int(np.floor(float(v))), 0), GRID - 1) for v in xs])
    row = np.array([min(max(int(np.floor(float(v))), 0), GRID - 1) for v in ys])
    on_edge_x = np.array([v.denominator == 1 and 0 < v < GRID for v in xs])  # centre exactly on a cell border
    on_edge_y = np.array([v.denominator == 1 and 0 < v < GRID for v in ys])
    return xs, ys, row, col, on_edge_y, on_edge_x, on_edge_y[:, None] | on_edge_x[None, :]


def check_nearest_upsampling(box, size):
    """Upsample a grid of distinct values with NEAREST through ``box``; assert it matches ``expected_nearest``.

    Returns ``(values, got)``: the grid and the ``[h, w]`` upsampled result.
    """
    _, _, row, col, _, _, ambiguous = expected_nearest(size)
    values = np.arange(GRID * GRID, dtype=np.uint8).reshape(GRID, GRID) * 3 + 10
    got = np.asarray(masks.mask_to_pixels(values, size, Image.Resampling.NEAREST, box))
    assert got.shape == (size[1], size[0])
    want = values[row][:, col]
    np.testing.assert_array_equal(got[~ambiguous], want[~ambiguous])
    return values, got


def random_image(size, seed):
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3)).astype(np.uint8))


# ------------------------------------------------------- (a) grid orientation
CELLS = [(1, 6), (6, 2), (0, 7), (7, 0), (3, 5)]


@pytest.fixture(scope="module")
def backend0(tiny_clip):
    return ImagePrompter("clip", model=tiny_clip, layer_index=0).backend()


@pytest.mark.parametrize("cell", CELLS)
def test_patch_perturbation_peaks_at_its_cell_in_raw_maps(backend0, cell):
    i, j = cell
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, SIDE, SIDE, generator=gen)
    text = backend0.encode_questions([QUESTION])
    changed = pixels.clone()
    changed[:, :, PATCH * i:PATCH * (i + 1), PATCH * j:PATCH * (j + 1)] += 2 * torch.randn(1, 3, PATCH, PATCH, generator=gen)
    with torch.inference_mode():
        a0, t0 = backend0.raw_maps(pixels, text, [0])[0].values()
        a1, t1 = backend0.raw_maps(changed, text, [0])[0].values()
    assert t0.shape == (1, GRID, GRID) and a0.shape == (1, GRID, GRID)
    d_tokens = (t1 - t0).abs()[0].numpy()
    d_attention = (a1 - a0).abs()[0].numpy()
    assert np.unravel_index(d_tokens.argmax(), d_tokens.shape) == (i, j)
    assert np.unravel_index(d_attention.argmax(), d_attention.shape) == (i, j)


def test_raw_maps_are_batch_independent(backend0):
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, SIDE, SIDE, generator=gen)
    text = backend0.encode_questions(["a", "bb", "a"])
    with torch.inference_mode():
        a, tk = backend0.raw_maps(pixels, text, [0])[0].values()
        a1, t1 = backend0.raw_maps(pixels[1:2], text[1:2], [0])[0].values()
    np.testing.assert_allclose(a[1].numpy(), a1[0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tk[1].numpy(), t1[0].numpy(), rtol=1e-4, atol=1e-5)


def test_patch_perturbation_peaks_at_its_cell_through_the_prompter(tiny_clip):
    """Same check on the prompter's heatmap (row 0 = top of the image).

    The final mask is normalised per image (min-max, sigmoid of standardised
    values), so one small perturbation also moves every other cell a little; the
    evidence is summed over six random base images (|delta| scaled to max 1 each).
    """
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=0, kernel_size=1, geometry="paper")
    cells = [(1, 6), (6, 2), (0, 7), (7, 0)]
    evidence = {cell: np.zeros((GRID, GRID)) for cell in cells}
    images = []
    for seed in range(6):
        rng = np.random.RandomState(seed)
        base = rng.randint(40, 216, (SIDE, SIDE, 3))
        images.append(Image.fromarray(base.astype(np.uint8)))
        for i, j in cells:
            changed = base.copy()
            changed[PATCH * i:PATCH * (i + 1), PATCH * j:PATCH * (j + 1)] += rng.randint(-3, 4, (PATCH, PATCH, 3))
            images.append(Image.fromarray(changed.astype(np.uint8)))
    out = prompter({"image": images, "question": [QUESTION] * len(images)})
    heatmaps = [np.asarray(h) for h in out["heatmap"]]
    assert all(h.shape == (GRID, GRID) for h in heatmaps)
    step = 1 + len(cells)
    for seed in range(6):
        h0 = heatmaps[seed * step]
        for k, cell in enumerate(cells):
            delta = np.abs(heatmaps[seed * step + 1 + k] - h0)
            assert delta.max() > 0
            evidence[cell] += delta / delta.max()
    for (i, j), total in evidence.items():
        assert np.unravel_index(total.argmax(), total.shape) == (i, j)
        assert total[i, j] > 1.2 * total[j, i]                 # not transposed
        assert total[i, j] > 1.2 * total[GRID - 1 - i, j]      # not flipped vertically


# ---------------------------------------------------- (b) "paper" geometry
@pytest.mark.parametrize("size,interp,gray", [((200, 100), "lanczos", 0), ((60, 150), "bicubic", 200), ((64, 64), "nearest", 17)])
def test_paper_geometry_stretches_grid_over_whole_image(tiny_clip, size, interp, gray):
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1, geometry="paper", interpolation=interp, grayscale=gray)
    image = random_image(size, 3)
    out = prompter({"image": [image], "question": [QUESTION]})
    masked, heatmap = stored_image(out["masked_image"][0]), np.asarray(out["heatmap"][0])
    assert masked.format == "PNG" and masked.mode == "RGB" and masked.size == size  # an in-memory source: lossless
    mask_l = mask_u8_reference(heatmap).resize(size, Image.Resampling[interp.upper()])
    np.testing.assert_array_equal(np.asarray(masked), blend_reference(image, mask_l, gray))


# -------------------------------------------------- (c) "aligned" geometry
ALIGNED_SIZES = [(200, 100), (60, 150), (150, 61), (64, 64), (100, 100)]


@pytest.fixture(scope="module")
def backend_aligned(tiny_clip):
    return ImagePrompter("clip", model=tiny_clip, layer_index=1, geometry="aligned").backend()


@pytest.mark.parametrize("size", ALIGNED_SIZES)
def test_crop_geometry_matches_torchvision(size):
    """The first-principles crop really is where torchvision puts the model's input.

    Paint the expected original-pixel rectangle of one cell white on black, run
    torchvision's Resize(64, bicubic) + CenterCrop(64), and find the white patch.
    """
    rw, rh, left, top = crop_geometry(size)
    transform = T.Compose([T.Resize(SIDE, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(SIDE)])
    w, h = size
    xs = cell_of_pixel_centres(w, rw, left)
    ys = cell_of_pixel_centres(h, rh, top)
    for r, c in [(2, 5), (6, 1)]:
        canvas = np.zeros((h, w), np.uint8)
        rows = [y for y in range(h) if r <= ys[y] < r + 1]
        cols = [x for x in range(w) if c <= xs[x] < c + 1]
        canvas[min(rows):max(rows) + 1, min(cols):max(cols) + 1] = 255
        seen = np.asarray(transform(Image.fromarray(canvas)), dtype=float)
        patch_means = seen.reshape(GRID, PATCH, GRID, PATCH).mean(axis=(1, 3))
        assert np.unravel_index(patch_means.argmax(), patch_means.shape) == (r, c)
        assert seen[PATCH * r + 2:PATCH * r + 6, PATCH * c + 2:PATCH * c + 6].min() > 200
        far = np.ones((GRID, GRID), bool)
        far[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = False
        assert patch_means[far].max() < 1.0


@pytest.mark.parametrize("size", ALIGNED_SIZES)
def test_grid_box_maps_cells_onto_the_pixels_the_model_saw(backend_aligned, size):
    w, h = size
    box = backend_aligned.grid_box(size)
    values, got = check_nearest_upsampling(box, size)
    xs, ys, row, col, on_edge_y, on_edge_x, ambiguous = expected_nearest(size)

    # A single bright cell lands on the pixel rectangle the model saw as that patch.
    for r, c in [(2, 5), (6, 1), (0, 7)]:
        single = np.zeros((GRID, GRID), np.uint8)
        single[r, c] = 255
        lit = np.asarray(masks.mask_to_pixels(single, size, Image.Resampling.NEAREST, box)) == 255
        inside = np.array([[r <= ys[y] < r + 1 and c <= xs[x] < c + 1 for x in range(w)] for y in range(h)])
        seen = np.array([[0 <= ys[y] < GRID and 0 <= xs[x] < GRID for x in range(w)] for y in range(h)])
        check = seen & ~ambiguous
        assert lit[check].tolist() == inside[check].tolist()
        assert inside.sum() >= 30   # about 12.5 x 12.5 px (200x100), 7.6 x 7.6 px (150x61)

    # Pixels outside the crop (never seen by the model) take the nearest grid edge's value.
    outside_left = [x for x in range(w) if xs[x] < 0]
    outside_right = [x for x in range(w) if xs[x] >= GRID]
    outside_top = [y for y in range(h) if ys[y] < 0]
    outside_bottom = [y for y in range(h) if ys[y] >= GRID]
    if w > h:
        assert outside_left and outside_right
    if h > w:
        assert outside_top and outside_bottom
    inner_rows = [y for y in range(h) if not on_edge_y[y]]
    inner_cols = [x for x in range(w) if not on_edge_x[x]]
    for x in outside_left:
        np.testing.assert_array_equal(got[inner_rows, x], values[row[inner_rows], 0])
    for x in outside_right:
        np.testing.assert_array_equal(got[inner_rows, x], values[row[inner_rows], GRID - 1])
    for y in outside_top:
        np.testing.assert_array_equal(got[y, inner_cols], values[0, col[inner_cols]])
    for y in outside_bottom:
        np.testing.assert_array_equal(got[y, inner_cols], values[GRID - 1, col[inner_cols]])


@pytest.mark.parametrize("size", [(200, 100), (60, 150), (150, 61)])
def test_aligned_end_to_end(tiny_clip, size):
    kwargs = dict(model=tiny_clip, layer_index=1, interpolation="lanczos", grayscale=100)
    aligned = ImagePrompter("clip", geometry="aligned", **kwargs)
    paper = ImagePrompter("clip", geometry="paper", **kwargs)
    image = random_image(size, 11)
    batch = {"image": [image], "question": [QUESTION]}
    out_a, out_p = aligned(batch), paper(batch)
    masked_a, masked_p = stored_image(out_a["masked_image"][0]), stored_image(out_p["masked_image"][0])
    assert masked_a.size == size and masked_a.mode == "RGB"
    # Same grid mask; only its placement differs.
    np.testing.assert_array_equal(np.asarray(out_a["heatmap"][0]), np.asarray(out_p["heatmap"][0]))
    assert not np.array_equal(np.asarray(masked_a), np.asarray(masked_p))
    # The placement is the independently computed crop box.
    rw, rh, left, top = crop_geometry(size)
    box = (-left * GRID / SIDE, -top * GRID / SIDE, (rw - left) * GRID / SIDE, (rh - top) * GRID / SIDE)
    mask_u8 = np.asarray(mask_u8_reference(out_a["heatmap"][0]))
    mask_l = masks.mask_to_pixels(mask_u8, size, Image.Resampling.LANCZOS, box)
    np.testing.assert_array_equal(np.asarray(masked_a), blend_reference(image, mask_l, 100))


@pytest.mark.parametrize("size", [(64, 64), (100, 100), (37, 37)])
def test_aligned_equals_paper_on_square_images(tiny_clip, size):
    kwargs = dict(model=tiny_clip, layer_index=1, interpolation="lanczos", grayscale=100)
    image = random_image(size, 12)
    batch = {"image": [image], "question": [QUESTION]}
    out_a = ImagePrompter("clip", geometry="aligned", **kwargs)(batch)
    out_p = ImagePrompter("clip", geometry="paper", **kwargs)(batch)
    masked_a, masked_p = stored_image(out_a["masked_image"][0]), stored_image(out_p["masked_image"][0])
    assert masked_a.size == size
    np.testing.assert_array_equal(np.asarray(masked_a), np.asarray(masked_p))


@pytest.mark.parametrize("size", [(3, 200), (200, 3), (1, 40)])
def test_grid_box_thin_images_nearest_values(backend_aligned, size):
    """Extreme aspect ratios: most of the image lies outside the crop and takes the edge values."""
    check_nearest_upsampling(backend_aligned.grid_box(size), size)


def test_mask_to_pixels_memory_is_not_quadratic_in_the_overhang():
    """A 2 x 1000 image under "aligned" geometry: the crop covers 2 px of height, the box
    overhangs the 8x8 grid by ~2000 cells above and below. Replicating edges must not
    need a (2 * overhang)^2 array: a 1 x 20000 image would need 25.6 GB that way.
    """
    size = (2, 1000)
    rw, rh, left, top = crop_geometry(size)
    box = (-left * GRID / SIDE, -top * GRID / SIDE, (rw - left) * GRID / SIDE, (rh - top) * GRID / SIDE)
    assert box[1] < -1990 and box[3] > 1990
    values = np.arange(GRID * GRID, dtype=np.uint8).reshape(GRID, GRID)
    tracemalloc.start()
    try:
        out = masks.mask_to_pixels(values, size, Image.Resampling.LANCZOS, box)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.size == size
    # Linear padding needs ~ (8 + 2 * 2000) x (8 + 2 * pad) bytes = tens of kB; allow 2 MB.
    assert peak < 2 * 2**20, f"mask_to_pixels traced a {peak / 2**20:.1f} MiB peak for a 2x1000 image"
