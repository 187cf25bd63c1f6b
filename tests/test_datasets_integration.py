"""ImagePrompter inside ``datasets``: pickling, fingerprints, the map cache, num_proc, output features."""

import contextlib
import os
import pickle
import signal
import threading

import numpy as np
import pytest
from datasets import Array2D, Dataset, Features, Image as ImageFeature, Value, load_from_disk
from datasets.fingerprint import Hasher
from PIL import Image

from hf_api_prompt import ImagePrompter
from hf_api_prompt.backends.clip import ClipBackend

from compare import assert_heatmaps_close, assert_image_lists_close, stored_image
from conftest import make_local_clip

# Non-square, all different: a transposed or flipped mask cannot go unnoticed.
ALL_SIZES = [(80, 48), (48, 72), (64, 64), (100, 30), (33, 77), (57, 41), (70, 50), (45, 90)]
ALL_QUESTIONS = ["What is on the left?", "Is there a dog?", "What is on the left?", "How many cars are there?",
                 "What colour is the sky?", "Is there a dog?", "Where is the cat?", "What is written here?"]
SIZES, QUESTIONS = ALL_SIZES[:6], ALL_QUESTIONS[:6]


def random_images(seed=0, rows=6):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB") for w, h in ALL_SIZES[:rows]]


def make_dataset(image_column="image", question_column="question", seed=0, rows=6) -> Dataset:
    data = {"id": list(range(rows)), image_column: random_images(seed, rows), question_column: ALL_QUESTIONS[:rows]}
    features = Features({"id": Value("int64"), image_column: ImageFeature(), question_column: Value("string")})
    return Dataset.from_dict(data, features=features)


@pytest.fixture(scope="module")
def images():
    return random_images()


@pytest.fixture
def loads(backend_loads):
    """The pid of each ClipBackend construction, in workers too."""
    return lambda: [pid for pid, _ in backend_loads()]


def heatmaps(dataset, column="heatmap") -> np.ndarray:
    return np.stack([np.asarray(h, dtype=np.float32) for h in dataset.with_format("numpy")[column]])


def image_bytes(dataset, column="masked_image"):
    """The stored PNG bytes: equal only for the same stored rows (a cache hit), never across processes."""
    return [value["bytes"] for value in dataset.cast_column(column, ImageFeature(decode=False))[column]]


def pixels(dataset, column="masked_image"):
    return [np.asarray(image) for image in dataset[column]]


def expected_masked(image: Image.Image, heatmap: np.ndarray, resample, grayscale=0) -> np.ndarray:
    """docs/method.md steps 7-8 from first principles: truncate to uint8, resize to (W, H), blend."""
    mask_u8 = (heatmap.astype(np.float32) * np.float32(255)).astype(np.uint8)  # to_pil_image's float32 rule
    weight = np.asarray(Image.fromarray(mask_u8, mode="L").resize(image.size, resample), dtype=np.float64)[..., None] / 255
    return np.floor(np.asarray(image.convert("RGB"), dtype=np.float64) * weight + (1 - weight) * grayscale)


def cache_arrows(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("cache-") and p.suffix == ".arrow")


def _children() -> set:
    """pids of this process's direct children (Linux /proc)."""
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me:
                found.add(int(entry))
    return found


@contextlib.contextmanager
def hang_guard(seconds=15):
    """Fail (instead of blocking the suite forever) when a ``num_proc`` map hangs.

    After ``seconds`` the processes that the guarded block started (the pool's
    workers and its manager) are killed, which makes ``datasets`` raise.
    """
    before = _children()
    fired = threading.Event()

    def kill_new_children():
        fired.set()
        for pid in _children() - before:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    timer = threading.Timer(seconds, kill_new_children)
    timer.daemon = True
    timer.start()
    try:
        yield
    except Exception as error:
        if fired.is_set():
            pytest.fail(f"num_proc map hung: no result after {seconds} s, workers killed ({type(error).__name__}: {error})")
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        pytest.fail(f"num_proc map hung: no result after {seconds} s, workers killed")


# --------------------------------------------------------------------------- (a) pickling and hashing


def test_pickle_holds_config_not_weights(tiny_clip):
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=2, enhance_coe=3.0)
    backend = prompter.backend()
    assert isinstance(backend, ClipBackend)
    weights_size = os.path.getsize(tiny_clip[len("local-dir:"):] + "/open_clip_model.safetensors")
    blob = pickle.dumps(prompter)
    # The tiny model's weights are megabytes; a pickle carrying them could not be this small.
    assert weights_size > 100_000
    assert len(blob) < 5_000
    clone = pickle.loads(blob)
    assert isinstance(clone, ImagePrompter)
    assert clone.config == prompter.config
    assert clone._backend is None
    assert prompter._backend is backend  # pickling does not unload the original
    # The clone loads its own model on first use and computes the same masks.
    batch = {"image": random_images()[:2], "question": QUESTIONS[:2]}
    np.testing.assert_array_equal(np.stack(clone(batch)["heatmap"]), np.stack(prompter(batch)["heatmap"]))


