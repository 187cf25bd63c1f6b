"""A prompt style is one registered function: the config selects it, names, records and remasking follow.

The style here is the test's own (the image's pixels kept where the mask is LOW, the
opposite of the paper's); the library's part is the plumbing, checked against the
"mask" run of the same parameters: same heatmap, and the style applied to it.
"""

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image, ImageFilter

from hf_api_prompt import ImagePrompter, PrompterConfig, config as config_module, masks, prompts
from hf_api_prompt.bundled import DEMO_MODEL
from hf_api_prompt.publishing import variant_name
from hf_api_prompt.stages import MapsPrompter, remask

STYLE = "test-inverse"


@pytest.fixture
def inverse_style():
    @prompts.register_prompt(STYLE)
    def inverse(image, grid_u8, box, config):
        weights = Image.fromarray(255 - np.asarray(masks.mask_to_pixels(grid_u8, image.size, Image.Resampling.NEAREST)))
        return prompts.Prompted(Image.composite(image, Image.new("RGB", image.size, (9, 9, 9)), weights), weights)

    yield inverse
    prompts._STYLES.pop(STYLE)
    config_module.PROMPT_PARAMETERS.pop(STYLE)


def scenes():
    rng = np.random.RandomState(3)
    images = [Image.fromarray(rng.randint(0, 256, (30 + 9 * i, 50 - 4 * i, 3), dtype=np.uint8)) for i in range(3)]
    return Dataset.from_dict({"image": images, "question": ["where is the red square?", "what is this?", "any blue?"]})


def test_a_registered_style_is_selected_by_the_config_and_named(inverse_style):
    ds = scenes()
    paper = ImagePrompter("clip", model=DEMO_MODEL, layer_index=2).map(ds)
    styled_prompter = ImagePrompter("clip", model=DEMO_MODEL, layer_index=2, prompt=STYLE)
    styled = styled_prompter.map(ds)
    for row, want in zip(styled, paper):
        np.testing.assert_array_equal(np.asarray(row["heatmap"]), np.asarray(want["heatmap"]))  # stages 1-2 unchanged
        grid_u8 = masks.mask_to_uint8(np.asarray(want["heatmap"]))
        expected = inverse_style(row["image"].convert("RGB"), grid_u8, None, styled_prompter.config).image
        np.testing.assert_array_equal(np.asarray(row["masked_image"]), np.asarray(expected))
    name = variant_name(styled_prompter.config)
    assert f"-g0-{STYLE}-source75-h" in name and name != variant_name(ImagePrompter("clip", model=DEMO_MODEL, layer_index=2).config)
    # remasking in the style equals the direct run
    [maps_prompter] = MapsPrompter.for_prompters([styled_prompter])
    remasked = remask(maps_prompter.map(ds), styled_prompter)
    for a, b in zip(remasked, styled):
        np.testing.assert_array_equal(np.asarray(a["masked_image"]), np.asarray(b["masked_image"]))


def test_an_unknown_style_is_refused_before_any_model_loads():
    with pytest.raises(ValueError, match="unknown prompt style 'nope'.*'mask'"):
        ImagePrompter("clip", model=DEMO_MODEL, layer_index=2, prompt="nope")


def test_a_style_cannot_take_a_geometry_name():
    with pytest.raises(ValueError, match="named like a geometry"):
        prompts.register_prompt("aligned")


# ----------------------------------------------------------------------------- blur


def config_of(**changes) -> PrompterConfig:
    return PrompterConfig(backend="clip", model=DEMO_MODEL, pretrained=None, layer_index=2, **changes)


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


