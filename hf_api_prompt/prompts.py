"""Stage 3 of docs/method.md: visual prompts, grid mask + image -> prompted image (pure, no model).

A prompt style is one function registered under a name (the config's ``prompt``
selects it), with its parameters as config fields; it receives the RGB
image, its grid mask as ``uint8`` (``floor(mask * 255)``), the grid box the image
maps to (``None``: the grid is stretched over the whole image) and the config,
and returns a :class:`Prompted`. :func:`apply_prompt` is the stage's entry point,
used by :class:`~hf_api_prompt.ImagePrompter`, by remasking a maps dataset, by
lmms-eval's on-the-fly masking and by the playground alike.

The styles: ``"mask"`` (the paper's: blend towards a flat gray), ``"blur"`` (blend
towards a Gaussian-blurred copy of the image, ``blur_radius``) and ``"crop"`` (the
image cut to the box around the mask's mass, :func:`crop_box`; the box is the
extra output column :data:`CROP_BOX_COLUMN`).

Example:
    >>> import numpy as np
    >>> from PIL import Image
    >>> from hf_api_prompt import PrompterConfig
    >>> config = PrompterConfig(backend="clip", model="ViT-B-16", pretrained=None, layer_index=0, grayscale=100)
    >>> [out] = apply_prompt(config, [Image.new("RGB", (4, 2), (200, 200, 200))], np.zeros((1, 2, 2), np.float32), [None])
    >>> out.image.getpixel((0, 0)), out.weights.getpixel((0, 0))
    ((100, 100, 100), 0)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFilter

from . import config as config_module, encoding, masks, parallel
from .config import GEOMETRIES, LATER_FIELDS, PrompterConfig

Box = masks.Box
#: The output column of ``prompt="crop"``: per row, the crop's box ``[left, top, right, bottom]`` in pixels of the
#: source image (right and bottom exclusive, as ``PIL.Image.crop`` takes it); ``None`` for a row passed through.
CROP_BOX_COLUMN = "api_crop_box"


@dataclasses.dataclass
class Prompted:
    """A prompted image and the per-pixel weights it was made with.

    Attributes:
        image: the prompted RGB image, the input's size.
        weights: mode ``"L"`` image of the input's size: how much of each pixel is kept (255: all).
        stored: ``image`` encoded as the config's ``image_format`` says (:func:`hf_api_prompt.encoding.encode`),
            when :func:`apply_prompt` was given the source formats; else ``None``.
        box: ``(left, top, right, bottom)`` of the source that ``image`` shows, for a style that crops; else ``None``.
    """

    image: Image.Image
    weights: Image.Image
    stored: Optional[Dict[str, Any]] = None
    box: Optional[Tuple[int, int, int, int]] = None


PromptStyle = Callable[[Image.Image, np.ndarray, Optional[Box], PrompterConfig], Prompted]
_STYLES: Dict[str, PromptStyle] = {}


def register_prompt(name: str, parameters: Optional[Dict[str, tuple]] = None):
    """Function decorator: make a prompt style available as ``ImagePrompter(..., prompt=name)``.

    The name is spelled in variant names (after the geometry), so it may not be a geometry's.

    Args:
        parameters: the style's own config fields, ``{field: (default, name prefix[, low, high, low included])}``
            (:class:`~hf_api_prompt.config.StyleParameter`; the value is a finite number in the range, by default
            ``[0, inf)``): each is a
            :class:`~hf_api_prompt.PrompterConfig` field added later (:data:`~hf_api_prompt.config.LATER_FIELDS`,
            absent as ``None``) that no other style owns. A config of this style fills a field left ``None``
            with its default, a config of another style refuses it; the variant name spells it as
            ``{prefix}{value}`` after the style's name.
    """
    if name in GEOMETRIES:
        raise ValueError(f"a prompt style cannot be named like a geometry ({name!r})")
    parameters = {field: config_module.StyleParameter(*spec) for field, spec in (parameters or {}).items()}
    for field in parameters:
        if LATER_FIELDS.get(field, "absent") is not None:
            raise ValueError(f"prompt style {name!r}: parameter {field!r} is not a PrompterConfig field absent as None "
                             "(LATER_FIELDS)")
        owner = next((style for style, own in config_module.PROMPT_PARAMETERS.items() if field in own and style != name), None)
        if owner is not None:
            raise ValueError(f"prompt style {name!r}: parameter {field!r} belongs to prompt style {owner!r}")

    def register(function: PromptStyle) -> PromptStyle:
        _STYLES[name] = function
        config_module.PROMPT_PARAMETERS[name] = parameters
        return function

    return register


def available_prompts() -> List[str]:
    return sorted(_STYLES)


def check_prompt(name: str):
    """Raise ``ValueError`` unless ``name`` is a registered prompt style."""
    if name not in _STYLES:
        raise ValueError(f"unknown prompt style {name!r}; available: {available_prompts()}")


@register_prompt("mask")
def soft_mask(image: Image.Image, grid_u8: np.ndarray, box: Optional[Box], config: PrompterConfig) -> Prompted:
    """The paper's prompt: the grid mask resized to the image (``interpolation``), blended towards ``grayscale``."""
    weights = masks.mask_to_pixels(grid_u8, image.size, Image.Resampling[config.interpolation], box)
    return Prompted(masks.blend(image, weights, config.grayscale), weights)


