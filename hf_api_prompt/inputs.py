"""Turning one dataset row into a clean (RGB image, question) pair, or a reason why not."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageOps


class RowError(ValueError):
    """A row that cannot be processed; ``str()`` names the row and the problem."""

    def __init__(self, row: Any, reason: str):
        super().__init__(f"row {row}: {reason}")
        self.row = row
        self.reason = reason


def open_image(value: Any) -> Image.Image:
    """Decode a dataset image value into an RGB PIL image.

    Accepts what ``datasets`` hands over: a PIL image (``Image()`` feature), a
    ``{"bytes", "path"}`` dict (``Image(decode=False)``) or a file path. EXIF
    orientation is applied as ``datasets`` does when decoding, so the masked
    image is upright like the original. Modes become RGB as the model's own
    transform does (``convert("RGB")``); 16-bit gray is scaled to 8 bits first.

    Raises:
        ValueError: with a short reason (the caller adds the row).
    """
    if value is None:
        raise ValueError("image is missing (None)")
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and not path:
            raise ValueError("image is missing (no bytes and no path)")
        source = io.BytesIO(data) if data is not None else path
    elif isinstance(value, (str, bytes)):
        source = io.BytesIO(value) if isinstance(value, bytes) else value
    elif isinstance(value, Image.Image):
        source = None
    else:
        raise ValueError(f"image has unsupported type {type(value).__name__}")
    try:
        image = value if source is None else Image.open(source)
        image.load()
        if image.getexif().get(Image.ExifTags.Base.Orientation, 1) != 1:  # transposing copies: only when needed
            image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"image could not be decoded ({type(error).__name__}: {error})") from None
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has no pixels ({image.width}x{image.height})")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any PIL mode; 16/32-bit gray is scaled or clipped to 8 bits first."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        gray = (np.asarray(image).astype(np.uint32) * 255 + 32767) // 65535
        return Image.fromarray(gray.astype(np.uint8), mode="L").convert("RGB")
    if image.mode in ("I", "F"):
        gray = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")


def check_question(value: Any) -> str:
    """The question text, unmodified (docs/method.md: the text is the question itself)."""
    if value is None:
        raise ValueError("question is missing (None)")
    if not isinstance(value, str):
        raise ValueError(f"question must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("question is empty")
    return value