def test_blur_blends_towards_a_gaussian_blur_of_the_image_as_computed_here():
    image = random_image(61, 40)
    grid = np.random.RandomState(1).rand(1, 7, 5).astype(np.float32)
    config = config_of(prompt="blur", blur_radius=0.1)
    [out] = prompts.apply_prompt(config, [image], grid, [None])
    # Independent: the grid as uint8 (floor), LANCZOS-resized by PIL, a Gaussian of sigma 0.1 * 40 px, the float32 blend.
    weights = np.asarray(Image.fromarray((grid[0] * np.float32(255)).astype(np.uint8)).resize(image.size, Image.Resampling.LANCZOS))
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(4.0)), dtype=np.float32)
    w = weights.astype(np.float32)[:, :, None] / np.float32(255)
    expected = (np.asarray(image, dtype=np.float32) * w + blurred * (np.float32(1) - w)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(out.weights), weights)
    np.testing.assert_array_equal(np.asarray(out.image), expected)  # the same float32 operations: exact
    assert out.box is None


def test_blur_keeps_a_pixel_of_weight_255_and_gives_the_blurred_pixel_at_weight_0():
    image = random_image(30, 20)
    grid = np.zeros((1, 2, 2), np.float32)
    grid[0, :, 0] = 1.0  # NEAREST: the left half of the image weighs 255, the right half 0
    config = config_of(prompt="blur", blur_radius=0.05, interpolation="nearest")
    [out] = prompts.apply_prompt(config, [image], grid, [None])
    pixels, result = np.asarray(image), np.asarray(out.image)
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(0.05 * 20)))
    np.testing.assert_array_equal(result[:, :15], pixels[:, :15])
    np.testing.assert_array_equal(result[:, 15:], blurred[:, 15:])
    assert not np.array_equal(result[:, 15:], pixels[:, 15:])


def test_the_blur_radius_is_relative_to_the_shorter_side():
    """One setting blurs a 2x larger image by a 2x larger Gaussian: the same picture, up to resampling."""
    zero = np.zeros((1, 3, 3), np.float32)
    config = config_of(prompt="blur", blur_radius=0.1)
    small, large = random_image(40, 30, seed=4), None
    large = small.resize((80, 60), Image.Resampling.NEAREST)
    [out_small] = prompts.apply_prompt(config, [small], zero, [None])
    [out_large] = prompts.apply_prompt(config, [large], zero, [None])
    np.testing.assert_array_equal(np.asarray(out_small.image), np.asarray(small.filter(ImageFilter.GaussianBlur(3.0))))
    np.testing.assert_array_equal(np.asarray(out_large.image), np.asarray(large.filter(ImageFilter.GaussianBlur(6.0))))


# ----------------------------------------------------------------------------- crop: the box rule


def blob(shape, *regions):
    """``[H, W]`` uint8 weights with ``(top, bottom, left, right, value)`` regions."""
    weights = np.zeros(shape, np.uint8)
    for top, bottom, left, right, value in regions:
        weights[top:bottom, left:right] = value
    return weights


@pytest.mark.parametrize("weights, mass, padding, min_size, expected", [
    # the region itself: 10 x 20 pixels at rows 40-49, columns 100-119
    (blob((100, 200), (40, 50, 100, 120, 255)), 0.9, 0.0, 0.0, (100, 40, 120, 50)),
    # padding 0.5: half of each side added on each side (20 wide -> +10 each side; 10 high -> +5)
    (blob((100, 200), (40, 50, 100, 120, 255)), 0.9, 0.5, 0.0, (90, 35, 130, 55)),
    # minimum size: half of the image along each axis (100 x 50), about the region's centre (110, 45)
    (blob((100, 200), (40, 50, 100, 120, 255)), 0.9, 0.0, 0.5, (60, 20, 160, 70)),
    # a region in the corner, padded: moved inside the image, its size (20 x 20) kept
    (blob((100, 100), (0, 10, 0, 10, 255)), 0.9, 0.5, 0.0, (0, 0, 20, 20)),
    (blob((100, 100), (90, 100, 90, 100, 255)), 0.9, 0.5, 0.0, (80, 80, 100, 100)),
    # a minimum larger than the padded box near an edge: moved inside, 40 x 40
    (blob((100, 100), (95, 100, 2, 4, 255)), 0.9, 0.0, 0.4, (0, 60, 40, 100)),
    # larger than the image: the whole image
    (blob((100, 100), (10, 90, 10, 90, 255)), 0.9, 1.0, 0.0, (0, 0, 100, 100)),
    # no mass at all: the whole image
    (np.zeros((30, 40), np.uint8), 0.9, 0.1, 0.25, (0, 0, 40, 30)),
    # the box keeps the region's aspect where the minimum allows: a thin strip 2 high, 60 wide; min 25 high
    (blob((100, 200), (50, 52, 70, 130, 255)), 0.9, 0.0, 0.25, (70, 38, 130, 64)),
])
def test_crop_box_from_first_principles(weights, mass, padding, min_size, expected):
    assert prompts.crop_box(weights, mass, padding, min_size) == expected


