"""Comparing results computed in different processes, thread counts or batch compositions.

Such results are the same computation with the float32 reductions (softmax sums,
dot products, the mean filter, the mean and std of the normalisation) grouped in
another order, so they agree to rounding, not bit for bit: a forked ``num_proc``
worker runs one torch thread, the parent two, and a batch of 6 splits its GEMMs
differently from a batch of 4. Encoded images (PNG bytes) of such results are
never compared: one changed pixel changes the whole compressed stream.
"""

import numpy as np
from datasets import Image as ImageFeature

from hf_api_prompt.masks import mask_to_uint8

#: Heatmaps are grid masks in [0, 1], so an absolute tolerance is a relative one at
#: magnitude 1. A reordered float32 reduction differs by a few ulps (eps = 1.19e-7;
#: a forked worker's heatmaps differ from the parent's by 1.8e-7, 1.5 ulps), and
#: the min-max normalisations and the sigmoid can amplify that by about the inverse
#: of the raw maps' relative range. 64 eps (7.6e-6) covers that with room, and stays
#: three orders of magnitude below any real change of the method (another layer,
#: kernel or coefficient moves cells by more than 1e-2).
HEATMAP_ATOL = 64 * float(np.finfo(np.float32).eps)


def stored_image(value):
    """A masked-image value of a direct call (``{"bytes", "path"}``, or ``None``) as a reader of the stored dataset sees it.

    Decoded by ``datasets``' ``Image`` feature, as a mapped dataset's rows are: mode and
    format are the stored ones (no conversion to RGB that could hide a wrong mode).
    """
    return None if value is None else ImageFeature().decode_example(value)


def assert_heatmaps_close(got, want, what: str = "heatmaps", atol: float = HEATMAP_ATOL):
    """Equal up to float32 reduction order (:data:`HEATMAP_ATOL`, or a tighter ``atol``), same shape."""
    got, want = np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32)
    assert got.shape == want.shape, f"{what}: shapes {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=what)


def assert_images_close(got, want, what: str = "images"):
    """Pixels equal within one 8-bit level; same size and mode.

    The grid mask becomes ``floor(mask * 255)``: a cell whose value sits within
    rounding of ``k / 255`` may truncate to ``k - 1`` in one run and ``k`` in the
    other. The resize gives that cell a weight of at most about 1 in each output
    pixel, and the blend ``image * w + (1 - w) * gray`` moves by ``|image - gray| / 255
    <= 1`` per level of ``w`` before it truncates, so a pixel moves by one level.
    (Two would need two such cells under one pixel, each within ~1e-7 of a level.)
    """
    got_pixels, want_pixels = np.asarray(got), np.asarray(want)
    if hasattr(got, "mode") and hasattr(want, "mode"):
        assert got.mode == want.mode, f"{what}: modes {got.mode} != {want.mode}"
    assert got_pixels.shape == want_pixels.shape, f"{what}: shapes {got_pixels.shape} != {want_pixels.shape}"
    diff = np.abs(got_pixels.astype(np.int16) - want_pixels.astype(np.int16))
    assert diff.max(initial=0) <= 1, f"{what}: {int((diff > 1).sum())} values differ by more than one level (max {diff.max()})"


def assert_image_lists_close(got, want, what: str = "images"):
    """:func:`assert_images_close` row by row, for two equally long sequences of images."""
    got, want = list(got), list(want)
    assert len(got) == len(want), f"{what}: {len(got)} rows != {len(want)}"
    for row, (a, b) in enumerate(zip(got, want)):
        assert_images_close(a, b, f"{what}, row {row}")


def assert_masked_image_matches(got, want, got_heatmap, want_heatmap, what: str = "masked image"):
    """The masked images of two runs whose heatmaps agree to rounding: identical, but near grid cells on a k/255 boundary.

    Stage 3 (docs/method.md, steps 7 and 8) reads only the 8-bit grid
    ``floor(mask * 255)`` and is exact arithmetic from there (a PIL resize, a
    truncated blend), so equal 8-bit grids give identical images. The grids may
    differ only in cells where both heatmaps lie within :data:`HEATMAP_ATOL` of a
    boundary ``k / 255`` (one truncates to ``k - 1``, the other to ``k``), by one
    level. Each such cell moves a pixel by at most one level (:func:`assert_images_close`),
    and several can meet under one pixel: saturated cells (sigmoid near 1, the
    min-max maximum exactly 1) sit at the 254/255 boundary together, and which of
    them is the maximum depends on rounding. So a pixel may move by as many levels
    as there are differing cells (seen: three cells, one pixel moved by two), and with none
    the images are identical.
    """
    got_heatmap, want_heatmap = np.asarray(got_heatmap, np.float32), np.asarray(want_heatmap, np.float32)
    assert_heatmaps_close(got_heatmap, want_heatmap, f"{what}: heatmap")
    got_u8, want_u8 = mask_to_uint8(got_heatmap).astype(int), mask_to_uint8(want_heatmap).astype(int)
    flipped = got_u8 != want_u8
    levels = np.float64(want_heatmap[flipped]) * 255
    assert np.all(np.abs(got_u8 - want_u8)[flipped] == 1), f"{what}: 8-bit grid cells differ by more than one level"
    assert np.all(np.abs(levels - np.round(levels)) <= 255 * HEATMAP_ATOL), (
        f"{what}: 8-bit grid cells differ away from a k/255 boundary: {levels.tolist()}"
    )
    got_pixels, want_pixels = np.asarray(got), np.asarray(want)
    assert got.mode == want.mode and got_pixels.shape == want_pixels.shape, (
        f"{what}: {got.mode} {got_pixels.shape} != {want.mode} {want_pixels.shape}"
    )
    diff = np.abs(got_pixels.astype(np.int16) - want_pixels.astype(np.int16))
    allowed = int(flipped.sum())
    assert diff.max(initial=0) <= allowed, (
        f"{what}: {int((diff > allowed).sum())} values differ by more than {allowed} level(s) (max {diff.max()}), "
        f"with {allowed} 8-bit grid cell(s) on a k/255 boundary"
    )
