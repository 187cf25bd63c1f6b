"""Before / heatmap / after pictures for READMEs, dataset cards and the CLI."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Dark blue -> teal -> yellow: readable in print and for common color blindness.
_RAMP = np.array([[48, 18, 59], [40, 110, 200], [30, 190, 160], [170, 220, 60], [250, 235, 30]], dtype=np.float32)


def colorize(heatmap: np.ndarray) -> Image.Image:
    """A [0, 1] grid as an RGB image (one pixel per cell)."""
    values = np.clip(np.asarray(heatmap, dtype=np.float32), 0, 1) * (len(_RAMP) - 1)
    low = np.floor(values).astype(int).clip(0, len(_RAMP) - 2)
    frac = (values - low)[..., None]
    rgb = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def preview_grid(
    images: Sequence[Image.Image],
    heatmaps: Sequence[np.ndarray],
    masked_images: Sequence[Image.Image],
    questions: Sequence[str],
    height: int = 160,
) -> Image.Image:
    """One row per example: input | heatmap (stretched as in ``geometry="paper"``) | masked image.

    Example:
        >>> im = Image.new("RGB", (40, 20), "white")
        >>> preview_grid([im], [np.eye(2)], [im], ["Where?"]).mode
        'RGB'
    """
    font = ImageFont.load_default()
    caption = 18
    rows = []
    for image, heatmap, masked, question in zip(images, heatmaps, masked_images, questions):
        width = max(1, round(image.width * height / image.height))
        panels = [
            image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR),
            colorize(heatmap).resize((width, height), Image.Resampling.NEAREST),
            masked.convert("RGB").resize((width, height), Image.Resampling.BILINEAR),
        ]
        row = Image.new("RGB", (3 * width + 16, height + caption), "white")
        for index, panel in enumerate(panels):
            row.paste(panel, (index * (width + 8), caption))
        ImageDraw.Draw(row).text((2, 2), question[:120], fill="black", font=font)
        rows.append(row)
    header = 18
    canvas = Image.new("RGB", (max(r.width for r in rows), header + sum(r.height + 6 for r in rows)), "white")
    draw = ImageDraw.Draw(canvas)
    first = rows[0].width // 3
    for index, label in enumerate(("input", "heatmap (grid mask)", "masked image")):
        draw.text((index * (first + 3), 2), label, fill="black", font=font)
    top = header
    for row in rows:
        canvas.paste(row, (0, top))
        top += row.height + 6
    return canvas
