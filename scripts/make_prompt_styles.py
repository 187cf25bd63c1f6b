"""Draw the three prompt styles side by side on bundled scenes: ``docs/prompt_styles.png``.

    python scripts/make_prompt_styles.py [--output docs/prompt_styles.png]

Each row is one bundled scene and its question (``hf_api_prompt/data/demo-scenes``),
masked by the bundled demo model (block 1, ``geometry="aligned"``, the README's
setting) in each style at its default parameters: the source with the crop's box
drawn on it, ``"mask"``, ``"blur"`` and ``"crop"``. Deterministic: re-running
draws the same picture.
"""

import argparse
import logging
from pathlib import Path

from PIL import Image, ImageDraw

from hf_api_prompt import ImagePrompter
from hf_api_prompt.bundled import DEMO_MODEL, DEMO_MODEL_LAYER, load_demo_dataset
from hf_api_prompt.prompts import CROP_BOX_COLUMN

ROOT = Path(__file__).resolve().parents[1]
STYLES = ("mask", "blur", "crop")
#: The scenes shown (rows of the bundled set): ones where the demo model's mask lands on the asked-about shape.
SCENES = (1, 3, 4)
CELL = 200  # height of each picture; widths follow the images' aspect


def styled_rows(scenes=SCENES):
    """``{style: rows}`` of the bundled scenes, each style run by the demo model at its default parameters."""
    ds = load_demo_dataset().select(list(scenes))
    return ds, {style: ImagePrompter("clip", model=DEMO_MODEL, layer_index=DEMO_MODEL_LAYER, geometry="aligned",
                                     prompt=style, image_format="png").map(ds) for style in STYLES}


def picture(scenes=SCENES) -> Image.Image:
    ds, styled = styled_rows(scenes)
    header = 24
    rows = []
    for i, source in enumerate(ds):
        image = source["image"].convert("RGB")
        boxed = image.copy()
        ImageDraw.Draw(boxed).rectangle(list(styled["crop"][i][CROP_BOX_COLUMN]), outline=(255, 255, 255), width=3)
        cells = [boxed] + [styled[style][i]["masked_image"].convert("RGB") for style in STYLES]
        rows.append(([cell.resize((round(cell.width * CELL / cell.height), CELL)) for cell in cells], source["question"]))
    widths = [max(cells[c].width for cells, _ in rows) for c in range(len(STYLES) + 1)]
    out = Image.new("RGB", (sum(widths) + 10 * len(widths), (CELL + header) * len(rows) + header), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for c, label in enumerate(["source (crop box)", *(f'prompt="{s}"' for s in STYLES)]):
        draw.text((sum(widths[:c]) + 10 * c + 5, 6), label, fill=(0, 0, 0))
    for r, (cells, question) in enumerate(rows):
        top = header + r * (CELL + header)
        draw.text((5, top + 6), question, fill=(0, 0, 0))
        for c, cell in enumerate(cells):
            out.paste(cell, (sum(widths[:c]) + 10 * c + 5, top + header))
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "prompt_styles.png")
    args = parser.parse_args()
    picture().save(args.output, optimize=True)
    logging.info("wrote %s", args.output)
