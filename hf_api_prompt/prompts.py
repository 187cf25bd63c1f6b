"""Stage 3 of docs/method.md: visual prompts, grid mask + image -> prompted image (pure, no model).

A prompt style is one function registered under a name (the config's ``prompt``
selects it; adding one touches nothing else); it receives the RGB
image, its grid mask as ``uint8`` (``floor(mask * 255)``), the grid box the image
maps to (``None``: the grid is stretched over the whole image) and the config,
and returns a :class:`Prompted`. :func:`apply_prompt` is the stage's entry point,
used by :class:`~hf_api_prompt.ImagePrompter`, by remasking a maps dataset, by
lmms-eval's on-the-fly masking and by the playground alike.

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
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from . import encoding, masks, parallel
from .config import GEOMETRIES, PrompterConfig

Box = masks.Box


@dataclasses.dataclass
class Prompted:
    """A prompted image and the per-pixel weights it was made with.

    Attributes:
        image: the prompted RGB image, the input's size.
        weights: mode ``"L"`` image of the input's size: how much of each pixel is kept (255: all).
        stored: ``image`` encoded as the config's ``image_format`` says (:func:`hf_api_prompt.encoding.encode`),
            when :func:`apply_prompt` was given the source formats; else ``None``.
    """

    image: Image.Image
    weights: Image.Image
    stored: Optional[Dict[str, Any]] = None


PromptStyle = Callable[[Image.Image, np.ndarray, Optional[Box], PrompterConfig], Prompted]
_STYLES: Dict[str, PromptStyle] = {}


def register_prompt(name: str):
    """Function decorator: make a prompt style available as ``ImagePrompter(..., prompt=name)``.

    The name is spelled in variant names (after the geometry), so it may not be a geometry's.
    """
    if name in GEOMETRIES:
        raise ValueError(f"a prompt style cannot be named like a geometry ({name!r})")

    def register(function: PromptStyle) -> PromptStyle:
        _STYLES[name] = function
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
