"""Compute once, sweep everything (``hf_api_prompt.stages``; docs/method.md, "Three stages").

One :class:`MapsPrompter` pass plus :func:`remask` must give, for every parameter
set of a sweep, what that parameter set gives run alone with
``ImagePrompter(...).map(ds)``: the bundled demo CLIP (14 x 14 grid, 4 blocks) and
the tiny random LLaVA of conftest (8 x 8 grid, 3 decoder layers), on images of
mixed sizes and aspect ratios with several questions.

The two paths batch the rows differently (maps: 4 rows a batch, direct: 3), so
their model passes group the float32 reductions differently, and the heatmaps
agree to rounding (tests/compare.py, ``HEATMAP_ATOL``): with the demo CLIP the raw
attention maps of the two batchings differ by up to 2.4e-6 of their range (its
[CLS] attention is peaked, and the softmax scales a logit's rounding by the logit),
and the heatmaps by up to 3.5e-6. With the same model batches the only difference
is the recipe's own batch size (remasking uses another), an ulp at most.
"""

import dataclasses
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image as ImageFeature, Value, load_from_disk
from datasets.fingerprint import Hasher
from PIL import Image

from hf_api_prompt import ImagePrompter, RowError, masks, stages
from hf_api_prompt.backends.base import Backend
from hf_api_prompt.bundled import DEMO_DATA, DEMO_MODEL
from hf_api_prompt.stages import BOX_COLUMN, MAPS_CONFIG_COLUMN, MapsPrompter, maps_column, remask, sweep

from compare import assert_heatmaps_close, assert_masked_image_matches
from conftest import make_local_clip
from test_golden import GoldenComparison, golden_prompter_params, golden_runs

#: (W, H): wide, tall, square, very wide, very tall, ... (aspect ratios 0.33 to 3.9).
SIZES = [(200, 120), (90, 160), (112, 112), (300, 77), (40, 120), (150, 230), (64, 48)]
#: In the tiny LLaVA's vocabulary; of several token lengths (left padding), one asked twice.
QUESTIONS = [
    "where is the red one?",
    "what color is the big animal on the left?",
    "where is the red one?",
    "is there a blue dog?",
    "how many cats are there in this picture?",
    "what is on the right?",
    "which one is small?",
]
#: Rows per model call: the maps run and the direct runs batch the rows differently (and remasking differently again).
MAPS_BATCH, DIRECT_BATCH, REMASK_BATCH = 4, 3, 5
#: The same model batches on both paths: the maps are the same float32 values, and only the recipe's
#: batch size differs (one ulp, 1.2e-7, is seen); 1e-6 leaves room and is 8x tighter than HEATMAP_ATOL.
SAME_BATCH_ATOL = 1e-6
JUNK = {"bytes": b"these bytes are not an image", "path": None}


@dataclasses.dataclass
class Model:
    backend: str
    params: dict  # the ImagePrompter parameters that name the model
    layers: list  # all its layers

    def prompter(self, **params) -> ImagePrompter:
        return ImagePrompter(self.backend, **self.params, **params)

    def sweep(self, **params):
        return sweep(self.backend, **self.params, **params)


CLIP = Model("clip", {"model": DEMO_MODEL}, [0, 1, 2, 3])


@pytest.fixture(scope="module", params=["clip", "llava"])
def model(request) -> Model:
    if request.param == "clip":
        return CLIP
    return Model("llava", {"model": request.getfixturevalue("tiny_llava"), "max_new_tokens": 6}, [0, 1, 2])


@pytest.fixture(scope="module")
def images():
    """The bundled scenes (trained-on content for the demo CLIP) resized to :data:`SIZES`."""
    scenes = [Image.open(path).convert("RGB") for path in sorted(Path(DEMO_DATA).glob("scene-*.png"))]
    return [scenes[i % len(scenes)].resize(size, Image.Resampling.BILINEAR) for i, size in enumerate(SIZES)]


def source(images, questions=QUESTIONS) -> Dataset:
    return Dataset.from_dict({"id": list(range(len(images))), "image": images, "question": list(questions)})