def test_crop_box_mass_picks_the_strong_region_first():
    # 100 pixels of 255 and 100 of 10 in 3600: the mean is 26500 / 3600; the mass is the weight above it
    weights = blob((60, 60), (0, 10, 0, 10, 255), (50, 60, 50, 60, 10))
    mean = 26500 / 3600
    strong, weak = 100 * (255 - mean), 100 * (10 - mean)
    assert prompts.crop_box(weights, 0.9, 0.0, 0.0) == (0, 0, 10, 10)  # 0.9 of the mass lies in the strong block
    assert prompts.crop_box(weights, strong / (strong + weak), 0.0, 0.0) == (0, 0, 10, 10)  # exactly its share
    assert prompts.crop_box(weights, 0.999, 0.0, 0.0) == (0, 0, 60, 60)  # more than its share: both blocks
    # a uniform floor under everything (a soft mask's background) changes nothing: only the excess counts
    assert prompts.crop_box(weights // 2 + 40, 0.9, 0.0, 0.0) == (0, 0, 10, 10)
    assert prompts.crop_box(np.full((20, 30), 77, np.uint8), 0.5, 0.0, 0.0) == (0, 0, 30, 20)  # no mass: all


def test_crop_box_properties_on_random_masks():
    rng = np.random.RandomState(7)
    for _ in range(60):
        height, width = rng.randint(5, 80, size=2)
        weights = (rng.rand(height, width) ** 6 * 255).astype(np.uint8)
        mass, padding, min_size = rng.uniform(0.05, 1), rng.uniform(0, 0.5), rng.uniform(0, 1)
        left, top, right, bottom = prompts.crop_box(weights, mass, padding, min_size)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        excess = np.clip(weights - weights.mean(), 0, None)  # the mask's mass: the weight above the mean
        assert excess[top:bottom, left:right].sum() >= mass * excess.sum() * (1 - 1e-9)
        # the minimum side (rounding only grows the box), the image's side where that is shorter
        assert right - left >= min(width, min_size * width) - 1e-9 and bottom - top >= min(height, min_size * height) - 1e-9


# ----------------------------------------------------------------------------- the styles through the pipeline


def test_crop_writes_the_crop_and_its_box_and_remasking_gives_the_same():
    ds = scenes()
    paper = ImagePrompter("clip", model=DEMO_MODEL, layer_index=2).map(ds)
    cropper = ImagePrompter("clip", model=DEMO_MODEL, layer_index=2, prompt="crop", crop_mass=0.5, image_format="png")
    assert list(cropper.output_features()) == ["masked_image", "heatmap", prompts.CROP_BOX_COLUMN]
    out = cropper.map(ds)
    assert out.features[prompts.CROP_BOX_COLUMN].length == 4
    for row, want, source in zip(out, paper, ds):
        np.testing.assert_array_equal(np.asarray(row["heatmap"]), np.asarray(want["heatmap"]))
        # the box, from the heatmap by the documented rule (the resize is the paper's: LANCZOS over the whole image)
        grid_u8 = (np.asarray(want["heatmap"], np.float32) * np.float32(255)).astype(np.uint8)
        weights = np.asarray(Image.fromarray(grid_u8).resize(source["image"].size, Image.Resampling.LANCZOS))
        box = prompts.crop_box(weights, 0.5, 0.1, 0.25)
        assert tuple(row[prompts.CROP_BOX_COLUMN]) == box
        np.testing.assert_array_equal(np.asarray(row["masked_image"]), np.asarray(source["image"].convert("RGB").crop(box)))
    [maps_prompter] = MapsPrompter.for_prompters([cropper])
    remasked = remask(maps_prompter.map(ds), cropper)
    assert remasked.column_names == out.column_names
    for a, b in zip(remasked, out):
        assert a[prompts.CROP_BOX_COLUMN] == b[prompts.CROP_BOX_COLUMN]
        np.testing.assert_array_equal(np.asarray(a["masked_image"]), np.asarray(b["masked_image"]))


def test_crop_fills_its_box_column_on_passed_through_rows():
    good = scenes()[0]["image"]
    ds = Dataset.from_dict({"image": [good, good, None], "question": ["what is it?", "  ", "what?"]})
    cropper = ImagePrompter("clip", model=DEMO_MODEL, layer_index=2, prompt="crop", on_error="passthrough")
    out = cropper.map(ds, batch_size=2)
    assert out.column_names == ["image", "question", "masked_image", "heatmap", prompts.CROP_BOX_COLUMN, "api_status"]
    rows = list(out)  # row by row
    assert rows[0][prompts.CROP_BOX_COLUMN] is not None and rows[0]["api_status"] == "ok"
    assert [r[prompts.CROP_BOX_COLUMN] for r in rows[1:]] == [None, None]
    assert rows[1]["masked_image"].size == good.size and rows[2]["masked_image"] is None  # unmasked, or none
    all_bad = cropper.map(ds.select([1, 2]), batch_size=2)
    assert all_bad[prompts.CROP_BOX_COLUMN] == [None, None]
    assert all_bad.features[prompts.CROP_BOX_COLUMN] == out.features[prompts.CROP_BOX_COLUMN]
    [maps_prompter] = MapsPrompter.for_prompters([cropper])
    remasked = remask(maps_prompter.map(ds, batch_size=2), cropper)
    assert remasked[prompts.CROP_BOX_COLUMN] == out[prompts.CROP_BOX_COLUMN]


def test_a_sweep_over_the_blur_radius_is_one_maps_pass_and_each_remask_equals_its_direct_run():
    from hf_api_prompt.stages import sweep

    ds = scenes()
    prompters = sweep("clip", model=DEMO_MODEL, layer_index=2, prompt="blur", blur_radius=[0.02, 0.1], image_format="png")
    assert [p.config.blur_radius for p in prompters] == [0.02, 0.1]
    [maps_prompter] = MapsPrompter.for_prompters(prompters)
    maps = maps_prompter.map(ds)
    for prompter in prompters:
        direct, remasked = prompter.map(ds), remask(maps, prompter)
        for a, b in zip(direct, remasked):
            np.testing.assert_array_equal(np.asarray(a["masked_image"]), np.asarray(b["masked_image"]))
    assert variant_name(prompters[0].config) != variant_name(prompters[1].config)
    # a maps dataset's prompter takes the style and its parameter as open fields
    assert maps_prompter.prompter(layer_index=2, prompt="blur", blur_radius=0.3).config.blur_radius == 0.3


def test_the_styles_refuse_a_prompt_device():
    for prompt in ("blur", "crop"):
        with pytest.raises(ValueError, match=f"prompt style '{prompt}' runs on the CPU only"):
            ImagePrompter("clip", model=DEMO_MODEL, layer_index=2, prompt=prompt, prompt_device="cpu")


# ----------------------------------------------------------------------------- parameters in the config and the name


def test_a_style_fills_its_own_parameters_and_refuses_the_others():
    assert (config_of().blur_radius, config_of().crop_mass) == (None, None)
    assert config_of(prompt="blur").blur_radius == 0.05
    crop = config_of(prompt="crop")
    assert (crop.crop_mass, crop.crop_padding, crop.crop_min_size, crop.blur_radius) == (0.7, 0.1, 0.25, None)
    with pytest.raises(ValueError, match=r"blur_radius=0.1 is a parameter of prompt style 'blur', not of prompt='mask'"):
        config_of(blur_radius=0.1)
    with pytest.raises(ValueError, match=r"crop_mass=0.5 is a parameter of prompt style 'crop', not of prompt='blur'"):
        config_of(prompt="blur", crop_mass=0.5)
    # switching style drops the old one's parameters and takes the new one's defaults
    assert config_of(prompt="blur", blur_radius=0.2).replace(prompt="crop") == config_of(prompt="crop")
    assert config_of(prompt="crop", crop_mass=0.5).replace(prompt="mask") == config_of()
    assert config_of(prompt="blur").replace(prompt="blur", blur_radius=0.3).blur_radius == 0.3
    assert isinstance(config_of(prompt="blur", blur_radius=1).blur_radius, float)


@pytest.mark.parametrize("field, value, message", [
    ("blur_radius", 0, r"blur_radius must be a finite number in \(0, inf\), got 0"),
    ("blur_radius", float("inf"), r"blur_radius must be a finite number"),
    ("blur_radius", True, r"blur_radius must be a finite number"),
    ("crop_mass", 0.0, r"crop_mass must be a finite number in \(0, 1\], got 0.0"),
    ("crop_mass", 1.5, r"crop_mass must be a finite number in \(0, 1\]"),
    ("crop_padding", -0.1, r"crop_padding must be a finite number in \[0, inf\)"),
    ("crop_min_size", 1.01, r"crop_min_size must be a finite number in \[0, 1\]"),
    ("crop_min_size", "0.3", r"crop_min_size must be a finite number"),
])
def test_bad_style_parameters(field, value, message):
    prompt = field.split("_")[0]
    with pytest.raises(ValueError, match=message):
        config_of(prompt=prompt, **{field: value})


def test_style_parameters_round_trip_and_old_records_read_as_mask():
    for config in (config_of(prompt="blur", blur_radius=0.02), config_of(prompt="crop", crop_padding=0.0)):
        assert PrompterConfig.from_json(config.to_json()) == config
    old = {k: v for k, v in config_of().to_dict().items() if k not in ("blur_radius", "crop_mass", "crop_padding", "crop_min_size")}
    assert PrompterConfig.from_dict(old) == config_of()


def test_variant_names_spell_the_style_and_its_parameters():
    def named(**changes):
        return variant_name(PrompterConfig(backend="clip", model="ViT-B-16", pretrained=None, layer_index=2,
                                           image_format="png", **changes))

    assert named() == "clip-vit-b-16-random-l2-e5-k3-lanczos-g0"  # unchanged: the names published before the styles
    assert named(prompt="blur") == "clip-vit-b-16-random-l2-e5-k3-lanczos-g0-blur-r0p05"
    assert named(prompt="blur", blur_radius=0.125) == "clip-vit-b-16-random-l2-e5-k3-lanczos-g0-blur-r0p125"
    assert named(prompt="crop") == "clip-vit-b-16-random-l2-e5-k3-lanczos-g0-crop-m0p7-p0p1-s0p25"
    assert (named(prompt="crop", crop_mass=0.5, crop_padding=0, crop_min_size=1, geometry="aligned")
            == "clip-vit-b-16-random-l2-e5-k3-lanczos-g0-aligned-crop-m0p5-p0-s1")


def test_register_prompt_checks_the_parameters():
    with pytest.raises(ValueError, match=r"parameter 'grayscale' is not a PrompterConfig field absent as None"):
        prompts.register_prompt("test-gray", {"grayscale": (0, "g")})
    with pytest.raises(ValueError, match=r"parameter 'blur_radius' belongs to prompt style 'blur'"):
        prompts.register_prompt("test-blur-too", {"blur_radius": (0.1, "r")})
