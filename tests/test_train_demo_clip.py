"""scripts/train_demo_clip.py: labels from the scenes' structure, and a seeded, repeatable run."""

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hf_api_prompt import ImagePrompter
from hf_api_prompt.scenes import make_scene

_SPEC = importlib.util.spec_from_file_location("train_demo_clip", Path(__file__).resolve().parents[1] / "scripts" / "train_demo_clip.py")
train = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(train)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_texts_come_in_true_false_pairs():
    for seed in range(200):
        objects = make_scene(seed, (112, 112)).objects
        texts = train.texts_for(objects, random.Random(seed), pairs=3)
        assert len(texts) == 6
        assert [t.holds_for(objects) for t in texts] == [True, False] * 3, (seed, texts)


def test_label_matrix_is_holds_for_on_every_pair():
    scenes = [make_scene(seed, (112, 112)) for seed in range(30)]
    texts = [t for i, s in enumerate(scenes) for t in train.texts_for(s.objects, random.Random(i), pairs=2)]
    labels = train.label_matrix(scenes, texts).numpy()
    expected = np.array([[t.holds_for(s.objects) for t in texts] for s in scenes], dtype=np.float32)
    assert labels.shape == (30, 120) and np.array_equal(labels, expected)
    # a text true of other scenes too ("a red object") is a positive for them: off-diagonal positives exist
    assert labels.sum() > 60


def _run(tmp_path, name, seed):
    out = tmp_path / name
    argv = ["--output-dir", str(out), "--steps", "2", "--batch-size", "8", "--log-every", "1", "--seed", str(seed)]
    assert train.main(argv) == 0
    return out, load_file(str(out / "open_clip_model.safetensors"))


def test_a_rerun_repeats_the_weights_and_the_checkpoint_loads(tmp_path, restore_threads):
    first, weights = _run(tmp_path, "a", 0)
    _, again = _run(tmp_path, "b", 0)
    _, other = _run(tmp_path, "c", 1)
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)
    assert not all(torch.equal(weights[k], other[k]) for k in weights)
    assert all(v.dtype == torch.float16 for v in weights.values())
    log = json.loads((first / "training_log.json").read_text())
    assert log["train_seeds"] == [train.TRAIN_SEED_BASE, train.TRAIN_SEED_BASE + 15]
    assert [h["step"] for h in log["history"]] == [1, 2]

    # the local-dir layout works with the product: a 112 px input with 8 px patches is a 14x14 grid
    scene = make_scene(3, (112, 112))
    out = ImagePrompter("clip", model=f"local-dir:{first}", layer_index=1)({"image": [scene.image], "question": [scene.question]})
    assert np.asarray(out["heatmap"][0]).shape == (14, 14)