def direct_run(prompter: ImagePrompter, dataset: Dataset, batch_size=DIRECT_BATCH) -> Dataset:
    """The parameter set run alone: a fresh prompter, its own model pass."""
    return ImagePrompter.from_config(prompter.config).map(dataset, batch_size=batch_size)


def assert_variant_equals_direct(variant: Dataset, direct: Dataset, prompter: ImagePrompter, atol=None):
    """Same columns, types and rows: heatmaps to rounding, masked images up to k/255 boundary cells, the rest equal."""
    config = prompter.config
    what = repr(prompter)
    assert variant.column_names == direct.column_names, what
    assert variant.features == direct.features, what
    outputs = (config.masked_image_column, config.heatmap_column, config.image_column)
    for name in variant.column_names:
        if name not in outputs:  # id, question, the answer, the status
            assert variant[name] == direct[name], f"{what}: column {name}"
    for i, (got, want) in enumerate(zip(variant, direct)):
        row = f"{what}, row {i}"
        for name in (config.image_column, config.masked_image_column):
            if want[name] is None:
                assert got[name] is None, f"{row}: {name}"
        if want[config.heatmap_column] is None:  # a passed-through row: nothing computed, image unmasked
            assert got[config.heatmap_column] is None, row
            if want[config.masked_image_column] is not None:
                np.testing.assert_array_equal(np.asarray(got[config.masked_image_column]), np.asarray(want[config.image_column]))
                np.testing.assert_array_equal(np.asarray(want[config.masked_image_column]), np.asarray(want[config.image_column]))
            continue
        np.testing.assert_array_equal(np.asarray(got[config.image_column]), np.asarray(want[config.image_column]), err_msg=row)
        if atol is not None:
            assert_heatmaps_close(got[config.heatmap_column], want[config.heatmap_column], row, atol=atol)
        assert_masked_image_matches(got[config.masked_image_column], want[config.masked_image_column],
                                    got[config.heatmap_column], want[config.heatmap_column], row)


# ------------------------------------------------------------------------------ one pass, many layers
def test_one_forward_pass_reads_several_layers(model, images):
    """``maps(images, questions, [a, b, c])`` = three single-layer calls on the same batch (llava: the same answers)."""
    backend = model.prompter(layer_index=model.layers[-1]).backend()
    batch, questions = images[:4], QUESTIONS[:4]
    layers = model.layers[-3:]
    together = backend.maps(batch, questions, layers)
    assert sorted(together.layers) == layers
    for layer in layers:
        alone = backend.maps(batch, questions, [layer])
        assert list(alone.layers) == [layer]
        assert alone.boxes == together.boxes
        assert alone.extra_columns == together.extra_columns
        for name in type(backend).map_names:
            assert together.layers[layer][name].dtype == torch.float32
            assert together.layers[layer][name].shape == (4, *backend.grid_shape(backend.config))
            # The same batch through the same kernels; reading a layer does not change what flows on.
            np.testing.assert_allclose(together.layers[layer][name].numpy(), alone.layers[layer][name].numpy(),
                                       atol=1e-6, rtol=0, err_msg=f"layer {layer}, {name}")
    name = type(backend).map_names[0]
    assert not np.allclose(together.layers[layers[0]][name].numpy(), together.layers[layers[-1]][name].numpy())
    if model.backend == "llava":
        assert all(isinstance(answer, str) for answer in together.extra_columns["api_answer"])


# ------------------------------------------------------------------------------ sweep = direct runs
def _sweep(model: Model, size: str):
    if size == "fast":  # every open field varied, in 2 x 2 x 2 x 2 + 1 variants
        prompters = model.sweep(layer_index=[model.layers[0], model.layers[-1]], enhance_coe=[1, 5],
                                kernel_size=["auto", 3], grayscale=[0, 200])
        prompters += model.sweep(layer_index=model.layers[1], geometry="aligned", interpolation="bicubic",
                                 kernel_size=1, grayscale=100, masked_image_column="prompted", heatmap_column="grid")
        assert len(prompters) == 17
        return prompters
    prompters = model.sweep(layer_index=model.layers, enhance_coe=[1, 5], kernel_size=[1, "auto", 3],
                            grayscale=[0, 200], geometry=["paper", "aligned"])
    assert len(prompters) == len(model.layers) * 16  # "auto" is 1 on both grids: kept once
    return prompters


