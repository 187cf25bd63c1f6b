"""Stage 3's ``"mask"`` style on a torch device, equal bit for bit to the Pillow/numpy path.

:func:`hf_api_prompt.prompts.soft_mask` resizes the grid mask with Pillow and blends
with a numpy lookup, on the CPU. Here the same two steps run on a torch device (a GPU
relieves the CPU of them), with the same numbers:

* :func:`resize_mask` is Pillow's own 8-bit resampling (``src/libImaging/Resample.c``):
  its integer coefficients (:func:`pil_resample_weights`, computed as Pillow computes
  them) and its two passes, horizontal then vertical, each one a sum of pixel times
  coefficient plus a half, shifted right and clipped to 0..255. A pass is a dense matrix
  product in float64; every term and partial sum is an integer below 2**31, so float64
  holds them exactly and the order of the additions does not matter.
* :func:`blend` is the lookup in :func:`hf_api_prompt.masks.blend_table`, on the device.

The output does not depend on the device, so the device is an execution option
(``ImagePrompter(..., prompt_device=...)``), not a config field.

Example:
    >>> import numpy as np
    >>> from PIL import Image
    >>> from hf_api_prompt import masks
    >>> grid = np.array([[0, 255], [128, 64]], np.uint8)
    >>> mine = resize_mask(grid, (5, 3), Image.Resampling.LANCZOS, None, "cpu")
    >>> pillow = np.asarray(masks.mask_to_pixels(grid, (5, 3), Image.Resampling.LANCZOS))
    >>> mine.dtype, bool((mine.numpy() == pillow).all())
    (torch.uint8, True)
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from . import masks, parallel, prompts
from .config import PrompterConfig

Device = Union[str, torch.device]

def check_device(name: Optional[str]) -> Optional[str]:
    """``name`` when it is ``None``, ``"auto"`` or a torch device's name; a ``ValueError`` otherwise."""
    if name is None or name == "auto":
        return name
    if not isinstance(name, str):
        raise ValueError(f"a prompt device is a device name (e.g. 'cuda:0'), 'auto' or None, got {name!r}")
    try:
        torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"prompt device {name!r} is not a torch device ({error}); nothing was computed") from None
    return name


def stage3_device(own: Optional[str], prompt: str,
                  model_device: Optional[Callable[[], torch.device]] = None) -> Optional[Device]:
    """Where stage 3 runs: ``own`` (a prompter's ``prompt_device``), else the run's
    (``$HF_API_PROMPT_PROMPT_DEVICE``, for the ``"mask"`` style, the one that runs on a device).

    ``"auto"`` is ``model_device()`` (asked only then), or without a model (remasking) the first
    GPU when there is one; ``None`` is the CPU with Pillow and numpy.
    """
    choice = own or (parallel.default_prompt_device() if prompt == "mask" else None)
    if choice != "auto":
        return choice
    if model_device is not None:
        return model_device()
    return "cuda" if torch.cuda.is_available() else None


#: Pillow's fixed point for 8-bit images: 8 bits of result, 2 for overflow, in an int32.
PRECISION_BITS = 32 - 8 - 2


def _box(x: np.ndarray) -> np.ndarray:
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


# The trigonometric filters call the C library's sin and cos (as Pillow's C code does),
# one value at a time: numpy's vectorised sin may differ from it in the last bit.
def _elementwise(scalar: Callable[[float], float]) -> Callable[[np.ndarray], np.ndarray]:
    vectorised = np.frompyfunc(scalar, 1, 1)
    return lambda x: vectorised(x).astype(np.float64)


_HAMMING_A, _HAMMING_B = float(np.float32(0.54)), float(np.float32(0.46))  # C float constants 0.54f, 0.46f


def _hamming(x: float) -> float:
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x = x * math.pi
    return math.sin(x) / x * (_HAMMING_A + _HAMMING_B * math.cos(x))


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


#: Each filter of Pillow's resampling: its function and its support (half-width, in source pixels).
_FILTERS = {
    Image.Resampling.BOX: (_box, 0.5),
    Image.Resampling.BILINEAR: (_bilinear, 1.0),
    Image.Resampling.HAMMING: (_elementwise(_hamming), 1.0),
    Image.Resampling.BICUBIC: (_bicubic, 2.0),
    Image.Resampling.LANCZOS: (_elementwise(_lanczos), 3.0),
}


