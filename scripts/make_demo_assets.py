"""Write the bundled demo scenes into ``hf_api_prompt/data/demo-scenes/``.

    python scripts/make_demo_assets.py

The scenes come from ``hf_api_prompt.scenes`` (seeds 100-105, 2-4 objects
each) and are deterministic, so re-running reproduces the same files. The
bundled demo model (``hf_api_prompt/data/demo-clip/``) is not made here: it is
trained by ``scripts/train_demo_clip.py``.
"""

import json
import logging
from pathlib import Path

from hf_api_prompt.scenes import scene_rows

DATA = Path(__file__).resolve().parents[1] / "hf_api_prompt" / "data"
# Non-square sizes on purpose: they show the paper/aligned geometry difference.
SCENE_SIZES = [(320, 240), (240, 320), (400, 240), (256, 256), (300, 200), (200, 300)]


def write_scenes(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "metadata.jsonl", "w") as metadata:
        for index, size in enumerate(SCENE_SIZES):
            # At least two objects: with one, any mask that finds an object looks right.
            rows = scene_rows([100 + index], size, min_objects=2)
            file_name = f"scene-{index}.png"
            rows["image"][0].save(directory / file_name)
            record = {key: values[0] for key, values in rows.items() if key != "image"}
            metadata.write(json.dumps({"file_name": file_name, **record}) + "\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    write_scenes(DATA / "demo-scenes")
    logging.info("wrote %s", DATA / "demo-scenes")
