"""How the masked images are stored (``image_format``, hf_api_prompt/encoding.py) and the image pool (hf_api_prompt/parallel.py).

The bundled demo CLIP at layer 2 on three small photo-like images (smooth
gradients, a square of solid colour, light noise): one JPEG source, one PNG
source and one image made in memory.
"""

import io
import os
import threading
import time

import numpy as np
import pytest
from datasets import Dataset, Features, Image as ImageFeature, Value
from PIL import Image

from hf_api_prompt import ImagePrompter, PrompterConfig, parallel
from hf_api_prompt.bundled import DEMO_MODEL
from hf_api_prompt.inputs import open_image
from hf_api_prompt.stages import MapsPrompter, masked_image_from_row, remask

from compare import stored_image

LAYER = 2
QUESTIONS = ["where is the square?", "what colour is the square?", "is there a square?"]
SOURCES = ("jpeg source", "png source", "in memory")
#: The PIL format each ``image_format`` stores each source in (the encoding module's rule).
STORED = {"png": ("PNG", "PNG", "PNG"), "jpeg": ("JPEG", "JPEG", "JPEG"), "source": ("JPEG", "PNG", "PNG")}
#: Mean absolute difference (8-bit levels, over all pixels and channels) between a JPEG q75 of a masked
#: image and the image itself. JPEG quantizes each 8 x 8 block's DCT coefficients (and halves the chroma
#: resolution, 4:2:0), so its error is small on smooth areas and large only at sharp colour edges (single
#: values up to ~80 at the square's border here). Measured on these images: 1.4, 2.2 and 2.8. 4 leaves
#: room and stays far below what the masking itself changes (a mean of 70 to 99 levels from the source
#: here, see test_jpeg_output_is_a_jpeg_of_the_png_output).
JPEG_Q75_MEAN_ABS = 4.0