def test_dill_pickle_holds_no_weights(tiny_clip):
    from datasets.utils._dill import dumps

    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=2)
    prompter.backend()
    assert len(dumps(prompter)) < 5_000


def test_hash_equal_for_equal_prompters_and_after_loading(tiny_clip):
    a = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    b = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    assert a is not b
    before = Hasher.hash(a)
    assert Hasher.hash(b) == before
    a.backend()
    assert a._backend is not None
    assert Hasher.hash(a) == before
    assert Hasher.hash(pickle.loads(pickle.dumps(a))) == before


def test_hash_equal_for_equivalent_spellings(tiny_clip):
    a = ImagePrompter("clip", model=tiny_clip, layer_index=1, interpolation="lanczos", enhance_coe=5, dtype="fp32")
    b = ImagePrompter("clip", model=tiny_clip, layer_index=1, interpolation=Image.Resampling.LANCZOS,
                      enhance_coe=5.0, dtype="float32")
    assert Hasher.hash(a) == Hasher.hash(b)


@pytest.mark.parametrize(
    "change",
    [
        {"layer_index": 2},
        {"layer_index": 0},
        {"enhance_coe": 4.0},
        {"enhance_coe": 5.000001},
        {"kernel_size": 5},
        {"kernel_size": 1},
        {"interpolation": "bicubic"},
        {"grayscale": 128},
        {"grayscale": 1},
        {"geometry": "aligned"},
        {"masked_image_column": "api_image"},
        {"heatmap_column": "api_heatmap"},
        {"image_column": "img"},
        {"question_column": "prompt"},
        {"on_error": "passthrough"},
        {"dtype": "bf16"},
    ],
    ids=lambda change: next(iter(change)) + "=" + str(next(iter(change.values()))),
)
def test_hash_changes_with_each_parameter(tiny_clip, change):
    base = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    changed = ImagePrompter("clip", model=tiny_clip, **{"layer_index": 1, **change})
    assert Hasher.hash(changed) != Hasher.hash(base)


def test_hash_changes_with_weights(tmp_path, tiny_clip):
    other = make_local_clip(tmp_path / "seed1", seed=1)
    copy = make_local_clip(tmp_path / "seed0", seed=0)
    base = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    assert Hasher.hash(ImagePrompter("clip", model=other, layer_index=1)) != Hasher.hash(base)
    # Same weights elsewhere: the content hash agrees, though the path (part of the config) differs.
    assert ImagePrompter("clip", model=copy, layer_index=1).config.weights_sha256 == base.config.weights_sha256


# --------------------------------------------------------------------------- (b) the map cache


def test_map_cache_hit_does_not_load_model(tmp_path, tiny_clip, loads):
    make_dataset().save_to_disk(str(tmp_path / "ds"))
    ds = load_from_disk(str(tmp_path / "ds"))
    params = dict(model=tiny_clip, layer_index=1)

    first = ImagePrompter("clip", **params)
    out1 = ds.map(first, batched=True, batch_size=4, features=first.features(ds.features))
    assert len(loads()) == 1  # one process, two batches, one model
    files_after_first = cache_arrows(tmp_path / "ds")
    assert len(files_after_first) == 1
    assert [f["filename"] for f in out1.cache_files] == [str(tmp_path / "ds" / files_after_first[0])]

    # Same process, dataset loaded again, a new but equal prompter: served from the cache.
    ds_again = load_from_disk(str(tmp_path / "ds"))
    second = ImagePrompter("clip", **params)
    out2 = ds_again.map(second, batched=True, batch_size=4, features=second.features(ds_again.features))
    assert len(loads()) == 1, "an identical map rebuilt the model instead of reading the cache"
    assert second._backend is None
    assert cache_arrows(tmp_path / "ds") == files_after_first
    assert out2.cache_files == out1.cache_files
    np.testing.assert_array_equal(heatmaps(out2), heatmaps(out1))
    assert image_bytes(out2) == image_bytes(out1)

    # One parameter changed: recomputed (model built again), new cache file, other masks.
    third = ImagePrompter("clip", **params, enhance_coe=1.0)
    out3 = ds_again.map(third, batched=True, batch_size=4, features=third.features(ds_again.features))
    assert len(loads()) == 2
    assert len(cache_arrows(tmp_path / "ds")) == 2
    assert out3.cache_files != out1.cache_files
    assert not np.allclose(heatmaps(out3), heatmaps(out1))
    assert any(not np.array_equal(a, b) for a, b in zip(pixels(out3), pixels(out1)))


