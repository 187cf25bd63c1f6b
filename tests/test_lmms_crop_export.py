"""The blur and crop styles published and evaluated: their variants, their card, and what lmms-eval shows the model.

A crop variant shows the model two images per doc, the original and then the crop
(ViCrop): a materialized variant keeps the original for that, a maps dataset's crop
recipe crops on the fly. Both go through lmms-eval's own task loader here; the
slow test runs lmms-eval's CLI on them.
"""

import json

import numpy as np
import pytest
from datasets import Dataset, load_dataset
from PIL import Image, ImageDraw

from hf_api_prompt import ImagePrompter, lmms_visual, prompts
from hf_api_prompt.bundled import DEMO_MODEL
from hf_api_prompt.publishing import get_benchmark, publish_sweep, publish_variant
from hf_api_prompt.publishing.variants import lmms_eval_task_name, variant_name

pytest.importorskip("lmms_eval", reason="lmms-eval is the 'eval' extra")

from hf_api_prompt.publishing.lmms_export import export_variants  # noqa: E402  (after the skip)

LAYER = 2
BLUR = {"prompt": "blur", "blur_radius": 0.1}
CROP = {"prompt": "crop", "crop_mass": 0.6, "crop_padding": 0.05, "crop_min_size": 0.3}


def mme_like() -> Dataset:
    """Two MME-shaped rows: a red square on gray (the bundled model finds it, so the crop is smaller than the image)."""
    images = []
    for x, y in ((4, 4), (30, 20)):
        image = Image.new("RGB", (64, 48), (128, 128, 128))
        ImageDraw.Draw(image).rectangle([x, y, x + 14, y + 14], fill=(220, 20, 20))
        images.append(image)
    return Dataset.from_dict({"question_id": ["a.png", "b.png"], "image": images,
                              "question": ["Where is the red square?", "Is there a red square?"],
                              "answer": ["Yes", "Yes"], "category": ["color", "color"]})


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A blur and a crop variant, and a maps dataset of the same layer, in local folders; the source."""
    root = tmp_path_factory.mktemp("styles")
    source = mme_like()
    benchmark = get_benchmark("mme")
    prompters = {name: ImagePrompter("clip", model=DEMO_MODEL, layer_index=LAYER, image_format="png", **params)
                 for name, params in (("blur", BLUR), ("crop", CROP))}
    names = {name: publish_variant(prompter, benchmark, dataset=source, output_dir=root / "variants")["config_name"]
             for name, prompter in prompters.items()}
    publish_sweep([prompters["crop"]], benchmark, dataset=source, output_dir=root / "maps", maps_only=True)
    return root, source, prompters, names


def test_the_variants_record_their_style_in_name_card_and_columns(published):
    root, source, prompters, names = published
    assert names["blur"] == variant_name(prompters["blur"].config) and "-blur-r0p1" in names["blur"]
    assert "-crop-m0p6-p0p05-s0p3" in names["crop"]
    index = json.loads((root / "variants" / "api_variants.json").read_text())["variants"]
    assert index[names["blur"]]["prompter"]["blur_radius"] == 0.1
    assert index[names["crop"]]["columns"]["original_image"] == "original_image"  # kept for lmms-eval
    card = (root / "variants" / "README.md").read_text()
    assert "prompt=blur, blur_radius=0.1" in card
    assert "prompt=crop, crop_mass=0.6, crop_padding=0.05, crop_min_size=0.3" in card

    direct = prompters["crop"].map(source)
    rows = load_dataset(str(root / "variants"), names["crop"], split="test")
    assert prompts.CROP_BOX_COLUMN in rows.column_names
    for row, want, original in zip(rows, direct, source):
        assert row[prompts.CROP_BOX_COLUMN] == want[prompts.CROP_BOX_COLUMN]
        np.testing.assert_array_equal(np.asarray(row["image"]), np.asarray(want["masked_image"]))  # the crop
        np.testing.assert_array_equal(np.asarray(row["original_image"]), np.asarray(original["image"]))


def test_lmms_eval_is_shown_the_original_and_the_crop(published, tmp_path):
    from lmms_eval.tasks import TaskManager, get_task_dict

    root, source, prompters, names = published
    exports = {
        "variant": export_variants(tmp_path / "variant", dataset_dir=root / "variants", config_names=[names["crop"]]),
        "maps": export_variants(tmp_path / "maps", dataset_dir=root / "maps",
                                params=[{"layer_index": LAYER, "image_format": "png", **CROP}]),
    }
    kinds = {"variant": lmms_visual.OriginalAndCropDocToVisual, "maps": lmms_visual.MaskedDocToVisual}
    direct = prompters["crop"].map(source)
    for folder, [(task, path)] in exports.items():
        assert task == lmms_eval_task_name("mme", names["crop"]), folder  # the maps' results line up with the variant's
        loaded = get_task_dict([task], TaskManager(include_path=str(tmp_path / folder)))[task]
        assert isinstance(loaded.config.doc_to_visual, kinds[folder])
        for doc, want, original in zip(loaded.test_docs(), direct, source):
            shown = loaded.doc_to_visual(doc)
            assert len(shown) == 2, folder
            np.testing.assert_array_equal(np.asarray(shown[0]), np.asarray(original["image"].convert("RGB")))
            np.testing.assert_array_equal(np.asarray(shown[1]), np.asarray(want["masked_image"].convert("RGB")))
            assert shown[1].size != shown[0].size  # the crop, not the image
    header = [line for line in exports["variant"][0][1].read_text().splitlines() if line.startswith("#")]
    assert any("two images per doc" in line and "original_image" in line for line in header), header


def test_a_blur_variant_is_exported_as_an_ordinary_task(published, tmp_path):
    from lmms_eval.tasks import TaskManager, get_task_dict

    root, source, prompters, names = published
    [(task, path)] = export_variants(tmp_path / "tasks", dataset_dir=root / "variants", config_names=[names["blur"]])
    assert sorted(p.name for p in (tmp_path / "tasks").iterdir()) == [path.name]  # no module: the images are stored
    loaded = get_task_dict([task], TaskManager(include_path=str(tmp_path / "tasks")))[task]
    for doc, want in zip(loaded.test_docs(), prompters["blur"].map(source)):
        [shown] = loaded.doc_to_visual(doc)
        np.testing.assert_array_equal(np.asarray(shown), np.asarray(want["masked_image"].convert("RGB")))


def test_the_command_line_sweeps_the_styles_from_one_maps_pass(tmp_path):
    """run --maps-only, then remask --prompt blur --blur-radius (two values) and --prompt crop, then export a crop recipe."""
    from hf_api_prompt.cli import main
    from hf_api_prompt.publishing.layout import read_index

    assert main(["run", "--output-dir", str(tmp_path / "maps"), "--layer-index", "1", "--maps-only", "--limit", "2"]) == 0
    assert main(["remask", "--maps", str(tmp_path / "maps"), "--output-dir", str(tmp_path / "variants"), "--prompt", "blur",
                 "--blur-radius", "0.02", "0.1", "--preview-rows", "0"]) == 0
    assert main(["remask", "--maps", str(tmp_path / "maps"), "--output-dir", str(tmp_path / "variants"), "--prompt", "crop",
                 "--crop-mass", "0.5", "--crop-min-size", "0.2", "--preview-rows", "0"]) == 0
    index = read_index(tmp_path / "variants")
    configs = sorted((index[name].config for name in index.names()), key=lambda c: (c.prompt, c.blur_radius or 0))
    assert [(c.prompt, c.blur_radius, c.crop_mass, c.crop_min_size) for c in configs] == [
        ("blur", 0.02, None, None), ("blur", 0.1, None, None), ("crop", None, 0.5, 0.2)]
    assert main(["export-lmms-eval", "--dataset-dir", str(tmp_path / "maps"), "--base-task", "mme", "--prompt", "crop",
                 "--crop-mass", "0.5", "--crop-min-size", "0.2", "--output-dir", str(tmp_path / "tasks")]) == 0
    crop_name = next(name for name in index.names() if "-crop-" in name)
    assert (tmp_path / "tasks" / f"{lmms_eval_task_name('mme', crop_name)}.py").is_file()  # named as the variant
