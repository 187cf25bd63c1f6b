import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The authors' outputs, vendored (tests/fixtures/golden/README.md); HF_API_PROMPT_GOLDEN points at another copy.
GOLDEN = Path(os.environ.get("HF_API_PROMPT_GOLDEN", ROOT / "tests" / "fixtures" / "golden" / "clip_public"))
GOLDEN_MODEL = "local-dir:" + str(GOLDEN / "model")


@pytest.fixture
def backend_loads(monkeypatch, tmp_path):
    """Record each ClipBackend construction, in num_proc workers too: read() gives ``[(pid, torch threads), ...]``."""
    import torch

    from hf_api_prompt.backends.clip import ClipBackend

    log = tmp_path / "backend_loads.txt"
    original = ClipBackend.__init__

    def recording_init(self, *args, **kwargs):
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()} {torch.get_num_threads()}\n")
        original(self, *args, **kwargs)

    monkeypatch.setattr(ClipBackend, "__init__", recording_init)

    def read():
        return [tuple(map(int, line.split())) for line in log.read_text().splitlines()] if log.exists() else []

    return read


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"golden fixtures not found at {GOLDEN} (tests/fixtures/golden/ in the repository, or HF_API_PROMPT_GOLDEN)")
    return GOLDEN


def make_local_clip(directory: Path, *, image_size=64, patch_size=8, width=64, layers=3, heads=4, seed=0) -> str:
    """Build a tiny random open_clip ViT from a config and save it in the local-dir layout."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "head_width": width // heads, "patch_size": patch_size},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    directory.mkdir(parents=True, exist_ok=True)
    preprocess = {"size": image_size, "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
                  "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors"))
    return "local-dir:" + str(directory)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """``local-dir:`` name of a tiny random CLIP (64 px input, 8x8 grid, 3 blocks)."""
    return make_local_clip(tmp_path_factory.mktemp("tiny_clip"))
