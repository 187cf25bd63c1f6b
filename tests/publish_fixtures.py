"""Test data and checks shared by the publishing tests (offline and Hub)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

#: MM-Vet's columns in lmms-lab's copy (the task reads ``image`` and ``question``).
MMVET_COLUMNS = ["question_id", "image", "question", "answer", "image_source", "capability"]
#: Config fields that are not part of a variant's identity (docs/method.md: where it ran, the version, the column names).
NOT_IDENTITY = {"device", "library_version", "image_column", "question_column", "masked_image_column", "heatmap_column",
                "status_column", "answer_column"}
#: Fields added after the first release, with the value every earlier version had: left out of the identity there.
EARLIER_VALUES = {"prompt": "mask", "image_format": "png", "jpeg_quality": None, "relative_attention": None,
                  "blur_radius": None, "crop_mass": None, "crop_padding": None, "crop_min_size": None}


def independent_hash(config, **portable) -> str:
    """The 8-hex hash of a variant name, computed here from the documented scheme.

    sha256 of the sorted, compact JSON of the identity fields: every field but :data:`NOT_IDENTITY`, and those of
    :data:`EARLIER_VALUES` at their earlier value left out (so the names published before they existed stay).

    Args:
        portable: the fields as the checkout-independent config holds them (local weights by their name).
    """
    fields = {k: v for k, v in {**config.to_dict(), **portable}.items()
              if k not in NOT_IDENTITY and not (k in EARLIER_VALUES and v == EARLIER_VALUES[k])}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]


def make_mmvet_like(num_rows: int = 4, seed: int = 0):
    """A small MM-Vet-shaped split: random images of different sizes and modes, questions, answers."""
    from datasets import Dataset, Features, Image as ImageFeature, List, Value

    rng = np.random.RandomState(seed)
    sizes = [(48, 32), (40, 64), (64, 64), (30, 45), (72, 40), (50, 50)]
    images = []
    for i in range(num_rows):
        width, height = sizes[i % len(sizes)]
        images.append(Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8), "RGB"))
    features = Features({
        "question_id": Value("string"), "image": ImageFeature(), "question": Value("string"),
        "answer": Value("string"), "image_source": Value("string"), "capability": List(Value("string")),
    })
    return Dataset.from_dict(
        {
            "question_id": [f"v1_{i}" for i in range(num_rows)],
            "image": images,
            "question": [f"What is in region {i} of the picture?" for i in range(num_rows)],
            "answer": [f"answer {i}" for i in range(num_rows)],
            "image_source": ["synthetic"] * num_rows,
            "capability": [["rec", "ocr"][: 1 + i % 2] for i in range(num_rows)],
        },
        features=features,
    )


def save_mmvet_like(directory: Path, num_rows: int = 4, seed: int = 0) -> str:
    """``save_to_disk`` a split made by :func:`make_mmvet_like`; returns the folder."""
    make_mmvet_like(num_rows, seed).save_to_disk(str(directory))
    return str(directory)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_published_variant(published, source, expected, grayscale: int):
    """``published`` keeps the benchmark's schema and holds exactly the masks of ``expected``.

    Args:
        published: the split read back (``load_dataset`` of the variant).
        source: the source split.
        expected: ``ImagePrompter.map(source)`` with the variant's parameters (``masked_image`` column).
        grayscale: the variant's blend value: every masked pixel lies between it and the original.
    """
    assert published.column_names == MMVET_COLUMNS + ["heatmap"]
    assert len(published) == len(source)
    for column in ("question_id", "question", "answer", "image_source", "capability"):
        assert published[column] == source[column], column
    for row, (got, original, want) in enumerate(zip(published["image"], source["image"], expected["masked_image"])):
        assert got.size == original.size, row
        assert np.array_equal(pixels(got), pixels(want)), f"row {row}: published image is not the masked image"
        low = np.minimum(pixels(original), grayscale) - 1
        high = np.maximum(pixels(original), grayscale) + 1
        assert ((pixels(got) >= low) & (pixels(got) <= high)).all(), f"row {row}: not a blend towards {grayscale}"
        assert not np.array_equal(pixels(got), pixels(original)), f"row {row}: image was not masked"
    for got, want in zip(published["heatmap"], expected["heatmap"]):
        got, want = np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert got.min() >= 0 and got.max() <= 1


def tiny_built_variant(config, num_rows: int = 2, grid=(2, 2), preview: bool = True):
    """A cheap ``BuiltVariant`` for ``config`` (named by ``variant_name``): no model runs.

    The rows carry ``config.grayscale`` as their image value, so which variant a file holds can be read back.
    """
    import datetime

    from datasets import Array2D, Dataset, Features, Image as ImageFeature, Value

    from hf_api_prompt import __version__
    from hf_api_prompt.publishing.build import BuiltVariant
    from hf_api_prompt.publishing.variants import PREVIEW_DIR, VariantRecord, variant_name

    name = variant_name(config)
    gray = np.full((4, 4, 3), config.grayscale, dtype=np.uint8)
    features = Features({"question_id": Value("string"), "image": ImageFeature(), "question": Value("string"),
                         "heatmap": Array2D(grid, "float32")})
    dataset = Dataset.from_dict(
        {"question_id": [f"q{i}" for i in range(num_rows)], "image": [Image.fromarray(gray)] * num_rows,
         "question": ["where?"] * num_rows, "heatmap": [np.full(grid, 0.5, dtype=np.float32)] * num_rows},
        features=features,
    )
    record = VariantRecord(
        config_name=name, split="test", num_rows=num_rows,
        created=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).isoformat(), library_version=__version__,
        prompter=config.to_dict(),
        source={"dataset": "in-memory", "revision": "sha256:0", "from_hub": False, "split": "test", "rows": "all",
                "benchmark": "custom", "license": "other", "image_column": "image", "question_column": "question"},
        columns={"image": "image", "heatmap": "heatmap", "original_image": None, "status": None},
        preview=f"{PREVIEW_DIR}/{name}.png" if preview else None,
    )
    return BuiltVariant(dataset=dataset, record=record, preview=Image.fromarray(gray) if preview else None)
