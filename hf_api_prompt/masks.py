"""Pure array functions of the method: heatmap -> mask -> masked image.

No models here. Grid-level steps (the recipe, stage 2) take torch tensors shaped
``[B, gh, gw]`` and work on a whole batch at once; pixel-level steps (used by the
prompt styles of :mod:`hf_api_prompt.prompts`, stage 3) take one PIL image each
(docs/method.md, steps 6-8).
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Box = Tuple[float, float, float, float]

# Pixels blended per step: the lookup's index array stays in the cache (measured: 5.9 -> 3.8 ms
# for 1024 x 768 against one 4-Mpixel step), and memory stays bounded for very large images.
_BLEND_CHUNK_PIXELS = 1 << 16


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Scale each ``[gh, gw]`` map of ``x`` to [0, 1].

    A constant map carries no ranking, so it maps to all ones (nothing is dimmed).

    >>> minmax(torch.tensor([[[1., 3.], [2., 5.]]])).tolist()
    [[[0.0, 0.5], [0.25, 1.0]]]
    """
    flat = x.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - low
    scaled = (x - low) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, scaled, torch.ones_like(x))


def enhance(x: torch.Tensor, enhance_coe: float) -> torch.Tensor:
    """``sigmoid(coe * (a - mean) / std)`` of ``a = minmax(x)``, std unbiased (as torch's ``.std()``)."""
    a = minmax(x)
    flat = a.flatten(1)
    mean = flat.mean(dim=1)[:, None, None]
    std = flat.std(dim=1)[:, None, None] if flat.shape[1] > 1 else torch.zeros_like(mean)
    z = (a - mean) / torch.where(std > 0, std, torch.ones_like(std))
    return torch.sigmoid(enhance_coe * torch.where(std > 0, z, torch.zeros_like(z)))


def invert(x: torch.Tensor) -> torch.Tensor:
    """``(max - x) / (max - min)``: the token map ranks background tokens highest (docs/method.md 6)."""
    return 1.0 - minmax(x)


