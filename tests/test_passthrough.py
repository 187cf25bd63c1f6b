"""``on_error="passthrough"``: every declared column on every path, and results that read back row by row.

Two defects of the outside trial (issue 10, section 3): a batch whose rows are all
bad lost the backend's extra column (llava's answer) and the write failed; a row
whose image bytes cannot be decoded made ``out[i]``, ``list(out)``, ``out.filter``
and the publishing preview raise inside ``datasets``.
"""

import io

import numpy as np
import pytest
from datasets import Dataset, Features, Image as ImageFeature, Value
from PIL import Image

from hf_api_prompt import ImagePrompter
from hf_api_prompt.publishing import custom_benchmark, publish_variant
from hf_api_prompt.publishing.build import build_variant, rows_to_mask
from hf_api_prompt.publishing.sources import in_memory_source


Q = "what is this?"
JUNK = {"bytes": b"these bytes are not an image", "path": None}


def png(seed: int, size=(30, 20)) -> dict:
    rng = np.random.RandomState(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3)).astype(np.uint8)).save(buffer, "PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def decoded(value: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(value["bytes"])).convert("RGB"))


def dataset(images, questions) -> Dataset:
    return Dataset.from_dict(
        {"id": list(range(len(images))), "image": images, "question": questions},
        features=Features({"id": Value("int64"), "image": ImageFeature(), "question": Value("string")}),
    )


@pytest.fixture(scope="module")
def llava(tiny_llava):
    return ImagePrompter("llava", model=tiny_llava, layer_index=1, max_new_tokens=4, on_error="passthrough")


@pytest.fixture(scope="module")
def clip(tiny_clip):
    return ImagePrompter("clip", model=tiny_clip, layer_index=1, on_error="passthrough")


# ----------------------------------------------------------- every declared column on every path
def test_output_features_declare_the_backend_answer_column(llava, clip):
    assert list(llava.output_features()) == ["masked_image", "heatmap", "api_answer", "api_status"]
    assert llava.output_features()["api_answer"] == Value("string")
    assert list(clip.output_features()) == ["masked_image", "heatmap", "api_status"]
    assert list(llava.features(Features({"image": ImageFeature()}))) == ["image", *llava.output_features()]


def test_llava_all_bad_batch_fills_every_declared_column(llava):
    images = [png(1), png(2), png(3), png(4)]
    questions = [Q, None, "", "   "]  # batches of 2: one good row, then a batch that is all bad
    out = llava.map(dataset(images, questions), batch_size=2)  # main: "Schema and number of arrays unequal"
    assert out.column_names == ["id", "image", "question", "masked_image", "heatmap", "api_answer", "api_status"]
    assert out.features["api_answer"] == Value("string")
    status = out["api_status"]
    assert status[0] == "ok" and "question is missing" in status[1]
    assert "question is empty" in status[2] and "question is empty" in status[3]
    assert out["api_answer"][1:] == [None, None, None] and isinstance(out["api_answer"][0], str)
    assert [h is None for h in out["heatmap"]] == [False, True, True, True]
    for i in (1, 2, 3):  # decodable images with a bad question pass through unmasked
        np.testing.assert_array_equal(np.asarray(out[i]["masked_image"]), decoded(images[i]))
    # The good row's answer is the one it gets alone.
    alone = llava.map(dataset([images[0]], [Q]), batch_size=1)
    assert out["api_answer"][0] == alone["api_answer"][0]
    # An all-bad first batch too.
    out = llava.map(dataset(images[1:], questions[1:]), batch_size=3)
    assert out["api_answer"][:] == [None, None, None] and out.features["api_answer"] == Value("string")


def test_llava_direct_all_bad_batch(llava):
    out = llava({"image": [None, JUNK], "question": [Q, Q]})
    assert set(llava.output_features()) <= set(out)
    assert out["api_answer"] == [None, None] and out["heatmap"] == [None, None]
    assert "missing" in out["api_status"][0] and "could not be decoded" in out["api_status"][1]


# ----------------------------------------------------------- undecodable images read back row by row
@pytest.fixture(scope="module")
def with_junk(clip):
    images = [png(10), JUNK, png(11), None, png(12, (20, 30))]
    return images, clip.map(dataset(images, [Q] * 5), batch_size=2)


def test_undecodable_row_reads_back(with_junk):
    images, out = with_junk
    row = out[1]  # raised OSError inside datasets before the fix
    assert row["image"] is None and row["masked_image"] is None and row["heatmap"] is None
    assert "could not be decoded" in row["api_status"]
    rows = list(out)
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[3]["image"] is None and "missing" in rows[3]["api_status"]
    for i in (0, 2, 4):  # good rows keep their original image, exactly
        assert rows[i]["api_status"] == "ok"
        np.testing.assert_array_equal(np.asarray(rows[i]["image"]), decoded(images[i]))
        assert rows[i]["masked_image"].size == rows[i]["image"].size
    kept = out.filter(lambda r: r["api_status"] == "ok")
    assert kept["id"] == [0, 2, 4]
    assert out.filter(lambda r: r["image"] is None)["id"] == [1, 3]


def test_undecodable_row_through_a_plain_map(clip):
    source = dataset([png(20), JUNK], [Q, Q]).cast_column("image", ImageFeature(decode=False))
    out = source.map(clip, batched=True, features=clip.features(source.features)).cast_column("image", ImageFeature())
    assert [r["image"] is None for r in out] == [False, True]
    assert "could not be decoded" in out[1]["api_status"]


def test_publish_with_an_undecodable_row_among_the_preview_rows(clip, tmp_path):
    images = [png(30), JUNK, png(31), png(32)]
    source_rows = dataset(images, [Q] * 4)
    benchmark = custom_benchmark("in-memory", "test")
    source = in_memory_source(source_rows, benchmark)
    mapped = clip.map(rows_to_mask(clip, source), batch_size=2)
    built = build_variant(clip, source, benchmark, mapped, preview_rows=4)
    assert built.preview is not None and built.preview.mode == "RGB"
    published = built.dataset
    assert [r["image"] is None for r in published] == [False, True, False, False]  # the masked image, renamed
    assert "could not be decoded" in published[1]["api_status"]

    result = publish_variant(clip, benchmark, output_dir=tmp_path / "out", dataset=source_rows, preview_rows=4)
    assert result["num_rows"] == 4
    assert (tmp_path / "out" / "previews" / f"{result['config_name']}.png").is_file()