def test_prompter_map_cache_hit_does_not_load_model(tmp_path, tiny_clip, loads):
    make_dataset().save_to_disk(str(tmp_path / "ds"))
    params = dict(model=tiny_clip, layer_index=2)

    out1 = ImagePrompter("clip", **params).map(load_from_disk(str(tmp_path / "ds")), batch_size=4)
    assert len(loads()) == 1
    files = cache_arrows(tmp_path / "ds")
    assert files  # the map was written next to the dataset

    second = ImagePrompter("clip", **params)
    out2 = second.map(load_from_disk(str(tmp_path / "ds")), batch_size=4)
    assert len(loads()) == 1, "an identical prompter.map rebuilt the model instead of reading the cache"
    assert second._backend is None
    assert cache_arrows(tmp_path / "ds") == files
    np.testing.assert_array_equal(heatmaps(out2), heatmaps(out1))
    assert image_bytes(out2) == image_bytes(out1)
    assert out2.features == out1.features

    changed = ImagePrompter("clip", **params, enhance_coe=1.0)
    out3 = changed.map(load_from_disk(str(tmp_path / "ds")), batch_size=4)
    assert len(loads()) == 2
    assert len(cache_arrows(tmp_path / "ds")) > len(files)
    assert not np.allclose(heatmaps(out3), heatmaps(out1))


# --------------------------------------------------------------------------- (c) num_proc


# num_proc=2 over 8 rows gives shards of 4, so with batch_size=2 every batch holds the same
# rows as in one process: the results must agree bit for bit, masked pixels included.


def test_num_proc_with_rank_matches_single_process(tiny_clip, loads):
    ds = make_dataset(rows=8)
    reference = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    single = ds.map(reference, batched=True, batch_size=2, features=reference.features(ds.features))
    assert loads() == [os.getpid()]

    fresh = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    with hang_guard():
        parallel = ds.map(fresh, batched=True, batch_size=2, with_rank=True, num_proc=2,
                          features=fresh.features(ds.features))
    assert fresh._backend is None, "the parent process loaded the model"
    workers = loads()[1:]
    # One load per worker process (4 rows, 2 batches each), none in the parent.
    assert len(workers) == 2 and len(set(workers)) == 2 and os.getpid() not in workers

    assert list(parallel["id"]) == list(single["id"])
    assert_heatmaps_close(heatmaps(parallel), heatmaps(single))
    assert_image_lists_close(pixels(parallel), pixels(single))

    # A prompter already loaded in the parent still works: workers load their own model.
    fresh.backend()
    with hang_guard():
        again = ds.map(fresh, batched=True, batch_size=2, with_rank=True, num_proc=2,
                       features=fresh.features(ds.features))
    assert loads()[3] == os.getpid()  # the explicit fresh.backend() above
    more = loads()[4:]
    assert len(more) == 2 and os.getpid() not in more
    assert_heatmaps_close(heatmaps(again), heatmaps(single))
    assert_image_lists_close(pixels(again), pixels(single))


def test_prompter_map_num_proc_matches_single_process(tiny_clip, loads):
    ds = make_dataset(rows=8)
    single = ImagePrompter("clip", model=tiny_clip, layer_index=0, kernel_size=1).map(ds, batch_size=2)
    assert loads() == [os.getpid()]
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=0, kernel_size=1)
    with hang_guard():
        parallel = prompter.map(ds, batch_size=2, num_proc=2)
    assert prompter._backend is None
    workers = loads()[1:]
    assert len(workers) == 2 and len(set(workers)) == 2 and os.getpid() not in workers
    assert list(parallel["id"]) == list(single["id"])
    assert parallel.features == single.features
    assert_heatmaps_close(heatmaps(parallel), heatmaps(single))
    assert_image_lists_close(pixels(parallel), pixels(single))
    # The input images come back decoded and unchanged.
    assert parallel.features["image"] == ImageFeature()
    for got, want in zip(parallel["image"], random_images(rows=8)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# --------------------------------------------------------------------------- (d) output features and values


def test_prompter_map_output_features_and_values(tiny_clip, images):
    ds = make_dataset()
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=2)
    out = prompter.map(ds, batch_size=4)

    assert out.column_names == ["id", "image", "question", "masked_image", "heatmap"]
    assert isinstance(out.features["masked_image"], ImageFeature) and out.features["masked_image"].decode
    assert out.features["heatmap"] == Array2D(shape=(8, 8), dtype="float32")
    # The input image column comes back decoded, as it went in.
    assert isinstance(out.features["image"], ImageFeature) and out.features["image"].decode is True
    assert list(out["question"]) == QUESTIONS and list(out["id"]) == list(range(len(SIZES)))

    maps = heatmaps(out)
    assert maps.shape == (len(SIZES), 8, 8) and maps.dtype == np.float32
    assert np.all(maps >= 0) and np.all(maps <= 1)
    # docs/method.md step 6 ends with a min-max over the grid: each map spans exactly [0, 1].
    assert np.all(maps.reshape(len(SIZES), -1).min(axis=1) == 0)
    assert np.all(maps.reshape(len(SIZES), -1).max(axis=1) == 1)
    assert not np.allclose(maps[0], maps[1])

    for row, original in zip(out, images):
        assert isinstance(row["image"], Image.Image)
        np.testing.assert_array_equal(np.asarray(row["image"]), np.asarray(original))
        masked = row["masked_image"]
        assert isinstance(masked, Image.Image) and masked.mode == "RGB" and masked.size == original.size
        # Row 0 of the heatmap is the top of the image: the masked image is the original
        # dimmed by the heatmap stretched over (W, H) unflipped, untransposed.
        want = expected_masked(original, np.asarray(row["heatmap"], dtype=np.float32), Image.Resampling.LANCZOS)
        got = np.asarray(masked).astype(np.float64)
        assert np.abs(got - want).max() <= 1
        flipped = expected_masked(original, np.asarray(row["heatmap"], dtype=np.float32)[::-1].copy(),
                                  Image.Resampling.LANCZOS)
        assert np.abs(got - flipped).max() > 1


