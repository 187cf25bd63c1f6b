"""The device path of stage 3 (hf_api_prompt.device_prompt) gives Pillow's and numpy's numbers exactly.

Every comparison is with the CPU path itself (masks.mask_to_pixels: Pillow's resize;
masks.blend: the reference arithmetic), run here on the CPU device, bit for bit: the
device path reproduces integer arithmetic, so no tolerance is due.
"""

import pickle

import numpy as np
import pytest
import torch
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

from hf_api_prompt import ImagePrompter, device_prompt, masks, prompts
from hf_api_prompt.bundled import DEMO_MODEL
from hf_api_prompt.config import PrompterConfig

R = Image.Resampling
FILTERS = [R.BOX, R.BILINEAR, R.HAMMING, R.BICUBIC, R.LANCZOS]
GRIDS = [(14, 14), (24, 24), (7, 5), (5, 7)]  # (gh, gw)
SIZES = [(1, 1), (1, 9), (9, 1), (3, 5), (13, 300), (300, 13), (37, 23), (224, 224), (1024, 768)]


def _grid(shape, seed=0):
    """Random levels with a 0/255 checkerboard corner: sharp edges, where LANCZOS and BICUBIC overshoot and clip."""
    grid = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    grid[:3, :3] = np.indices((3, 3)).sum(axis=0) % 2 * 255
    return grid


def _boxes(gh, gw, size):
    return [
        None,
        (0, 0, gw, gh),  # the whole grid, spelled out
        (0.5, 1.25, gw - 0.75, gh - 1.5),  # inside, fractional
        (-3.5, -2, gw + 4, gh + 1.5),  # reaching outside on every side (letterboxed image)
        (0.3, 0.7, 1.3, 1.9),  # one cell magnified
        (-0.1234567, 1 / 3, gw + 2 / 7, gh - 1 / 9),  # ends that float32 rounds (Pillow's box is a C float)
        (1 / 7, -1 / 3, gw - 1 / 7, gh + 1 / 3),
        (1, 1, 1 + size[0], 1 + size[1]),  # integer, the output's size: Pillow crops
    ]


def _assert_same(got: torch.Tensor, want: Image.Image, what):
    want = np.asarray(want)
    assert got.dtype == torch.uint8 and tuple(got.shape) == want.shape, f"{what}: {got.dtype} {tuple(got.shape)} != {want.shape}"
    diff = got.numpy().astype(int) - want
    assert not diff.any(), f"{what}: {np.count_nonzero(diff)} pixels differ, by up to {np.abs(diff).max()}"


