"""``prompter.map`` on an ``IterableDataset`` (streaming): typed, lazy, and the same rows as without streaming.

The outside trial (issue 10, section 3) found ``prompter.map`` failing on a streaming
dataset (``IterableDataset.map`` has no ``desc``).
"""

import io

import numpy as np
import pytest
from datasets import Array2D, Dataset, Features, Image as ImageFeature, IterableDataset, Value
from PIL import Image

from hf_api_prompt import ImagePrompter, RowError

QUESTIONS = ["where is the red car?", "what is on the left?", "", "is there a dog?", "what color is it?"]


def png(seed: int, size) -> dict:
    rng = np.random.RandomState(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3)).astype(np.uint8)).save(buffer, "PNG")
    return {"bytes": buffer.getvalue(), "path": None}


@pytest.fixture(scope="module")
def rows() -> Dataset:
    images = [png(k, (24 + 6 * k, 40 - 4 * k)) for k in range(5)]
    images[3] = {"bytes": b"not an image", "path": None}
    return Dataset.from_dict(
        {"id": list(range(5)), "image": images, "question": QUESTIONS},
        features=Features({"id": Value("int64"), "image": ImageFeature(), "question": Value("string")}),
    )


@pytest.fixture(scope="module")
def prompter(tiny_clip):
    return ImagePrompter("clip", model=tiny_clip, layer_index=1, on_error="passthrough")


def test_streaming_matches_the_dataset_result(prompter, rows):
    streamed = prompter.map(rows.to_iterable_dataset(), batch_size=2)  # main: TypeError (desc)
    assert isinstance(streamed, IterableDataset)
    assert streamed.features == prompter.features(rows.features)
    assert streamed.features["heatmap"] == Array2D((8, 8), "float32")
    assert streamed.features["image"] == ImageFeature()
    got = list(streamed)
    want = list(prompter.map(rows, batch_size=2))
    assert len(got) == len(want) == 5
    for g, w in zip(got, want):
        assert list(g) == list(w)
        assert g["id"] == w["id"] and g["question"] == w["question"] and g["api_status"] == w["api_status"]
        if w["heatmap"] is None:
            assert g["heatmap"] is None
        else:
            np.testing.assert_allclose(np.asarray(g["heatmap"]), np.asarray(w["heatmap"]), rtol=0, atol=1e-6)
        for column in ("image", "masked_image"):
            if w[column] is None:
                assert g[column] is None, (w["id"], column)
                continue
            assert isinstance(g[column], Image.Image) and g[column].size == w[column].size
            difference = np.abs(np.asarray(g[column], np.int16) - np.asarray(w[column], np.int16))
            assert difference.max() <= 1, (w["id"], column)  # one level where a blend sits on a k/255 boundary
    # What the rows say: an empty question passes through unmasked, undecodable bytes become None.
    assert [r["api_status"] == "ok" for r in got] == [True, True, False, False, True]
    assert "empty" in got[2]["api_status"] and "could not be decoded" in got[3]["api_status"]
    assert got[3]["image"] is None and got[3]["masked_image"] is None
    np.testing.assert_array_equal(np.asarray(got[2]["masked_image"]), np.asarray(got[2]["image"]))


def test_streaming_is_lazy_and_row_errors_name_the_row(tiny_clip, rows):
    strict = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    streamed = strict.map(rows.to_iterable_dataset(), batch_size=2)  # nothing is computed yet
    with pytest.raises(RowError, match=r"^row 2: question is empty"):
        list(streamed)


def test_streaming_checks_columns_first(tiny_clip, rows):
    with pytest.raises(KeyError, match="question_column='query'"):
        ImagePrompter("clip", model=tiny_clip, layer_index=1, question_column="query").map(rows.to_iterable_dataset())
    clash = rows.rename_column("id", "heatmap").to_iterable_dataset()
    with pytest.raises(ValueError, match="already has a column 'heatmap'"):
        ImagePrompter("clip", model=tiny_clip, layer_index=1).map(clash)


def test_streaming_without_known_features_says_what_to_do(prompter):
    untyped = IterableDataset.from_generator(lambda: iter([{"image": None, "question": "x"}]))
    assert untyped.features is None  # a generator's features are not known before it runs
    with pytest.raises(ValueError, match="unknown features"):
        prompter.map(untyped)
