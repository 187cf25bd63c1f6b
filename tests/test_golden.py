"""The clip backend reproduces the authors' own outputs (tests/fixtures/golden/clip_public)."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_api_prompt import ImagePrompter

from conftest import GOLDEN_MODEL


def golden_runs(manifest):
    """The (layer, parameter set) pairs of the golden cases: every layer with every parameter set."""
    return [(layer, p) for layer in manifest["layer_indices"] for p in manifest["parameter_sets"]]


def golden_prompter_params(layer, p) -> dict:
    """The ``ImagePrompter("clip", ...)`` parameters of the golden run ``(layer, p)``."""
    return dict(
        model=GOLDEN_MODEL,
        layer_index=layer,
        enhance_coe=p["enhance_coe"],
        kernel_size=p["kernel_size"],
        interpolation=p["interpolation"].lower(),
        grayscale=p["grayscale"],
        geometry="paper",
    )


class GoldenComparison:
    """Outputs against the authors' expected files, with the fixtures' suggested tolerances.

    :meth:`check` each run's output (columns ``id``, ``heatmap``, ``masked_image``),
    then :meth:`finish`, which asserts the totals over all runs.
    """

    def __init__(self, golden_dir, manifest):
        self.golden_dir = golden_dir
        self.cases = {c["id"]: c for c in manifest["cases"]}
        self.merged_err, self.u8_bad, self.blended_total, self.blended_equal, self.blended_max = 0.0, 0, 0, 0, 0

    def check(self, layer, p, out):
        golden_dir = self.golden_dir
        assert out.features["heatmap"].shape == (7, 7)
        for row in out:
            key = f"{row['id']}_L{layer}_coe{p['enhance_coe']}_k{p['kernel_size']}_{p['interpolation']}_gray{p['grayscale']}"
            expected = self.cases[key]["expected"]
            heatmap = np.asarray(row["heatmap"], dtype=np.float32)
            want = np.load(golden_dir / expected["merged_mask"])
            self.merged_err = max(self.merged_err, float(np.abs(heatmap - want).max()))
            want_u8 = np.load(golden_dir / expected["mask_u8"]).astype(int)
            got_u8 = np.floor(heatmap * np.float32(255)).astype(int)
            off = got_u8 != want_u8
            # Only saturated cells near an integer boundary may flip, by one.
            assert np.all(np.abs(got_u8 - want_u8)[off] == 1), key
            assert np.all(np.abs(want[off] * 255 - np.round(want[off] * 255)) < 1e-4), key
            self.u8_bad += int(off.sum())
            got = np.asarray(row["masked_image"].convert("RGB")).astype(int)
            ref = np.asarray(Image.open(golden_dir / expected["blended"]).convert("RGB")).astype(int)
            assert got.shape == ref.shape, key
            diff = np.abs(got - ref)
            self.blended_max = max(self.blended_max, int(diff.max()))
            self.blended_total += diff.size
            self.blended_equal += int((diff == 0).sum())

    def finish(self):
        print(f"merged max abs err {self.merged_err:.3g}; u8 cells off by one {self.u8_bad}; "
              f"blended equal {self.blended_equal}/{self.blended_total}, max diff {self.blended_max}")
        assert self.blended_total > 0, "no output was compared"
        assert self.merged_err <= 2e-5
        assert self.blended_max <= 2
        assert self.blended_equal / self.blended_total >= 0.99


@pytest.mark.slow
def test_golden_cases(golden_dir, golden_manifest, golden_dataset):
    comparison = GoldenComparison(golden_dir, golden_manifest)
    for layer, p in golden_runs(golden_manifest):
        prompter = ImagePrompter("clip", **golden_prompter_params(layer, p))
        out = golden_dataset.map(prompter, batched=True, batch_size=4, features=prompter.features(golden_dataset.features))
        comparison.check(layer, p, out)
    comparison.finish()


def test_raw_maps_match_after_minmax(golden_dir, golden_manifest):
    """The maps before merging agree with the authors' raw maps up to their affine freedom."""
    images = [Image.open(golden_dir / r["file"]).convert("RGB") for r in golden_manifest["images"]]
    questions = [r["question"] for r in golden_manifest["images"]]
    for layer in golden_manifest["layer_indices"]:
        backend = ImagePrompter("clip", model=GOLDEN_MODEL, layer_index=layer).backend()
        with torch.inference_mode():
            maps = backend.raw_maps(backend.pixels(images), backend.encode_questions(questions), [layer])[layer]
        attention, tokens = maps["attention"], maps["tokens"]
        for i, r in enumerate(golden_manifest["images"]):
            for got, name in ((attention[i], "attention_map"), (tokens[i], "token_map")):
                want = np.load(golden_dir / f"expected/raw/{r['id']}_L{layer}_{name}.npy")
                norm = lambda a: (a - a.min()) / (a.max() - a.min())  # noqa: E731
                assert np.abs(norm(got.numpy()) - norm(want)).max() < 1e-5, (r["id"], layer, name)


def test_preprocessing_and_tokens_match(golden_dir, golden_manifest):
    prompter = ImagePrompter("clip", model=GOLDEN_MODEL, layer_index=2)
    backend = prompter.backend()
    for image_id, path in golden_manifest["extra_expected"]["preprocessed"].items():
        image = Image.open(golden_dir / f"images/{image_id}.png").convert("RGB")
        np.testing.assert_allclose(backend.pixels([image])[0].numpy(), np.load(golden_dir / path), atol=1e-6)
    tokens = backend.tokenizer([r["question"] for r in golden_manifest["images"]]).numpy()
    np.testing.assert_array_equal(tokens, np.load(golden_dir / "expected/tokens.npy"))