@pytest.mark.parametrize("size", ["fast", pytest.param("full", marks=pytest.mark.slow)])
def test_every_sweep_variant_equals_its_direct_run(model, images, size, backend_loads):
    prompters = _sweep(model, size)
    ds = source(images)
    [maps_prompter] = MapsPrompter.for_prompters(prompters)  # one model pass serves the whole sweep
    assert maps_prompter.layers == tuple(sorted({p.config.layer_index for p in prompters}))
    maps = maps_prompter.map(ds, batch_size=MAPS_BATCH)
    variants = [remask(maps, p, batch_size=REMASK_BATCH) for p in prompters]
    assert len(backend_loads()) == 1, "remasking loaded a model"
    for prompter, variant in zip(prompters, variants):
        assert_variant_equals_direct(variant, direct_run(prompter, ds), prompter)
    # With the maps run's own batches the heatmaps agree to an ulp.
    assert_variant_equals_direct(variants[-1], direct_run(prompters[-1], ds, MAPS_BATCH), prompters[-1], SAME_BATCH_ATOL)


# ------------------------------------------------------------------------------ saved and reloaded maps
def test_remask_after_save_and_reload_is_exact(images, tmp_path):
    ds = source(images)
    prompters = [CLIP.prompter(layer_index=1), CLIP.prompter(layer_index=3, geometry="aligned", grayscale=200)]
    [maps_prompter] = MapsPrompter.for_prompters(prompters)
    maps = maps_prompter.map(ds, batch_size=MAPS_BATCH)
    maps.save_to_disk(str(tmp_path / "maps"))
    maps.to_parquet(str(tmp_path / "maps.parquet"))
    maps_columns = [BOX_COLUMN] + [maps_column(name, layer) for layer in (1, 3) for name in ("attention", "tokens")]
    in_memory = maps.with_format("numpy")[:]
    for how, reloaded in (("save_to_disk", load_from_disk(str(tmp_path / "maps"))),
                          ("parquet", Dataset.from_parquet(str(tmp_path / "maps.parquet")))):
        assert reloaded.features == maps.features, how
        numpy = reloaded.with_format("numpy")[:]
        for name in maps_columns:
            assert numpy[name].dtype == in_memory[name].dtype, (how, name)
            np.testing.assert_array_equal(numpy[name], in_memory[name], err_msg=f"{how}: {name}")  # bit for bit
        assert numpy[maps_column("attention", 1)].dtype == np.float32
        for prompter in prompters:
            again, first = remask(reloaded, prompter), remask(maps, prompter)
            np.testing.assert_array_equal(np.asarray(again["heatmap"]), np.asarray(first["heatmap"]), err_msg=how)
            for a, b in zip(again["masked_image"], first["masked_image"]):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=how)
            assert_variant_equals_direct(again, direct_run(prompter, ds), prompter)