@functools.lru_cache(maxsize=1024)
def pil_resample_weights(in_size: int, out_size: int, resample: Image.Resampling, box_start: float,
                         box_end: float) -> Tuple[np.ndarray, np.ndarray]:
    """Pillow's integer coefficients for resizing one axis of an 8-bit image.

    Output pixel ``i`` is ``sum_j coefficients[i, j] * source[bounds[i, 0] + j]`` over
    ``j < bounds[i, 1]``, plus ``2**(PRECISION_BITS - 1)``, shifted right by ``PRECISION_BITS``
    and clipped to 0..255. Computed as ``precompute_coeffs`` and ``normalize_coeffs_8bpc``
    of Pillow's ``Resample.c`` do: the box ends as C floats (float32), the filter in float64,
    the weights normalised by their sum (added in order), ``k * 2**22`` rounded half away from zero.

    Args:
        in_size: the source axis' length; out_size: the output's.
        resample: any filter but ``NEAREST`` (which Pillow does not resize this way).
        box_start, box_end: the source interval mapped onto the output (``0, in_size``: all of it).
    Returns:
        ``(bounds, coefficients)``: int64 arrays ``[out_size, 2]`` (first source pixel, count) and
        ``[out_size, ksize]`` (zeros past each count); read-only, as they are cached.

    >>> bounds, k = pil_resample_weights(2, 4, Image.Resampling.BILINEAR, 0, 2)
    >>> bounds.tolist(), (k / 2**PRECISION_BITS).tolist()
    ([[0, 1], [0, 2], [0, 2], [1, 1]], [[1.0, 0.0, 0.0], [0.75, 0.25, 0.0], [0.25, 0.75, 0.0], [1.0, 0.0, 0.0]])
    """
    resample = Image.Resampling(resample)
    if resample not in _FILTERS:
        raise ValueError(f"Pillow has no resampling coefficients for {resample.name} (only {[f.name for f in _FILTERS]})")
    function, filter_support = _FILTERS[resample]
    in0, in1 = np.float32(box_start), np.float32(box_end)
    scale = float(in1 - in0) / out_size  # the difference in float32, as in C
    filterscale = max(scale, 1.0)
    support = filter_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = float(in0) + (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    taps = np.arange(ksize)
    used = taps[None, :] < xmax[:, None]
    arguments = ((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale)
    weights = np.where(used, function(np.where(used, arguments, 0.0)), 0.0)
    total = np.zeros(out_size)
    for tap in range(ksize):  # in order, as Pillow adds them
        total = total + weights[:, tap]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total != 0.0, total, 1.0)[:, None], weights)
    scaled = weights * (1 << PRECISION_BITS)
    coefficients = np.trunc(np.where(weights < 0, -0.5 + scaled, 0.5 + scaled)).astype(np.int64)
    bounds = np.stack([xmin, xmax], axis=1)
    bounds.flags.writeable = coefficients.flags.writeable = False
    return bounds, coefficients


@functools.lru_cache(maxsize=256)
def _pass_matrix(in_size: int, out_size: int, resample: Image.Resampling, box_start: float, box_end: float,
                 device: torch.device) -> torch.Tensor:
    """:func:`pil_resample_weights` as a dense float64 matrix ``[out_size, in_size]`` on ``device``."""
    bounds, coefficients = pil_resample_weights(in_size, out_size, resample, box_start, box_end)
    dense = np.zeros((out_size, in_size))
    taps = np.arange(coefficients.shape[1])
    rows, cols = np.nonzero(taps[None, :] < bounds[:, 1:])
    dense[rows, bounds[rows, 0] + cols] = coefficients[rows, cols]
    return torch.from_numpy(dense).to(device)


