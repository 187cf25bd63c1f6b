"""How a prompted image is stored: the config's ``image_format``, encoded once, handed to ``datasets`` as bytes.

``datasets`` encodes a PIL image itself (PNG at zlib's default level for a new
image), which costs more than the whole method on a fast model: about ten times
a JPEG encode for a photo. The prompter encodes instead, with the choice recorded
in the config (so in the variant's name and card), and hands ``datasets`` the
bytes (``{"bytes": ..., "path": None}``), which the ``Image`` feature stores as they are.

- ``"png"``: lossless; zlib level 1 with its run-length strategy (``Z_RLE``): on
  photos about four times faster than Pillow's default level and a few per cent
  larger, on charts and screenshots as fast and still small.
- ``"jpeg"``: lossy, at ``jpeg_quality`` (default 75, as the authors' code saved
  its outputs; their numbers were measured on those), Pillow's default 4:2:0 chroma.
- ``"source"``: a JPEG source gives a JPEG at ``jpeg_quality``, any other source a
  PNG: the source's kind of compression, never a lossy copy of a lossless image.

Example:
    >>> from PIL import Image
    >>> from hf_api_prompt import PrompterConfig
    >>> config = PrompterConfig(backend="clip", model="ViT-B-16", pretrained=None, layer_index=0)
    >>> config.image_format, config.jpeg_quality
    ('source', 75)
    >>> stored_format(config, "JPEG"), stored_format(config, "PNG"), stored_format(config, None)
    ('JPEG', 'PNG', 'PNG')
    >>> value = encode(Image.new("RGB", (8, 8), (10, 20, 30)), config, "PNG")
    >>> value["bytes"][:4], value["path"]
    (b'\\x89PNG', None)
"""

from __future__ import annotations

import io
import os
import zlib
from typing import Any, Dict, Optional

from PIL import Image

from .config import PrompterConfig

PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}


def stored_format(config: PrompterConfig, source_format: Optional[str]) -> str:
    """The PIL format (``"PNG"`` or ``"JPEG"``) a prompted image is stored in, given its source's format.

    Args:
        source_format: the decoded source's ``Image.format`` (``None`` for an image made in memory).
    """
    if config.image_format == "jpeg" or (config.image_format == "source" and source_format == "JPEG"):
        return "JPEG"
    return "PNG"


def encode(image: Image.Image, config: PrompterConfig, source_format: Optional[str]) -> Dict[str, Any]:
    """``image`` encoded as ``config`` says, as the value an ``Image()`` feature stores unchanged."""
    if stored_format(config, source_format) == "JPEG":
        return {"bytes": _jpeg(image, config.jpeg_quality), "path": None}
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **PNG_OPTIONS)
    return {"bytes": buffer.getvalue(), "path": None}


def _jpeg(image: Image.Image, quality: int) -> bytes:
    """JPEG bytes, written through an in-memory file where the OS has them (Linux ``memfd``).

    Pillow holds the GIL while it encodes into a ``BytesIO`` but releases it while it writes to a
    real file, so on threads the file is what scales (measured: 1.2x against 1.6x on 2 threads for
    a 1024 x 768 photo, and no slower). The bytes are the same either way.
    """
    try:
        descriptor = os.memfd_create("hf_api_prompt_jpeg", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux, or memfd refused (a sandbox): the same bytes, held GIL
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()
    with open(descriptor, "w+b") as handle:
        image.save(handle, format="JPEG", quality=quality)
        handle.seek(0)
        return handle.read()


def as_stored(image: Image.Image, config: PrompterConfig, source_format: Optional[str]) -> Image.Image:
    """``image`` as a reader of the stored variant sees it: decoded from :func:`encode` when that is lossy.

    Used where a prompted image is shown without being stored (lmms-eval's on-the-fly
    masking), so that it equals the materialized variant pixel for pixel.
    """
    if stored_format(config, source_format) == "PNG":
        return image
    decoded = Image.open(io.BytesIO(encode(image, config, source_format)["bytes"]))
    decoded.load()
    return decoded


def describe(config: PrompterConfig) -> str:
    """The format in words, for a dataset card.

    >>> from hf_api_prompt import PrompterConfig
    >>> describe(PrompterConfig(backend="clip", model="m", pretrained=None, layer_index=0))
    'JPEG q75 for JPEG sources, else PNG'
    """
    if config.image_format == "png":
        return "PNG"
    if config.image_format == "jpeg":
        return f"JPEG q{config.jpeg_quality}"
    return f"JPEG q{config.jpeg_quality} for JPEG sources, else PNG"