def mean_filter(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``kernel_size`` x ``kernel_size`` box filter with replicate padding, same output size."""
    if kernel_size == 1:
        return x
    pad = kernel_size // 2
    padded = F.pad(x[:, None], (pad, pad, pad, pad), mode="replicate")
    return F.avg_pool2d(padded, kernel_size, stride=1)[:, 0]


def auto_kernel_size(grid_shape: Tuple[int, int]) -> int:
    """The mean filter's size scaled to the grid: the odd size nearest to an eighth of the shorter side.

    The paper's 3 was tuned on LLaVA-1.5's and ViT-L-14-336's 24 x 24 grid, where a
    3 x 3 filter spans an eighth of each side; the same share of a ``gh x gw`` grid is
    ``min(gh, gw) / 8`` cells, rounded to the nearest odd size (ties upwards), i.e.
    ``2 * floor(min(gh, gw) / 16) + 1``.

    >>> [auto_kernel_size((n, n)) for n in (7, 14, 16, 24, 32, 40)]
    [1, 1, 3, 3, 5, 5]
    """
    return 2 * (min(grid_shape) // 16) + 1


def clip_mask(attention_map: torch.Tensor, token_map: torch.Tensor, enhance_coe: float, kernel_size: int) -> torch.Tensor:
    """Soft union of the enhanced attention map and the inverted token map (clip backend).

    Args:
        attention_map, token_map: raw maps ``[B, gh, gw]``, any positive affine scale.
    Returns:
        mask ``[B, gh, gw]`` in [0, 1].
    """
    a = mean_filter(enhance(attention_map, enhance_coe), kernel_size)
    b = mean_filter(invert(token_map), kernel_size)
    return minmax(a + b - a * b)


def attention_mask(heatmap: torch.Tensor, enhance_coe: float, kernel_size: int) -> torch.Tensor:
    """Enhanced, smoothed attention heatmap alone (llava backend: no token map, no union).

    A constant heatmap ranks nothing, so its mask is all ones (as ``minmax`` does).
    """
    out = mean_filter(enhance(heatmap, enhance_coe), kernel_size)
    flat = heatmap.flatten(1)
    constant = (flat.max(dim=1).values == flat.min(dim=1).values)[:, None, None]
    return torch.where(constant, torch.ones_like(out), out)


def mask_to_uint8(mask: np.ndarray) -> np.ndarray:
    """``floor(float32(mask) * 255)``: truncation, as torchvision's ``to_pil_image`` does."""
    return (np.asarray(mask, dtype=np.float32) * np.float32(255)).astype(np.uint8)


def mask_to_pixels(
    mask_u8: np.ndarray,
    size: Tuple[int, int],
    resample: Image.Resampling,
    box: Optional[Box] = None,
) -> Image.Image:
    """Resize a ``[gh, gw]`` uint8 grid mask to an image of ``size = (W, H)``.

    Args:
        box: the region of grid coordinates (x0, y0, x1, y1; cell units, x along
            columns) that the whole image corresponds to. ``None`` stretches the
            grid over the image (the paper). A box reaching outside the grid
            (pixels the model never saw) takes the nearest grid edge's values.
    Returns:
        a mode ``"L"`` image of ``size``.
    """
    padded, shifted = pad_for_box(mask_u8, size, box)
    return Image.fromarray(padded, mode="L").resize(size, resample, box=shifted)


def pad_for_box(mask_u8: np.ndarray, size: Tuple[int, int], box: Optional[Box]) -> Tuple[np.ndarray, Optional[Box]]:
    """The grid and the box that :func:`mask_to_pixels` resizes: ``(mask_u8, None)`` for the whole grid.

    A box reaching outside the grid gets a grid padded with edge values, by the overhang
    plus the filter's reach (3 source cells for LANCZOS, more when the axis is shrunk),
    and the box shifted to match; also used by :mod:`hf_api_prompt.device_prompt`.

    >>> grid, box = pad_for_box(np.zeros((2, 2), np.uint8), (4, 4), (-1, 0, 2, 2))
    >>> grid.shape, box
    ((10, 11), (4, 4, 7, 6))
    """
    gh, gw = mask_u8.shape
    if box is None or tuple(box) == (0, 0, gw, gh):
        return mask_u8, None
    x0, y0, x1, y1 = box
    reach_x = 3 * max(1.0, (x1 - x0) / size[0]) + 1
    reach_y = 3 * max(1.0, (y1 - y0) / size[1]) + 1
    left, right = math.ceil(max(0.0, -x0) + reach_x), math.ceil(max(0.0, x1 - gw) + reach_x)
    top, bottom = math.ceil(max(0.0, -y0) + reach_y), math.ceil(max(0.0, y1 - gh) + reach_y)
    padded = np.pad(mask_u8, ((top, bottom), (left, right)), mode="edge")
    return padded, (x0 + left, y0 + top, x1 + left, y1 + top)


@functools.lru_cache(maxsize=256)
def blend_table(grayscale: int) -> np.ndarray:
    """``table[m, p]``: the blend of pixel value ``p`` under mask value ``m``, for every 8-bit pair.

    Built with the reference arithmetic itself, elementwise (``w = float32(m) / 255``,
    the image product in float32, the gray term in float64, truncation to uint8), so a
    lookup is exact by construction.

    >>> int(blend_table(0)[255, 200]), int(blend_table(0)[0, 200]), int(blend_table(100)[0, 200])
    (200, 0, 100)
    """
    w = np.arange(256, dtype=np.float32)[:, None] / np.float32(255)
    values = np.arange(256, dtype=np.float32)[None, :] * w
    if grayscale:
        values = values + (np.float32(1) - w).astype(np.float64) * grayscale
    table = values.astype(np.uint8)
    table.flags.writeable = False
    return table


def blend(image: Image.Image, mask: Image.Image, grayscale: int) -> Image.Image:
    """``uint8(image * w + (1 - w) * grayscale)`` with ``w = mask / 255`` (docs/method.md 8).

    The arithmetic follows the reference code bit for bit: the image product in
    float32, the gray term in float64, truncation to uint8; over 8-bit inputs it is
    a lookup in :func:`blend_table` (several times faster than the float arrays, and
    the same numbers). The image is processed in bands of rows, which keeps memory bounded and the lookup in the cache.

    Args:
        image: RGB image.
        mask: mode ``"L"`` image of the same size.
    Returns:
        a new RGB image; the inputs are not modified.
    """
    if image.mode != "RGB" or mask.mode != "L" or image.size != mask.size:
        raise ValueError(f"blend needs an RGB image and an L mask of the same size, got {image.mode} {image.size} and {mask.mode} {mask.size}")
    pixels = np.asarray(image)
    weights = np.asarray(mask)
    table = blend_table(int(grayscale)).ravel()
    out = np.empty_like(pixels)
    rows = max(1, _BLEND_CHUNK_PIXELS // max(1, pixels.shape[1]))
    for top in range(0, pixels.shape[0], rows):
        index = (weights[top:top + rows, :, None].astype(np.uint16) << 8) | pixels[top:top + rows]  # m * 256 + p
        np.take(table, index, out=out[top:top + rows])
    return Image.fromarray(out, mode="RGB")


def blend_towards(image: Image.Image, mask: Image.Image, background: Image.Image) -> Image.Image:
    """``uint8(image * w + background * (1 - w))`` with ``w = float32(mask) / 255``, in float32, truncated.

    Where ``mask`` is 255 the pixel is the image's, where it is 0 the background's, exactly.

    Args:
        image, background: RGB images of one size.
        mask: mode ``"L"`` image of that size.
    """
    if image.mode != "RGB" or background.mode != "RGB" or mask.mode != "L" or not image.size == mask.size == background.size:
        raise ValueError(f"blend_towards needs RGB images and an L mask of one size, got {image.mode} {image.size}, "
                         f"{mask.mode} {mask.size} and {background.mode} {background.size}")
    w = np.asarray(mask, dtype=np.float32)[:, :, None] / np.float32(255)
    out = np.asarray(image, dtype=np.float32) * w + np.asarray(background, dtype=np.float32) * (np.float32(1) - w)
    return Image.fromarray(out.astype(np.uint8), mode="RGB")