@pytest.mark.parametrize("grid_shape", GRIDS, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("resample", FILTERS, ids=lambda f: f.name)
def test_resize_mask_is_pillows_resize(resample, grid_shape):
    grid = _grid(grid_shape)
    for size in SIZES:
        for box in _boxes(*grid_shape, size):
            got = device_prompt.resize_mask(grid, size, resample, box, "cpu")
            _assert_same(got, masks.mask_to_pixels(grid, size, resample, box), f"{resample.name} {grid_shape} -> {size}, box {box}")


@pytest.mark.parametrize("resample", FILTERS, ids=lambda f: f.name)
def test_a_very_tall_grid_is_resized_vertically_first_as_pillow_does(resample):
    grid = _grid((303, 3), seed=1)  # taller than 100 times its width: Pillow's Image.resize takes another route
    for size, box in [((5, 40), None), ((7, 300), (0.5, 2.0, 2.5, 290.0)), ((64, 1), None)]:
        _assert_same(device_prompt.resize_mask(grid, size, resample, box, "cpu"),
                     masks.mask_to_pixels(grid, size, resample, box), f"{resample.name} -> {size}, box {box}")


def test_nearest_is_resized_by_pillow():
    grid = _grid((14, 14))
    _assert_same(device_prompt.resize_mask(grid, (50, 30), R.NEAREST, (-1.5, 0, 15, 14), "cpu"),
                 masks.mask_to_pixels(grid, (50, 30), R.NEAREST, (-1.5, 0, 15, 14)), "NEAREST")
    with pytest.raises(ValueError, match="NEAREST"):
        device_prompt.pil_resample_weights(14, 50, R.NEAREST, 0, 14)


def test_coefficients_of_an_axis_kept_as_is_are_one():
    """Scale 1 on a pixel-aligned box: one coefficient 2**22 per pixel, the rest 0 (even LANCZOS' tiny sinc(n) terms)."""
    for resample in FILTERS:
        bounds, k = device_prompt.pil_resample_weights(10, 6, resample, 2, 8)
        dense = np.zeros((6, 10), np.int64)
        for i, (start, count) in enumerate(bounds):
            dense[i, start:start + count] = k[i, :count]
        assert (dense == np.eye(6, 10, 2, dtype=np.int64) << device_prompt.PRECISION_BITS).all(), resample.name


@pytest.mark.parametrize("grayscale", [0, 1, 100, 127, 254, 255])
def test_blend_is_the_reference_blend(grayscale):
    rng = np.random.default_rng(grayscale)
    pixels = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    weights = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    weights[0, :] = [0, 255] * 26 + [0]  # both ends of the mask
    got = device_prompt.blend(torch.from_numpy(pixels), torch.from_numpy(weights), grayscale)
    _assert_same(got, masks.blend(Image.fromarray(pixels), Image.fromarray(weights), grayscale), f"gray {grayscale}")


def test_blend_refuses_mismatched_tensors():
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        device_prompt.blend(torch.zeros((4, 5, 3), dtype=torch.uint8), torch.zeros((4, 6), dtype=torch.uint8), 0)


def test_soft_mask_on_a_device_is_soft_mask():
    config = PrompterConfig(backend="clip", model="ViT-B-16", pretrained=None, layer_index=0, grayscale=37)
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    grid = _grid((14, 14))
    for box in [None, (-1.25, 0.5, 15.0, 13.5)]:
        want = prompts.soft_mask(image, grid, box, config)
        got = device_prompt.soft_mask_on("cpu", image, grid, box, config)
        assert got.image.tobytes() == want.image.tobytes() and got.image.mode == "RGB", box
        assert got.weights.tobytes() == want.weights.tobytes() and got.weights.mode == "L", box


def _tiny_dataset():
    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(24, 32), (17, 9), (40, 40)]]
    return Dataset.from_dict({"image": images, "question": ["Where is it?", "What is red?", "Is it round?"]})


@pytest.mark.parametrize("prompt_device", ["cpu", "auto"])
def test_a_prompter_with_a_prompt_device_writes_the_same_dataset(prompt_device, monkeypatch):
    calls, real = [], device_prompt.soft_mask_on
    monkeypatch.setattr(device_prompt, "soft_mask_on", lambda device, *args: calls.append(str(device)) or real(device, *args))
    ds = _tiny_dataset()
    params = dict(model=DEMO_MODEL, layer_index=2, image_format="png")
    plain = ImagePrompter("clip", **params).map(ds, batch_size=2).with_format("numpy", columns=["heatmap"], output_all_columns=True)
    on_device = ImagePrompter("clip", prompt_device=prompt_device, **params).map(ds, batch_size=2)
    on_device = on_device.with_format("numpy", columns=["heatmap"], output_all_columns=True)
    raw = plain.cast_column("masked_image", plain.features["masked_image"].__class__(decode=False))
    raw_device = on_device.cast_column("masked_image", on_device.features["masked_image"].__class__(decode=False))
    for i in range(len(ds)):
        assert raw_device[i]["masked_image"]["bytes"] == raw[i]["masked_image"]["bytes"], f"row {i}: masked image bytes"
        assert np.array_equal(on_device[i]["heatmap"], plain[i]["heatmap"]), f"row {i}: heatmap"
    assert calls == ["cpu"] * len(ds), calls  # each row went the device way ("auto": the backend's device, the CPU here)