@register_prompt("blur", {"blur_radius": (0.05, "r", 0.0, math.inf, False)})
def blur(image: Image.Image, grid_u8: np.ndarray, box: Optional[Box], config: PrompterConfig) -> Prompted:
    """The soft mask of ``"mask"``, blended towards the image blurred instead of a flat gray (FGVP).

    The blur is Pillow's ``GaussianBlur`` with a standard deviation of ``blur_radius`` times the
    image's shorter side; each pixel is ``uint8(image * w + blurred * (1 - w))`` (:func:`hf_api_prompt.masks.blend_towards`).
    """
    weights = masks.mask_to_pixels(grid_u8, image.size, Image.Resampling[config.interpolation], box)
    blurred = image.filter(ImageFilter.GaussianBlur(config.blur_radius * min(image.size)))
    return Prompted(masks.blend_towards(image, weights, blurred), weights)


@register_prompt("crop", {"crop_mass": (0.7, "m", 0.0, 1.0, False), "crop_padding": (0.1, "p"),
                          "crop_min_size": (0.25, "s", 0.0, 1.0)})
def crop(image: Image.Image, grid_u8: np.ndarray, box: Optional[Box], config: PrompterConfig) -> Prompted:
    """The image cut to :func:`crop_box` of the soft mask of ``"mask"`` (ViCrop); ``Prompted.box`` is the box."""
    weights = masks.mask_to_pixels(grid_u8, image.size, Image.Resampling[config.interpolation], box)
    kept = crop_box(np.asarray(weights), config.crop_mass, config.crop_padding, config.crop_min_size)
    return Prompted(image.crop(kept), weights, box=kept)


