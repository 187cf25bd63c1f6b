"""Turning one dataset row into a clean (RGB image, question) pair, or a reason why not."""

from __future__ import annotations

import io
from typing import Any, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps


class RowError(ValueError):
    """A row that cannot be processed; ``str()`` names the row and the problem."""

    def __init__(self, row: Any, reason: str):
        super().__init__(f"row {row}: {reason}")
        self.row = row
        self.reason = reason


def open_image(value: Any) -> Image.Image:
    """Decode a dataset image value into an RGB PIL image (:func:`decode_image` without the format)."""
    return decode_image(value)[0]


def decode_image(value: Any) -> Tuple[Image.Image, Optional[str]]:
    """Decode a dataset image value into an RGB PIL image, and say the source's format.

    Accepts what ``datasets`` hands over: a PIL image (``Image()`` feature), a
    ``{"bytes", "path"}`` dict (``Image(decode=False)``) or a file path. EXIF
    orientation is applied as ``datasets`` does when decoding, so the masked
    image is upright like the original. Modes become RGB as the model's own
    transform does (``convert("RGB")``); deeper gray is scaled to 8 bits first
    by its real range (:func:`to_rgb`).

    Returns:
        ``(image, format)``: the format is Pillow's name of the source's (``"JPEG"``,
        ``"PNG"``, ...), ``None`` for a PIL image made in memory.

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
        kind = image.format
        if image.getexif().get(Image.ExifTags.Base.Orientation, 1) != 1:  # transposing copies: only when needed
            image = ImageOps.exif_transpose(image)
    except Image.UnidentifiedImageError:  # its message names a BytesIO object's address: no use in a status
        raise ValueError("image could not be decoded (not a known image format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"image could not be decoded ({type(error).__name__}: {error})") from None
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has no pixels ({image.width}x{image.height})")
    return to_rgb(image), kind


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any PIL mode; gray deeper than 8 bits is mapped onto 0..255 first.

    Deep gray (modes ``I;16*``, ``I``, ``F``) becomes 8-bit gray by its real range,
    ``level = round(v * 255 / top)`` (halves round up):

    - ``I;16*`` (16-bit PNG, TIFF): ``top = 65535``.
    - ``I`` read from a PGM/PPM file: Pillow stores those samples on 0..65535 whatever
      ``maxval`` the file declares (it rescales), so ``top = 65535`` too.
    - other ``I`` (32-bit integers, e.g. built in memory): values within 0..255 are
      taken as 8-bit levels; values within 0..65535 as 16-bit data (``top = 65535``);
      anything else is clipped to 0..255.
    - ``F`` (float): values within [0, 1] are fractions (``top = 1``); anything else
      is clipped to 0..255 and rounded. NaN or infinite pixels are an error.

    Raises:
        ValueError: for a float image with NaN or infinite pixels.

    Example:
        >>> sixteen = Image.fromarray(np.array([[0, 257, 65535]], np.uint16))
        >>> np.asarray(to_rgb(sixteen))[0, :, 0].tolist()
        [0, 1, 255]
        >>> fractions = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
        >>> np.asarray(to_rgb(fractions))[0, :, 0].tolist()
        [0, 128, 255]
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return Image.fromarray(_gray_levels(image), mode="L").convert("RGB")
    return image.convert("RGB")


#: Pixels converted per step by :func:`_gray_levels`: its wide temporaries stay this size, whatever the image's.
_BAND_PIXELS = 1 << 20


def _gray_levels(image: Image.Image) -> np.ndarray:
    """8-bit levels of a deep gray image by the rule of :func:`to_rgb`, in bands of rows.

    The int64 and float64 arithmetic runs on one band at a time, so a large image never
    has a full-resolution copy wider than its own samples.
    """
    values = np.asarray(image)
    out = np.empty(values.shape, np.uint8)
    rows = max(1, _BAND_PIXELS // max(1, values.shape[1] if values.ndim > 1 else 1))
    bands = [slice(top, top + rows) for top in range(0, values.shape[0], rows)]
    if image.mode == "F":
        if not all(np.isfinite(values[band]).all() for band in bands):
            raise ValueError("image has NaN or infinite pixel values (mode F)")
        scale = 255 if values.size and 0 <= values.min() and values.max() <= 1 else 1
        for band in bands:
            out[band] = np.floor(np.clip(values[band].astype(np.float64) * scale, 0, 255) + 0.5)
        return out
    sixteen_bit = image.mode.startswith("I;16") or image.format == "PPM"
    if not sixteen_bit and values.size and 0 <= values.min() and 255 < values.max() <= 65535:
        sixteen_bit = True
    for band in bands:
        wide = values[band].astype(np.int64)
        out[band] = (wide * 510 + 65535) // 131070 if sixteen_bit else np.clip(wide, 0, 255)  # floor(v * 255 / 65535 + 1/2)
    return out


def check_question(value: Any) -> str:
    """The question text, unmodified (docs/method.md: the text is the question itself)."""
    if value is None:
        raise ValueError("question is missing (None)")
    if not isinstance(value, str):
        raise ValueError(f"question must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("question is empty")
    return value