def test_the_prompt_device_is_pickled_only_when_set():
    params = dict(model=DEMO_MODEL, layer_index=2)
    assert "prompt_device" not in ImagePrompter("clip", **params).__getstate__()
    copy = pickle.loads(pickle.dumps(ImagePrompter("clip", prompt_device="cpu", **params)))
    assert copy.prompt_device == "cpu" and copy.config == ImagePrompter("clip", **params).config


def test_a_prompt_device_is_refused_for_other_styles_and_bad_names():
    with pytest.raises(ValueError, match="not a torch device"):
        ImagePrompter("clip", model=DEMO_MODEL, layer_index=2, prompt_device="gpu-please")

    @prompts.register_prompt("test-device-style")
    def other(image, grid_u8, box, config):
        return prompts.soft_mask(image, grid_u8, box, config)

    try:
        with pytest.raises(ValueError, match="CPU only"):
            ImagePrompter("clip", model=DEMO_MODEL, layer_index=2, prompt="test-device-style", prompt_device="cpu")
        config = PrompterConfig(backend="clip", model="ViT-B-16", pretrained=None, layer_index=0, prompt="test-device-style")
        with pytest.raises(ValueError, match="CPU only"):
            prompts.apply_prompt(config, [Image.new("RGB", (4, 2))], np.zeros((1, 2, 2), np.float32), [None], device="cpu")
    finally:
        prompts._STYLES.pop("test-device-style")



@pytest.fixture
def device_calls(monkeypatch):
    """The devices that stage 3 ran on, one per prompted image (a spy on soft_mask_on)."""
    from hf_api_prompt import device_prompt

    calls = []
    real = device_prompt.soft_mask_on
    monkeypatch.setattr(device_prompt, "soft_mask_on", lambda device, *args: calls.append(str(device)) or real(device, *args))
    return calls


def test_the_run_device_serves_prompters_without_their_own(device_calls, monkeypatch):
    from hf_api_prompt import parallel

    ds = Dataset.from_dict({"image": [Image.new("RGB", (40, 30), (200, 90, 10))] * 2, "question": ["where?", "what?"]})
    plain = ImagePrompter("clip", model=DEMO_MODEL, layer_index=2, image_format="png").map(ds, load_from_cache_file=False)
    assert device_calls == []
    monkeypatch.setenv(parallel.PROMPT_DEVICE_ENV, "cpu")
    on_device = ImagePrompter("clip", model=DEMO_MODEL, layer_index=2, image_format="png").map(ds, load_from_cache_file=False)
    assert device_calls == ["cpu", "cpu"]
    for a, b in zip(plain.cast_column("masked_image", ImageFeature(decode=False)),
                    on_device.cast_column("masked_image", ImageFeature(decode=False))):
        assert a["masked_image"]["bytes"] == b["masked_image"]["bytes"]


def test_the_cli_prompt_device_reaches_run_and_remask(device_calls, tmp_path):
    """``--prompt-device`` reaches every remask of the run (``run`` remasks its maps too) and is gone after it."""
    import os

    from datasets import load_dataset

    from hf_api_prompt import cli, parallel

    folders = {}
    for name, flags in (("plain", []), ("device", ["--prompt-device", "cpu"])):
        folders[name] = tmp_path / name
        assert cli.main(["run", "--output-dir", str(folders[name]), "--limit", "3", "--preview-rows", "0", *flags]) == 0
        assert parallel.PROMPT_DEVICE_ENV not in os.environ
        assert (device_calls == []) == (name == "plain")
    assert set(device_calls) == {"cpu"} and len(device_calls) == 3
    [variant] = [p.name for p in folders["plain"].iterdir() if p.is_dir() and p.name != "previews"]
    rows = {name: load_dataset(str(folder), variant, split="train").cast_column("image", ImageFeature(decode=False))
            for name, folder in folders.items()}
    assert [r["image"]["bytes"] for r in rows["plain"]] == [r["image"]["bytes"] for r in rows["device"]]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--output-dir", str(tmp_path / "bad"), "--prompt-device", "gpu7"])
    assert exit_info.value.code == 2 and not (tmp_path / "bad").exists()