def _to_uint8(sums: torch.Tensor) -> torch.Tensor:
    """``clip((sums + 2**21) >> 22)`` as uint8: the end of each of Pillow's passes (exact on float64 integers)."""
    sums = sums + float(1 << (PRECISION_BITS - 1))
    return torch.floor(sums * 2.0 ** -PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def _resample(source: torch.Tensor, size: Tuple[int, int], resample: Image.Resampling,
              box: Tuple[np.float32, ...]) -> torch.Tensor:
    """What Pillow's C ``resize`` does with an 8-bit single-band image (``_imaging.c``, ``Resample.c``)."""
    height, width = source.shape
    (out_w, out_h), (x0, y0, x1, y1) = size, box
    if x0 == int(x0) and x1 - x0 == out_w and y0 == int(y0) and y1 - y0 == out_h:  # Pillow crops
        return source[int(y0):int(y0) + out_h, int(x0):int(x0) + out_w].clone()
    device = source.device
    need_horizontal = out_w != width or x0 != 0 or x1 != out_w
    need_vertical = out_h != height or y0 != 0 or y1 != out_h
    out = source
    first, last = 0, height
    if need_horizontal:  # only the rows the vertical pass reads
        bounds, _ = pil_resample_weights(height, out_h, resample, float(y0), float(y1))
        first, last = int(bounds[0, 0]), int(bounds[-1, 0] + bounds[-1, 1])
        matrix = _pass_matrix(width, out_w, resample, float(x0), float(x1), device)
        out = _to_uint8(source[first:last].to(torch.float64) @ matrix.T)
    if need_vertical:
        matrix = _pass_matrix(height, out_h, resample, float(y0), float(y1), device)[:, first:last]
        out = _to_uint8(matrix @ out.to(torch.float64))
    return out if out is not source else source.clone()


def resize_mask(grid_u8: np.ndarray, size: Tuple[int, int], resample: Image.Resampling,
                box: Optional[masks.Box], device: Device) -> torch.Tensor:
    """:func:`hf_api_prompt.masks.mask_to_pixels` on ``device``: a uint8 tensor ``[H, W]`` of ``size = (W, H)``.

    The same grid padding and box (:func:`hf_api_prompt.masks.pad_for_box`) and the same
    numbers as Pillow's ``resize``. ``NEAREST`` is resized by Pillow itself (on the CPU, then
    copied to ``device``): Pillow does not resample it with coefficients but with an affine
    transform, which this module does not reproduce.
    """
    resample = Image.Resampling(resample)
    if resample == Image.Resampling.NEAREST:
        return torch.from_numpy(np.array(masks.mask_to_pixels(grid_u8, size, resample, box))).to(device)
    grid, shifted = masks.pad_for_box(grid_u8, size, box)
    height, width = grid.shape
    out_w, out_h = size
    if out_w < 1 or out_h < 1:
        raise ValueError(f"height and width must be > 0, got {size}")
    x0, y0, x1, y1 = (np.float32(v) for v in ((0, 0, width, height) if shifted is None else shifted))
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height or x1 < x0 or y1 < y0:
        raise ValueError(f"box {shifted} is not inside the {width} x {height} grid")
    source = torch.from_numpy(np.ascontiguousarray(grid)).to(device)
    if height > width * 100 and out_h < height:  # Pillow's Image.resize: a very tall image, vertically first
        tall = _resample(source, (width, out_h), resample, (np.float32(0), y0, np.float32(width), y1))
        return _resample(tall, size, resample, (x0, np.float32(0), x1, np.float32(out_h)))
    return _resample(source, size, resample, (x0, y0, x1, y1))


@functools.lru_cache(maxsize=64)
def _table_on(device: torch.device, grayscale: int) -> torch.Tensor:
    return torch.from_numpy(np.array(masks.blend_table(grayscale)).ravel()).to(device)


def blend(pixels: torch.Tensor, weights: torch.Tensor, grayscale: int) -> torch.Tensor:
    """:func:`hf_api_prompt.masks.blend` on tensors: ``pixels [H, W, 3]`` and ``weights [H, W]``, uint8, one device.

    A lookup in :func:`hf_api_prompt.masks.blend_table` (copied to the device once per
    device and gray value) at ``weights * 256 + pixels``; a new uint8 tensor ``[H, W, 3]``.

    >>> out = blend(torch.full((1, 2, 3), 200, dtype=torch.uint8), torch.tensor([[255, 0]], dtype=torch.uint8), 100)
    >>> out[0, :, 0].tolist()
    [200, 100]
    """
    if pixels.dtype != torch.uint8 or weights.dtype != torch.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3 \
            or tuple(weights.shape) != tuple(pixels.shape[:2]):
        raise ValueError(f"blend needs uint8 pixels [H, W, 3] and uint8 weights [H, W], got {pixels.dtype} "
                         f"{tuple(pixels.shape)} and {weights.dtype} {tuple(weights.shape)}")
    table = _table_on(pixels.device, int(grayscale))
    index = weights.to(torch.int32)[:, :, None] * 256 + pixels.to(torch.int32)
    # index_select of a flat int32 index: 3.6 ms for 1024 x 768 on one CPU thread, against 10.6 for table[index]
    return table.index_select(0, index.view(-1)).view(pixels.shape)


def soft_mask_on(device: Device, image: Image.Image, grid_u8: np.ndarray, box: Optional[masks.Box],
                 config: PrompterConfig) -> prompts.Prompted:
    """:func:`hf_api_prompt.prompts.soft_mask` with the resizing and the blending on ``device``; the same images.

    The RGB image is copied to the device, the prompted image and the weights come back as PIL images.
    """
    if image.mode != "RGB":
        raise ValueError(f"the mask prompt needs an RGB image, got {image.mode}")
    device = torch.device(device)
    weights = resize_mask(grid_u8, image.size, Image.Resampling[config.interpolation], box, device)
    pixels = torch.from_numpy(np.array(image)).to(device)  # a copy: PIL's array is read-only
    out = blend(pixels, weights, config.grayscale)
    return prompts.Prompted(Image.fromarray(out.cpu().numpy(), mode="RGB"), Image.fromarray(weights.cpu().numpy(), mode="L"))