def crop_box(weights: np.ndarray, mass: float, padding: float, min_size: float) -> Tuple[int, int, int, int]:
    """The crop of ``prompt="crop"``: ``(left, top, right, bottom)`` in pixels (right, bottom exclusive).

    1. The region: the mask's mass is its weight above the image's mean weight (a soft mask is
       nowhere zero, and the diffuse rest of the image would otherwise hold much of the total);
       the region is the pixels of highest weight that together hold ``mass`` of that mass (every
       pixel at or above the weight where the share is reached, ties included), the start box
       their bounding box. A mask with no mass (constant, or all zero) gives the whole image.
    2. Padding: each side moves out by ``padding`` times the box's side along it.
    3. Minimum size: a side shorter than ``min_size`` times the image's side along it grows to
       that length about its centre; the box otherwise keeps the region's aspect.
    4. Clamping: a box reaching outside the image moves inside it, keeping its size (clipped only
       where it is larger than the image); the edges are then rounded outwards to whole pixels.

    Args:
        weights: ``[H, W]`` pixel weights (the resized mask, 0-255).

    >>> w = np.zeros((100, 200), np.uint8); w[40:50, 100:120] = 255
    >>> crop_box(w, 0.9, 0.0, 0.0), crop_box(w, 0.9, 0.5, 0.0), crop_box(w, 0.9, 0.0, 0.5)
    ((100, 40, 120, 50), (90, 35, 130, 55), (60, 20, 160, 70))
    """
    height, width = weights.shape
    values = np.asarray(weights, dtype=np.float64)
    values = np.clip(values - values.mean(), 0, None)
    total = values.sum()
    if total <= 0:
        return 0, 0, width, height
    ordered = np.sort(values, axis=None)[::-1]
    reach = int(np.searchsorted(np.cumsum(ordered), mass * total * (1 - 1e-12)))
    rows, cols = np.nonzero(values >= ordered[min(reach, ordered.size - 1)])
    edges = []
    for low, high, side in ((cols.min(), cols.max() + 1, width), (rows.min(), rows.max() + 1, height)):
        low, high = low - padding * (high - low), high + padding * (high - low)
        if high - low < min_size * side:
            centre = (low + high) / 2
            low, high = centre - min_size * side / 2, centre + min_size * side / 2
        if high - low >= side:
            low, high = 0, side
        elif low < 0:
            low, high = 0, high - low
        elif high > side:
            low, high = low - (high - side), side
        edges.append((max(0, math.floor(low)), min(side, math.ceil(high))))
    (left, right), (top, bottom) = edges
    return left, top, right, bottom


def writes_box(prompt: str) -> bool:
    """Whether prompt style ``prompt`` writes the :data:`CROP_BOX_COLUMN` (it crops)."""
    return prompt == "crop"


def apply_prompt(
    config: PrompterConfig,
    images: Sequence[Image.Image],
    grid_masks: np.ndarray,
    boxes: Sequence[Optional[Box]],
    threads: int = 1,
    source_formats: Optional[Sequence[Optional[str]]] = None,
    device: Optional[Any] = None,
) -> List[Prompted]:
    """Prompt each image with its grid mask ``[B, gh, gw]`` in [0, 1], in the style ``config.prompt``.

    Args:
        boxes: the backend's grid box of each image; used only with ``geometry="aligned"``.
        threads: the images are prompted on this many threads (:func:`hf_api_prompt.parallel.thread_map`).
        source_formats: each source's format; when given, each image is also encoded (``Prompted.stored``)
            in the same task, so that one thread's encoding (Pillow's encoders hold the GIL) overlaps
            another's resizing and blending (which release it).
        device: a torch device (or its name) for the resizing and blending, ``None``: the CPU with
            Pillow and numpy; the images are the same (:mod:`hf_api_prompt.device_prompt`). Only the
            ``"mask"`` style runs on a device.

    Raises:
        ValueError: ``geometry="aligned"`` for an image whose box is unknown; a ``device`` for another style than ``"mask"``.
    """
    check_prompt(config.prompt)
    if device is not None and config.prompt != "mask":
        raise ValueError(f"prompt style {config.prompt!r} runs on the CPU only: a prompt device is for the 'mask' style, "
                         f"got device {device!r}")
    if config.geometry == "aligned" and any(box is None for box in boxes):
        raise ValueError("geometry='aligned' needs the grid box of every image, and the maps hold none for some")
    use = boxes if config.geometry == "aligned" else [None] * len(images)
    grid_u8 = masks.mask_to_uint8(grid_masks)
    if device is None:
        style = _STYLES[config.prompt]
    else:
        from .device_prompt import soft_mask_on

        style = functools.partial(soft_mask_on, device)
    formats = [None] * len(images) if source_formats is None else list(source_formats)

    def one(args) -> Prompted:
        image, grid, box, source_format = args
        prompted = style(image, grid, box, config)
        if source_formats is not None:
            prompted.stored = encoding.encode(prompted.image, config, source_format)
        return prompted

    return parallel.thread_map(one, list(zip(images, grid_u8, use, formats)), threads)
