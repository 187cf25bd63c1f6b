"""The clip backend reproduces the authors' own outputs (tests/fixtures/golden/clip_public)."""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset, Image as ImageFeature
from PIL import Image

from hf_api_prompt import ImagePrompter

from conftest import GOLDEN_MODEL


@pytest.fixture(scope="module")
def manifest(golden_dir):
    return json.loads((golden_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def golden_dataset(golden_dir, manifest):
    rows = manifest["images"]
    ds = Dataset.from_dict(
        {
            "id": [r["id"] for r in rows],
            "image": [str(golden_dir / r["file"]) for r in rows],
            "question": [r["question"] for r in rows],
        }
    )
    return ds.cast_column("image", ImageFeature())


def _params(manifest):
    return [(layer, p) for layer in manifest["layer_indices"] for p in manifest["parameter_sets"]]


@pytest.mark.slow
def test_golden_cases(golden_dir, manifest, golden_dataset):
    cases = {c["id"]: c for c in manifest["cases"]}
    merged_err, u8_bad, blended_total, blended_equal, blended_max = 0.0, 0, 0, 0, 0
    for layer, p in _params(manifest):
        prompter = ImagePrompter(
            "clip",
            model=GOLDEN_MODEL,
            layer_index=layer,
            enhance_coe=p["enhance_coe"],
            kernel_size=p["kernel_size"],
            interpolation=p["interpolation"].lower(),
            grayscale=p["grayscale"],
            geometry="paper",
        )
        out = golden_dataset.map(prompter, batched=True, batch_size=4, features=prompter.features(golden_dataset.features))
        assert out.features["heatmap"].shape == (7, 7)
        for row in out:
            key = f"{row['id']}_L{layer}_coe{p['enhance_coe']}_k{p['kernel_size']}_{p['interpolation']}_gray{p['grayscale']}"
            expected = cases[key]["expected"]
            heatmap = np.asarray(row["heatmap"], dtype=np.float32)
            want = np.load(golden_dir / expected["merged_mask"])
            merged_err = max(merged_err, float(np.abs(heatmap - want).max()))
            want_u8 = np.load(golden_dir / expected["mask_u8"]).astype(int)
            got_u8 = np.floor(heatmap * np.float32(255)).astype(int)
            off = got_u8 != want_u8
            # Only saturated cells near an integer boundary may flip, by one.
            assert np.all(np.abs(got_u8 - want_u8)[off] == 1), key
            assert np.all(np.abs(want[off] * 255 - np.round(want[off] * 255)) < 1e-4), key
            u8_bad += int(off.sum())
            got = np.asarray(row["masked_image"].convert("RGB")).astype(int)
            ref = np.asarray(Image.open(golden_dir / expected["blended"]).convert("RGB")).astype(int)
            assert got.shape == ref.shape, key
            diff = np.abs(got - ref)
            blended_max = max(blended_max, int(diff.max()))
            blended_total += diff.size
            blended_equal += int((diff == 0).sum())
    print(f"merged max abs err {merged_err:.3g}; u8 cells off by one {u8_bad}; "
          f"blended equal {blended_equal}/{blended_total}, max diff {blended_max}")
    assert merged_err <= 2e-5
    assert blended_max <= 2
    assert blended_equal / blended_total >= 0.99


def test_raw_maps_match_after_minmax(golden_dir, manifest, golden_dataset):
    """The maps before merging agree with the authors' raw maps up to their affine freedom."""
    images = [Image.open(golden_dir / r["file"]).convert("RGB") for r in manifest["images"]]
    questions = [r["question"] for r in manifest["images"]]
    for layer in manifest["layer_indices"]:
        backend = ImagePrompter("clip", model=GOLDEN_MODEL, layer_index=layer).backend()
        with torch.inference_mode():
            maps = backend.raw_maps(backend.pixels(images), backend.encode_questions(questions), [layer])[layer]
        attention, tokens = maps["attention"], maps["tokens"]
        for i, r in enumerate(manifest["images"]):
            for got, name in ((attention[i], "attention_map"), (tokens[i], "token_map")):
                want = np.load(golden_dir / f"expected/raw/{r['id']}_L{layer}_{name}.npy")
                norm = lambda a: (a - a.min()) / (a.max() - a.min())  # noqa: E731
                assert np.abs(norm(got.numpy()) - norm(want)).max() < 1e-5, (r["id"], layer, name)


def test_preprocessing_and_tokens_match(golden_dir, manifest):
    prompter = ImagePrompter("clip", model=GOLDEN_MODEL, layer_index=2)
    backend = prompter.backend()
    for image_id, path in manifest["extra_expected"]["preprocessed"].items():
        image = Image.open(golden_dir / f"images/{image_id}.png").convert("RGB")
        np.testing.assert_allclose(backend.pixels([image])[0].numpy(), np.load(golden_dir / path), atol=1e-6)
    tokens = backend.tokenizer([r["question"] for r in manifest["images"]]).numpy()
    np.testing.assert_array_equal(tokens, np.load(golden_dir / "expected/tokens.npy"))