def photo(size, seed) -> Image.Image:
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([40 + 160 * x / w, 60 + 120 * y / h, 200 - 100 * (x + y) / (w + h)], axis=-1)
    left, top = rng.integers(0, w // 2), rng.integers(0, h // 2)
    pixels[top:top + h // 3, left:left + w // 3] = rng.integers(0, 256, 3)
    return Image.fromarray(np.clip(pixels + rng.normal(0, 3, pixels.shape), 0, 255).astype(np.uint8))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


JPEG_SOURCE = {"bytes": encoded(photo((60, 40), 0), "JPEG", quality=90), "path": None}
PNG_SOURCE = {"bytes": encoded(photo((48, 64), 1), "PNG"), "path": None}


@pytest.fixture(scope="module")
def sources():
    return [JPEG_SOURCE, PNG_SOURCE, photo((56, 56), 2)]


@pytest.fixture(scope="module")
def make():
    """``make(**params)``: the demo prompter with these parameters, one per distinct set (its model loaded once)."""
    made = {}

    def prompter(**params) -> ImagePrompter:
        key = tuple(sorted(params.items()))
        if key not in made:
            made[key] = ImagePrompter("clip", model=DEMO_MODEL, layer_index=LAYER, **params)
        return made[key]

    return prompter


@pytest.fixture(scope="module")
def run(make, sources):
    """``run(**params)``: the direct call's output on the three sources, computed once per parameter set."""
    outputs = {}

    def output(**params) -> dict:
        key = tuple(sorted(params.items()))
        if key not in outputs:
            outputs[key] = make(**params)({"image": sources, "question": QUESTIONS})
        return outputs[key]

    return output


# ------------------------------------------------------------------------------------ formats
@pytest.mark.parametrize("image_format", list(STORED))
def test_each_format_stores_the_stated_kind_per_source(run, image_format):
    values = run(image_format=image_format)["masked_image"]
    assert all(set(value) == {"bytes", "path"} and value["path"] is None for value in values)
    formats = tuple(stored_image(value).format for value in values)
    assert formats == STORED[image_format], dict(zip(SOURCES, formats))


def test_png_output_is_exactly_the_prompted_image(run, make, sources):
    out = run(image_format="png")
    batch = make(image_format="png").prompt([open_image(source) for source in sources], QUESTIONS)
    for slot, what in enumerate(SOURCES):
        stored = stored_image(out["masked_image"][slot])
        assert stored.mode == "RGB", what
        np.testing.assert_array_equal(np.asarray(stored), np.asarray(batch.prompted[slot].image), err_msg=what)
        np.testing.assert_array_equal(out["heatmap"][slot], batch.grid_masks[slot], err_msg=what)


def test_jpeg_output_is_a_jpeg_of_the_png_output(run, sources):
    lossless = [stored_image(value) for value in run(image_format="png")["masked_image"]]
    q75 = [stored_image(value) for value in run(image_format="jpeg")["masked_image"]]
    for what, source, png, jpeg in zip(SOURCES, sources, lossless, q75):
        # Exactly what Pillow stores for these pixels at quality 75 (its defaults otherwise) ...
        np.testing.assert_array_equal(pixels(jpeg), pixels(Image.open(io.BytesIO(encoded(png, "JPEG", quality=75)))),
                                      err_msg=what)
        # ... so within a JPEG's error of the lossless image, which is far from the unmasked source.
        error = np.abs(pixels(jpeg) - pixels(png)).mean()
        assert 0 < error <= JPEG_Q75_MEAN_ABS, f"{what}: mean |jpeg - png| = {error:.2f}"
        assert np.abs(pixels(png) - pixels(open_image(source))).mean() > 10 * JPEG_Q75_MEAN_ABS, what


def test_jpeg_quality_is_applied(run):
    lossless = run(image_format="png")["masked_image"]
    at = {75: run(image_format="jpeg")["masked_image"], 95: run(image_format="jpeg", jpeg_quality=95)["masked_image"]}
    for slot, what in enumerate(SOURCES):
        assert at[75][slot]["bytes"] != at[95][slot]["bytes"], what
        errors = {q: np.abs(pixels(stored_image(v[slot])) - pixels(stored_image(lossless[slot]))).mean() for q, v in at.items()}
        assert errors[95] < errors[75], f"{what}: {errors}"


@pytest.mark.parametrize("memfd", ["refused", "missing"])
def test_jpeg_without_an_in_memory_file_is_the_same_bytes(memfd, monkeypatch):
    """Where the OS has no memfd (or a sandbox refuses it) the JPEG goes through a BytesIO: the same bytes."""
    from hf_api_prompt import encoding

    image = photo((64, 48), 5)
    config = PrompterConfig(backend="clip", model="m", pretrained=None, layer_index=0, image_format="jpeg")
    through_file = encoding.encode(image, config, None)["bytes"]

    def refuse(*args):
        raise PermissionError("memfd_create: operation not permitted")

    if memfd == "refused":
        monkeypatch.setattr(encoding.os, "memfd_create", refuse)
    else:
        monkeypatch.delattr(encoding.os, "memfd_create")
    assert encoding.encode(image, config, None)["bytes"] == through_file == encoded(image, "JPEG", quality=75)


def test_passthrough_rows_are_stored_in_the_format_too(make):
    prompter = make(image_format="source", on_error="passthrough")
    junk = {"bytes": b"not an image", "path": None}
    out = prompter({"image": [JPEG_SOURCE, JPEG_SOURCE, PNG_SOURCE, junk, None],
                    "question": [QUESTIONS[0], None, "  ", QUESTIONS[0], QUESTIONS[0]]})
    assert out["api_status"][0] == "ok" and all(status != "ok" for status in out["api_status"][1:])
    stored = [stored_image(value) for value in out["masked_image"]]
    # A bad question: the unmasked image, stored as its source says (JPEG q75 of the decoded JPEG; the PNG exactly).
    jpeg_of_source = Image.open(io.BytesIO(encoded(open_image(JPEG_SOURCE), "JPEG", quality=75)))
    assert stored[1].format == "JPEG" and stored[2].format == "PNG"
    np.testing.assert_array_equal(pixels(stored[1]), pixels(jpeg_of_source))
    np.testing.assert_array_equal(pixels(stored[2]), pixels(open_image(PNG_SOURCE)))
    # No image to store: undecodable or missing.
    assert stored[3] is None and stored[4] is None
    assert out["heatmap"][1:] == [None] * 4


def test_an_all_bad_batch_fills_the_column(make):
    prompter = make(image_format="jpeg", on_error="passthrough")
    out = prompter({"image": [PNG_SOURCE, JPEG_SOURCE], "question": [None, ""]})
    assert out["heatmap"] == [None, None]
    for value, source in zip(out["masked_image"], (PNG_SOURCE, JPEG_SOURCE)):
        want = Image.open(io.BytesIO(encoded(open_image(source), "JPEG", quality=75)))
        np.testing.assert_array_equal(pixels(stored_image(value)), pixels(want))


# ------------------------------------------------------------------------------------ threads
def test_one_or_two_threads_give_the_same_outputs(sources, monkeypatch):
    from hf_api_prompt import encoding

    names = []
    original = encoding.encode

    def recording(*args, **kwargs):
        names.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(encoding, "encode", recording)
    batch = {"image": sources * 2, "question": QUESTIONS * 2}
    outs = {n: ImagePrompter("clip", model=DEMO_MODEL, layer_index=LAYER, num_threads=n)(batch) for n in (1, 2)}
    assert any(name.startswith("hf_api_prompt") for name in names)  # two threads did use the pool
    for slot in range(len(batch["image"])):
        np.testing.assert_array_equal(outs[1]["heatmap"][slot], outs[2]["heatmap"][slot])
        np.testing.assert_array_equal(pixels(stored_image(outs[1]["masked_image"][slot])),
                                      pixels(stored_image(outs[2]["masked_image"][slot])))


@pytest.fixture
def clean_env(monkeypatch):
    """No thread or process counts from the environment; ``available_cores`` is set by the test."""
    for name in (parallel.THREADS_ENV, parallel.WORKERS_ENV, "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("env,threads", [
    ({}, 8),
    ({"HF_API_PROMPT_WORKERS": "2"}, 4),
    ({"LOCAL_WORLD_SIZE": "4"}, 2),
    ({"HF_API_PROMPT_WORKERS": "2", "LOCAL_WORLD_SIZE": "2"}, 2),
    ({"HF_API_PROMPT_WORKERS": "3"}, 2),            # 8 // 3
    ({"HF_API_PROMPT_WORKERS": "16"}, 1),           # never below one
    ({"HF_API_PROMPT_THREADS": "3", "HF_API_PROMPT_WORKERS": "4"}, 3),  # a given count wins
])
def test_default_threads_share_the_cores(clean_env, env, threads):
    clean_env.setattr(parallel, "available_cores", lambda: 8)
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert parallel.default_threads() == threads


def test_workers_sets_and_restores_the_environment(clean_env):
    with parallel.workers(3):
        assert os.environ[parallel.WORKERS_ENV] == "3"
    assert parallel.WORKERS_ENV not in os.environ
    clean_env.setenv(parallel.WORKERS_ENV, "5")
    with pytest.raises(KeyError):
        with parallel.workers(2):
            assert os.environ[parallel.WORKERS_ENV] == "2"
            raise KeyError("boom")
    assert os.environ[parallel.WORKERS_ENV] == "5"  # restored after an error too
    for count in (None, 0, 1):  # one process: nothing to share
        with parallel.workers(count):
            assert os.environ[parallel.WORKERS_ENV] == "5"


def test_thread_map_keeps_order_and_raises_the_first_error_in_order():
    def slow_first(x):  # the first items finish last
        time.sleep(0.02 * (5 - x))
        return x * 10

    assert parallel.thread_map(slow_first, list(range(5)), threads=3) == [0, 10, 20, 30, 40]

    done = []

    def failing(x):
        time.sleep(0.05 if x == 1 else 0)  # item 3 fails first in time, item 1 first in order
        done.append(x)
        if x in (1, 3):
            raise ValueError(f"item {x}")
        return x

    with pytest.raises(ValueError, match="^item 1$"):
        parallel.thread_map(failing, list(range(5)), threads=3)
    assert sorted(done) == [0, 1, 2, 3, 4]  # every item ran before the error was raised


def record_threads(batch):
    """A ``Dataset.map`` function: the pool size each worker would use, and the worker."""
    rows = len(batch["i"])
    return {"threads": [parallel.default_threads()] * rows, "pid": [os.getpid()] * rows}


def test_num_proc_workers_share_the_cores(clean_env):
    # datasets forks its workers (Linux), so they inherit the patched affinity and the environment.
    clean_env.setattr(parallel, "available_cores", lambda: 8)
    ds = Dataset.from_dict({"i": list(range(8))})
    assert parallel.default_threads() == 8
    with parallel.workers(2):
        out = ds.map(record_threads, batched=True, batch_size=2, num_proc=2, load_from_cache_file=False)
    assert parallel.default_threads() == 8
    assert set(out["threads"]) == {4}
    assert len(set(out["pid"])) == 2 and os.getpid() not in out["pid"]
    # Forked by a direct ds.map(num_proc=...), where the share is unknown: one thread each, as torch gets.
    out = ds.map(record_threads, batched=True, batch_size=2, num_proc=2, load_from_cache_file=False)
    assert set(out["threads"]) == {1} and os.getpid() not in out["pid"]


# ------------------------------------------------------------------------------------ remasking
#: The dataset's sources: JPEG, PNG, JPEG (indices into SOURCES and STORED's tuples).
DATASET_SOURCES = (0, 1, 0)


@pytest.fixture(scope="module")
def source_dataset():
    images = [JPEG_SOURCE, PNG_SOURCE, {"bytes": encoded(photo((40, 70), 3), "JPEG", quality=85), "path": None}]
    features = Features({"image": ImageFeature(), "question": Value("string")})
    return Dataset.from_dict({"image": images, "question": QUESTIONS}, features=features)


@pytest.fixture(scope="module")
def maps(make, source_dataset):
    """The maps of layer 2 and the run that made them; one batch of all rows, as the direct runs below."""
    maps_prompter = MapsPrompter(make().config, [LAYER])
    return maps_prompter, maps_prompter.map(source_dataset, batch_size=len(source_dataset))


@pytest.mark.parametrize("image_format", ["jpeg", "source", "png"])
def test_remask_stores_what_the_direct_run_stores(make, maps, source_dataset, image_format):
    # Same rows in one batch on both paths: the same float32 maps and recipe, so the same pixels exactly.
    maps_prompter, maps_dataset = maps
    variant = remask(maps_dataset, maps_prompter.prompter(image_format=image_format), batch_size=len(source_dataset))
    direct = make(image_format=image_format).map(source_dataset, batch_size=len(source_dataset))
    for row, (got, want) in enumerate(zip(variant, direct)):
        assert got["masked_image"].format == want["masked_image"].format == STORED[image_format][DATASET_SOURCES[row]]
        np.testing.assert_array_equal(pixels(got["masked_image"]), pixels(want["masked_image"]), err_msg=f"row {row}")
        np.testing.assert_array_equal(np.asarray(got["heatmap"]), np.asarray(want["heatmap"]), err_msg=f"row {row}")


@pytest.mark.parametrize("image_format", ["jpeg", "source"])
def test_masked_image_from_row_is_the_materialized_row(maps, source_dataset, image_format):
    """What lmms-eval's on-the-fly masking shows is what the materialized variant holds, JPEG losses included."""
    maps_prompter, maps_dataset = maps
    config = maps_prompter.prompter(image_format=image_format).config
    variant = remask(maps_dataset, maps_prompter.prompter(image_format=image_format))
    for row in (0, 2):  # the JPEG sources
        shown = masked_image_from_row(maps_dataset[row], config)
        stored = variant[row]["masked_image"]
        assert stored.format == "JPEG"
        np.testing.assert_array_equal(pixels(shown), pixels(stored), err_msg=f"row {row}")


def test_a_jpeg_that_datasets_turns_upright_keeps_its_format_through_the_maps(make):
    """datasets decodes a JPEG with an EXIF orientation into an upright copy that has no format any more;
    the maps record the source's format, so the on-the-fly masking of such a doc still shows the stored JPEG."""
    exif = Image.Exif()
    exif[Image.ExifTags.Base.Orientation] = 6  # display = stored turned 90 degrees clockwise
    rotated = {"bytes": encoded(photo((60, 40), 4), "JPEG", quality=90, exif=exif.tobytes()), "path": None}
    features = Features({"image": ImageFeature(), "question": Value("string")})
    source = Dataset.from_dict({"image": [rotated, JPEG_SOURCE], "question": QUESTIONS[:2]}, features=features)
    assert source[0]["image"].format is None and source[0]["image"].size == (40, 60)  # what a decoding reader gets
    maps_prompter = MapsPrompter(make().config, [LAYER])
    maps_dataset = maps_prompter.map(source, batch_size=2)
    assert maps_dataset["api_source_format"] == ["JPEG", "JPEG"]
    prompter = maps_prompter.prompter()  # image_format="source"
    variant = remask(maps_dataset, prompter, batch_size=2)
    for row in range(2):
        stored = variant[row]["masked_image"]
        assert stored.format == "JPEG"
        shown = masked_image_from_row(maps_dataset[row], prompter.config)  # the doc as lmms-eval decodes it
        np.testing.assert_array_equal(pixels(shown), pixels(stored), err_msg=f"row {row}")