def test_map_heatmap_equals_direct_call(tiny_clip, images):
    ds = make_dataset()
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    mapped = ds.map(prompter, batched=True, batch_size=4, features=prompter.features(ds.features))
    direct = ImagePrompter("clip", model=tiny_clip, layer_index=1)({"image": images, "question": QUESTIONS})
    assert set(direct) == {"masked_image", "heatmap"}
    assert len(direct["heatmap"]) == len(images)
    assert_heatmaps_close(heatmaps(mapped), np.stack(direct["heatmap"]).astype(np.float32))
    # Batches of 4 against one of 6; in-memory and PNG sources: stored as PNG, lossless.
    assert_image_lists_close(pixels(mapped), [stored_image(value) for value in direct["masked_image"]])
    # prompter.map (undecoded images, row indices) gives the same masks as ds.map.
    assert_heatmaps_close(heatmaps(prompter.map(ds, batch_size=3)), heatmaps(mapped))


def test_prompter_map_keeps_undecoded_image_column(tiny_clip):
    ds = make_dataset().cast_column("image", ImageFeature(decode=False))
    out = ImagePrompter("clip", model=tiny_clip, layer_index=1).map(ds, batch_size=4)
    assert out.features["image"] == ImageFeature(decode=False)
    assert out.features["heatmap"] == Array2D(shape=(8, 8), dtype="float32")
    assert all(isinstance(value, dict) and value["bytes"] for value in out["image"])


# --------------------------------------------------------------------------- (e) custom column names


def test_custom_column_names(tiny_clip, images):
    names = dict(image_column="img", question_column="prompt", masked_image_column="api_img",
                 heatmap_column="api_heat")
    ds = make_dataset(image_column="img", question_column="prompt")
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1, grayscale=100, interpolation="bicubic", **names)

    out = prompter.map(ds, batch_size=4)
    assert out.column_names == ["id", "img", "prompt", "api_img", "api_heat"]
    assert out.features["api_heat"] == Array2D(shape=(8, 8), dtype="float32")
    assert isinstance(out.features["api_img"], ImageFeature) and out.features["api_img"].decode
    assert out.features["img"] == ImageFeature()

    via_ds_map = ds.map(prompter, batched=True, batch_size=4, features=prompter.features(ds.features))
    assert via_ds_map.column_names == ["id", "img", "prompt", "api_img", "api_heat"]
    assert_heatmaps_close(heatmaps(via_ds_map, "api_heat"), heatmaps(out, "api_heat"))

    # Same masks as the default names on the same data.
    default = ImagePrompter("clip", model=tiny_clip, layer_index=1, grayscale=100, interpolation="bicubic")
    reference = default.map(make_dataset(), batch_size=4)
    assert_heatmaps_close(heatmaps(out, "api_heat"), heatmaps(reference))

    for row, original in zip(out, images):
        want = expected_masked(original, np.asarray(row["api_heat"], dtype=np.float32), Image.Resampling.BICUBIC, 100)
        assert np.abs(np.asarray(row["api_img"]).astype(np.float64) - want).max() <= 1


def test_missing_column_is_reported(tiny_clip):
    ds = make_dataset()
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1, question_column="prompt")
    with pytest.raises(KeyError, match=r"question_column='prompt'.*\['id', 'image', 'question'\]"):
        prompter.map(ds)
