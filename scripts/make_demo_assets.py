"""Write the bundled demo model and scenes into ``hf_api_prompt/data/``.

    python scripts/make_demo_assets.py

The model is a tiny open_clip ViT with seeded random weights, stored in fp16 in
open_clip's ``local-dir`` layout; the scenes come from ``hf_api_prompt.scenes``.
Both are deterministic, so re-running reproduces the same files.
"""

import json
import logging
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from hf_api_prompt.scenes import scene_rows

DATA = Path(__file__).resolve().parents[1] / "hf_api_prompt" / "data"
MODEL_CFG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 128, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PREPROCESS_CFG = {
    "size": 224, "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0,
}
# Non-square sizes on purpose: they show the paper/aligned geometry difference.
SCENE_SIZES = [(320, 240), (240, 320), (400, 240), (256, 256), (300, 200), (200, 300)]


def write_model(directory: Path, seed: int = 0):
    torch.manual_seed(seed)
    model = open_clip.CLIP(**MODEL_CFG)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}, indent=2) + "\n"
    )
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "open_clip_model.safetensors"))


def write_scenes(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "metadata.jsonl", "w") as metadata:
        for index, size in enumerate(SCENE_SIZES):
            rows = scene_rows([100 + index], size)
            file_name = f"scene-{index}.png"
            rows["image"][0].save(directory / file_name)
            record = {key: values[0] for key, values in rows.items() if key != "image"}
            metadata.write(json.dumps({"file_name": file_name, **record}) + "\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    write_model(DATA / "demo-clip")
    write_scenes(DATA / "demo-scenes")
    logging.info("wrote %s", DATA)
