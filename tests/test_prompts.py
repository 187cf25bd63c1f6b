"""A prompt style is one registered function: the config selects it, names, records and remasking follow.

The style here is the test's own (the image's pixels kept where the mask is LOW, the
opposite of the paper's); the library's part is the plumbing, checked against the
"mask" run of the same parameters: same heatmap, and the style applied to it.
"""

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image

from hf_api_prompt import ImagePrompter, masks, prompts
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