# ------------------------------------------------------------------------------ bad rows
def _png(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _bad_rows_dataset(images) -> Dataset:
    """Rows 2 (no image), 3 (undecodable bytes) and 4 (empty question) are bad; 2 and 3 fill one batch of 2."""
    values = [_png(images[0]), _png(images[1]), None, JUNK, _png(images[3]), _png(images[4])]
    questions = [QUESTIONS[0], QUESTIONS[1], QUESTIONS[2], QUESTIONS[3], "", QUESTIONS[5]]
    return Dataset.from_dict(
        {"id": list(range(6)), "image": values, "question": questions},
        features=Features({"id": Value("int64"), "image": ImageFeature(), "question": Value("string")}),
    )


def test_bad_rows_pass_through_remasking_as_in_the_direct_run(model, images):
    ds = _bad_rows_dataset(images)
    prompter = model.prompter(layer_index=model.layers[1], on_error="passthrough", grayscale=200)
    maps_prompter = MapsPrompter(prompter.config, model.layers)
    for rows in (ds, ds.select([2, 3, 4])):  # a batch of bad rows among good ones, then nothing but bad rows
        maps = maps_prompter.map(rows, batch_size=2)
        variant = remask(maps, prompter, batch_size=2)
        direct = direct_run(prompter, rows)
        assert_variant_equals_direct(variant, direct, prompter)
        bad = [i for i, row_id in enumerate(rows["id"]) if row_id in (2, 3, 4)]
        assert all(maps[maps_column("attention", layer)][i] is None for layer in model.layers for i in bad)
        by_id = {row["id"]: row for row in variant}
        assert by_id[2]["api_status"] == "image is missing (None)"
        assert by_id[3]["api_status"].startswith("image could not be decoded")
        assert by_id[4]["api_status"] == "question is empty"
        assert [row["api_status"] for row in variant if row["id"] not in (2, 3, 4)] == ["ok"] * (len(rows) - 3)
        assert [by_id[i]["heatmap"] for i in (2, 3, 4)] == [None, None, None]
        assert by_id[2]["masked_image"] is None and by_id[3]["masked_image"] is None and by_id[3]["image"] is None
        np.testing.assert_array_equal(np.asarray(by_id[4]["masked_image"]), np.asarray(images[3]))  # unmasked
        if model.backend == "llava":
            assert [by_id[i]["api_answer"] for i in (2, 3, 4)] == [None, None, None]


def test_bad_row_raises_in_the_maps_run(model, images):
    ds = _bad_rows_dataset(images)
    maps_prompter = MapsPrompter(model.prompter(layer_index=model.layers[1]).config, model.layers)
    with pytest.raises(RowError, match=r"^row 2: image is missing"):
        maps_prompter.map(ds, batch_size=2)
    with pytest.raises(RowError, match=r"^row 1: question is empty"):
        maps_prompter.map(ds.select([0, 4]), batch_size=2)


# ------------------------------------------------------------------------------ refusals and validation
@pytest.fixture
def nothing_computed(monkeypatch):
    """From here on, any ``Dataset.map`` or model load fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("computed before refusing")

    monkeypatch.setattr(Dataset, "map", forbidden)
    monkeypatch.setattr(Backend, "__init__", forbidden)


def test_remask_refuses_other_layers_and_settings_before_computing(images, tiny_clip, tiny_llava, request):
    maps = MapsPrompter(CLIP.prompter(layer_index=1).config, [1, 3]).map(source(images[:2], QUESTIONS[:2]))
    request.getfixturevalue("nothing_computed")
    other = r"the maps were made with other settings \("
    refused = [
        (CLIP.prompter(layer_index=2), r"layer_index 2 is not among the maps' layers \[1, 3\]"),
        (CLIP.prompter(layer_index=0), r"layer_index 0 is not among"),
        (ImagePrompter("clip", model=tiny_clip, layer_index=1), other + r"model, weights_sha256 differ\)"),
        (CLIP.prompter(layer_index=1, on_error="passthrough"), other + r"on_error differ\)"),
        (CLIP.prompter(layer_index=1, dtype="bfloat16"), other + r"dtype differ\)"),
        (CLIP.prompter(layer_index=1, question_column="prompt"), other + r"question_column differ\)"),
        (ImagePrompter("llava", model=tiny_llava, layer_index=1), other + r"answer_column, backend, "),
    ]
    for prompter, reason in refused:
        with pytest.raises(ValueError, match=r"^cannot remask with ImagePrompter\(.*\): " + reason):
            remask(maps, prompter)
    with pytest.raises(ValueError, match=f"not a maps dataset: it has no '{MAPS_CONFIG_COLUMN}' column"):
        remask(source(images[:2], QUESTIONS[:2]), CLIP.prompter(layer_index=1))
    with pytest.raises(ValueError, match=r"the maps dataset lacks the columns \['api_tokens_l3'\]"):
        remask(maps.remove_columns("api_tokens_l3"), CLIP.prompter(layer_index=1))


def test_sweep_validates_every_combination_before_any_model_loads(tiny_llava, nothing_computed):
    with pytest.raises(ValueError, match=r"layer_index 4 is out of range .* 4 blocks \(valid: 0\.\.3\)"):
        sweep("clip", model=DEMO_MODEL, layer_index=[1, 2, 4], grayscale=[0, 200])
    with pytest.raises(ValueError, match=r"layer_index 3 is out of range .* 3 decoder layers"):
        sweep("llava", model=tiny_llava, layer_index=[0, 3])
    with pytest.raises(ValueError, match=r"kernel_size must be a positive odd int or 'auto', got 4"):
        sweep("clip", model=DEMO_MODEL, layer_index=1, kernel_size=[3, "auto", 4])
    with pytest.raises(ValueError, match=r"grayscale must be an int in \[0, 255\], got 256"):
        sweep("clip", model=DEMO_MODEL, layer_index=[1, 2], grayscale=[0, 256])
    with pytest.raises(ValueError, match=r"geometry must be one of"):
        sweep("clip", model=DEMO_MODEL, layer_index=1, geometry=["aligned", "cropped"])
    with pytest.raises(ValueError, match=r"column names must be distinct"):
        sweep("clip", model=DEMO_MODEL, layer_index=1, heatmap_column=["grid", "question"])
    with pytest.raises(ValueError, match=r"^enhance_coe has no value to sweep over$"):
        sweep("clip", model=DEMO_MODEL, layer_index=[1, 2], enhance_coe=[])


def test_sweep_order_and_one_maps_run_per_model(tiny_clip):
    prompters = sweep("clip", model=DEMO_MODEL, layer_index=[3, 1], enhance_coe=[5, 1])
    assert [(p.config.layer_index, p.config.enhance_coe) for p in prompters] == [(3, 5.0), (3, 1.0), (1, 5.0), (1, 1.0)]
    others = sweep("clip", model=tiny_clip, layer_index=[0, 2], grayscale=100)
    groups = MapsPrompter.for_prompters(prompters + others + sweep("clip", model=DEMO_MODEL, layer_index=2, dtype="bf16"))
    assert [(g.config.model, g.config.dtype, g.layers) for g in groups] == [
        (DEMO_MODEL, None, (1, 3)), (tiny_clip, None, (0, 2)), (DEMO_MODEL, "bfloat16", (2,))]


@pytest.mark.parametrize(
    "backend,spec,grid,kernel",
    [
        ("clip", {"model": DEMO_MODEL}, (14, 14), 1),
        ("clip", {"model": "ViT-B-16", "pretrained": "openai"}, (14, 14), 1),  # 224 px / 16 px patches
        ("clip", {"model": "ViT-L-14-336", "pretrained": "openai"}, (24, 24), 3),  # the paper's grid and kernel
        ("clip", "tiny_clip", (8, 8), 1),
        ("clip", "clip_32", (32, 32), 5),
        ("llava", "tiny_llava", (8, 8), 1),
    ],
    ids=["demo-14", "vit-b-16", "vit-l-14-336", "tiny-clip-8", "clip-32", "tiny-llava-8"],
)
def test_auto_kernel_size_resolves_and_dedups(backend, spec, grid, kernel, request, tmp_path):
    if spec == "clip_32":
        spec = {"model": make_local_clip(tmp_path / "clip32", image_size=64, patch_size=2, layers=1)}
    elif isinstance(spec, str):
        spec = {"model": request.getfixturevalue(spec)}
    assert kernel == 2 * (min(grid) // 16) + 1 == masks.auto_kernel_size(grid)  # an eighth of the side, odd
    auto = ImagePrompter(backend, layer_index=0, kernel_size="auto", **spec)
    assert auto.grid_shape == grid and auto.config.kernel_size == kernel
    assert auto.config == ImagePrompter(backend, layer_index=0, kernel_size=kernel, **spec).config
    swept = sweep(backend, layer_index=0, kernel_size=[kernel, "auto", kernel + 2], **spec)
    assert [p.config.kernel_size for p in swept] == [kernel, kernel + 2]
    swept = sweep(backend, layer_index=0, kernel_size=["auto", kernel + 2, kernel], **spec)
    assert [p.config.kernel_size for p in swept] == [kernel, kernel + 2]


# ------------------------------------------------------------------------------ golden
def test_golden_cases_through_one_maps_pass_and_remask(golden_dir, golden_manifest, golden_dataset):
    """The authors' outputs (test_golden.py) from one pass over both golden layers, every parameter set remasked."""
    runs = golden_runs(golden_manifest)
    prompters = [ImagePrompter("clip", **golden_prompter_params(layer, p)) for layer, p in runs]
    [maps_prompter] = MapsPrompter.for_prompters(prompters)
    assert maps_prompter.layers == tuple(golden_manifest["layer_indices"])
    maps = maps_prompter.map(golden_dataset, batch_size=len(golden_dataset))  # the authors' one batch
    comparison = GoldenComparison(golden_dir, golden_manifest)
    for (layer, p), prompter in zip(runs, prompters):
        comparison.check(layer, p, remask(maps, prompter))
    comparison.finish()


# ------------------------------------------------------------------------------ pickling and the cache
def test_maps_prompter_pickles_as_config_and_layers(images, tmp_path, backend_loads, monkeypatch):
    config = CLIP.prompter(layer_index=1).config
    maps_prompter = MapsPrompter(config, [3, 1, 3])
    assert maps_prompter.layers == (1, 3)
    assert maps_prompter.__getstate__() == {"config": maps_prompter.config.to_json(), "layers": [1, 3]}
    # The open fields do not matter: any config of the group gives the same maps run.
    assert MapsPrompter(config.replace(grayscale=9, kernel_size=5, geometry="aligned"), [1, 3]).__getstate__() == \
        maps_prompter.__getstate__()
    before = Hasher.hash(maps_prompter)
    assert Hasher.hash(MapsPrompter(config, [1, 3])) == before
    assert Hasher.hash(MapsPrompter(config, [1, 2])) != before
    assert Hasher.hash(MapsPrompter(config.replace(enhance_coe=1.0), [1, 3])) == before
    assert Hasher.hash(MapsPrompter(config.replace(on_error="passthrough"), [1, 3])) != before
    maps_prompter.backend()
    blob = pickle.dumps(maps_prompter)
    assert len(blob) < 5_000 and Hasher.hash(maps_prompter) == before  # no weights, loaded or not
    clone = pickle.loads(blob)
    assert (clone.config, clone.layers, clone._backend) == (maps_prompter.config, (1, 3), None)

    source(images[:4], QUESTIONS[:4]).save_to_disk(str(tmp_path / "ds"))
    first = MapsPrompter(config, [1, 3]).map(load_from_disk(str(tmp_path / "ds")), batch_size=2)
    loads = len(backend_loads())
    second_prompter = MapsPrompter(config, [3, 1])
    second = second_prompter.map(load_from_disk(str(tmp_path / "ds")), batch_size=2)
    assert second_prompter._backend is None and len(backend_loads()) == loads  # a cache hit
    assert second.cache_files == first.cache_files and second._fingerprint == first._fingerprint
    other = MapsPrompter(config, [1, 2]).map(load_from_disk(str(tmp_path / "ds")), batch_size=2)
    assert other._fingerprint != first._fingerprint and other.cache_files != first.cache_files
    assert len(backend_loads()) == loads + 1
    # Remasking the same maps with the same prompter is a cache hit too; another prompter is not.
    recipe_calls = []
    recipe = stages.grid_masks
    monkeypatch.setattr(stages, "grid_masks", lambda *args: recipe_calls.append(args) or recipe(*args))
    prompter = CLIP.prompter(layer_index=3)
    remasked = remask(first, prompter)
    computed = len(recipe_calls)
    assert computed > 0
    assert remask(second, prompter).cache_files == remasked.cache_files and len(recipe_calls) == computed
    assert remask(first, CLIP.prompter(layer_index=1)).cache_files != remasked.cache_files
    assert len(recipe_calls) > computed
