"""Backend "llava" on a tiny random LLaVA saved to disk (the real loading path, offline).

The reference for the heatmap is computed here independently: a plain greedy
loop without KV cache, eager attention with ``output_attentions=True``, and
docs/method.md's formula applied by hand.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, load_from_disk
from PIL import Image

from hf_api_prompt import ImagePrompter, RowError, masks
from hf_api_prompt.backends.llava import CAPTURE_ATTENTION, SYSTEM_PROMPT, ImageAttentionCapture
from hf_api_prompt.publishing.variants import variant_name

from compare import assert_heatmaps_close, assert_image_lists_close, stored_image
from conftest import TINY_LLAVA_EOS as EOS, TINY_LLAVA_GRID as GRID, make_local_llava

LAYER = 1
MAX_NEW_TOKENS = 10
QUESTIONS = [
    "what is this?",
    "what color is the cat on the left?",
    "how many dogs are there?",
    "is there a red cat?",
    "where is the blue dog in this picture?",
    "which animal is on the right?",
]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # Non-square, both orientations: (W, H) = (70, 40), (65, 47), ..., (45, 75).
    return [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 70 - 5 * i, 3), dtype=np.uint8)) for i in range(6)]


@pytest.fixture(scope="module")
def prompter(tiny_llava):
    return ImagePrompter("llava", model=tiny_llava, layer_index=LAYER, max_new_tokens=MAX_NEW_TOKENS)


def _pad_square(image, fill):
    width, height = image.size
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


@pytest.fixture(scope="module")
def reference(tiny_llava, images):
    """(heatmap [G, G], generated ids, steps) per sample: eager attention, no cache, docs/method.md by hand."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_llava)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava, attn_implementation="eager").eval()
    fill = tuple(int(x * 255) for x in processor.image_processor.image_mean)
    results = []
    for image, question in zip(images, QUESTIONS):
        text = f"{SYSTEM_PROMPT} USER: <image>\n{question} ASSISTANT:"
        inputs = processor(images=[_pad_square(image, fill)], text=[text], return_tensors="pt")
        ids = inputs["input_ids"]
        image_positions = (ids[0] == 4).nonzero()[:, 0]
        assert len(image_positions) == GRID * GRID
        vectors, generated = [], []
        with torch.no_grad():
            for _ in range(MAX_NEW_TOKENS):
                out = model(input_ids=ids, pixel_values=inputs["pixel_values"], output_attentions=True, use_cache=False)
                probs = out.attentions[LAYER][0, :, -1, :]  # [heads, keys], softmax over all keys
                on_image = probs[:, image_positions]
                vectors.append((on_image / on_image.sum(-1, keepdim=True)).mean(0))
                token = int(out.logits[0, -1].argmax())
                generated.append(token)
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
                if token == EOS:
                    break
        heatmap = torch.stack(vectors).mean(0).reshape(GRID, GRID)
        results.append((heatmap, generated, len(vectors)))
    return results


# ------------------------------------------------------------------------------------------ config
def test_defaults_do_not_load_anything():
    prompter = ImagePrompter("llava")
    config = prompter.config
    assert (config.model, config.pretrained, config.layer_index) == ("llava-hf/llava-1.5-13b-hf", None, 20)
    assert (config.enhance_coe, config.kernel_size, config.interpolation) == (5.0, 3, "LANCZOS")
    assert (config.max_new_tokens, config.answer_column, config.weights_sha256) == (20, "api_answer", None)
    assert prompter._backend is None


def test_validation_offline(tiny_llava, tmp_path):
    digest = hashlib.sha256(Path(tiny_llava, "model.safetensors").read_bytes()).hexdigest()
    for name in (tiny_llava, "local-dir:" + tiny_llava):
        prompter = ImagePrompter("llava", model=name, layer_index=2)
        assert prompter.config.weights_sha256 == digest
        assert prompter.grid_shape == (GRID, GRID)
    with pytest.raises(ValueError, match="out of range.*3 decoder layers"):
        ImagePrompter("llava", model=tiny_llava, layer_index=3)
    with pytest.raises(ValueError, match="pretrained must be None"):
        ImagePrompter("llava", model=tiny_llava, layer_index=1, pretrained="x")
    with pytest.raises(ValueError, match="max_new_tokens"):
        ImagePrompter("llava", model=tiny_llava, layer_index=1, max_new_tokens=0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        ImagePrompter("llava", model=str(tmp_path), layer_index=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImagePrompter("llava", model=str(tmp_path / "missing"), layer_index=1)
    with pytest.raises(ValueError, match="Repo id"):
        ImagePrompter("llava", model="not a repo id!")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    with pytest.raises(ValueError, match="model_type 'llama'"):
        ImagePrompter("llava", model=str(tmp_path), layer_index=1)


def test_sharded_weights_hash_all_files(tmp_path):
    directory = make_local_llava(tmp_path / "sharded", max_shard_size="100KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    manifest = "".join(
        f"{hashlib.sha256((tmp_path / 'sharded' / name).read_bytes()).hexdigest()}  {name}\n" for name in shards
    )
    prompter = ImagePrompter("llava", model=directory, layer_index=0)
    assert prompter.config.weights_sha256 == hashlib.sha256(manifest.encode()).hexdigest()


# ------------------------------------------------------------------------------------- the method
def test_heatmap_matches_eager_reference(prompter, images, reference):
    backend = prompter.backend()
    for i, (image, question) in enumerate(zip(images, QUESTIONS)):
        result = backend.generate([image], [question])
        heatmap, generated, steps = reference[i]
        assert result.steps == [steps] == [len(generated)]
        assert result.answers == [backend.tokenizer.decode(generated, skip_special_tokens=True).strip()]
        np.testing.assert_allclose(result.heatmaps[LAYER][0].numpy(), heatmap.numpy(), atol=1e-5, rtol=0)
    # Mixed stopping points: the test exercises EOS before max_new_tokens and hitting it.
    counts = [steps for _, _, steps in reference]
    assert min(counts) < MAX_NEW_TOKENS and max(counts) == MAX_NEW_TOKENS


def test_batch_equals_one_at_a_time_and_counts_own_steps(prompter, images, reference):
    backend = prompter.backend()
    result = backend.generate(images, QUESTIONS)  # mixed prompt lengths -> left padding; mixed stops
    assert result.steps == [steps for _, _, steps in reference]
    for i, (heatmap, generated, _) in enumerate(reference):
        assert result.answers[i] == backend.tokenizer.decode(generated, skip_special_tokens=True).strip()
        np.testing.assert_allclose(result.heatmaps[LAYER][i].numpy(), heatmap.numpy(), atol=1e-5, rtol=0)
    # The prompter writes the mask of docs/method.md step 4 and the answers.
    out = prompter({"image": images[:3], "question": QUESTIONS[:3]})
    for i in range(3):
        want = masks.attention_mask(reference[i][0][None], 5.0, 3)[0].numpy()
        np.testing.assert_allclose(out["heatmap"][i], want, atol=1e-4, rtol=0)
    assert out["api_answer"] == result.answers[:3]


def test_relative_attention_divides_by_a_generic_prefill(tiny_llava, images, reference):
    """ViCrop's relative attention: the question's heatmap over ONE prefill's heatmap for the generic instruction."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_llava)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava, attn_implementation="eager").eval()
    fill = tuple(int(x * 255) for x in processor.image_processor.image_mean)
    generic = []
    for image in images:
        text = f"{SYSTEM_PROMPT} USER: <image>\nWrite a general description of the image. ASSISTANT:"
        inputs = processor(images=[_pad_square(image, fill)], text=[text], return_tensors="pt")
        on_image = (inputs["input_ids"][0] == 4).nonzero()[:, 0]
        with torch.no_grad():
            probs = model(**inputs, output_attentions=True, use_cache=False).attentions[LAYER][0, :, -1, on_image]
        generic.append((probs / probs.sum(-1, keepdim=True)).mean(0).reshape(GRID, GRID))
    relative = ImagePrompter("llava", model=tiny_llava, layer_index=LAYER, max_new_tokens=MAX_NEW_TOKENS,
                             relative_attention=True)
    result = relative.backend().generate(images, QUESTIONS)  # batched: the generic prefill is batched too
    assert result.steps == [steps for _, _, steps in reference]  # the answers are the question's
    for i, ((heatmap, _, _), denominator) in enumerate(zip(reference, generic)):
        # Both vectors are within ~1e-7 of the reference (float32 sums of <= 64 terms near 1/64); their ratio near 1
        # is then within ~1e-5 relative.
        np.testing.assert_allclose(result.heatmaps[LAYER][i].numpy(), (heatmap / denominator).numpy(), rtol=1e-5, atol=0)
        assert not np.allclose((heatmap / denominator).numpy(), heatmap.numpy() * GRID * GRID, rtol=1e-2)  # not plain
    out = relative({"image": images[:2], "question": QUESTIONS[:2]})
    for i in range(2):
        want = masks.attention_mask((reference[i][0] / generic[i])[None], 5.0, 3)[0].numpy()
        np.testing.assert_allclose(out["heatmap"][i], want, atol=1e-4, rtol=0)


def test_relative_attention_is_a_recorded_option(tiny_llava):
    plain = ImagePrompter("llava", model=tiny_llava, layer_index=LAYER, max_new_tokens=MAX_NEW_TOKENS)
    off = ImagePrompter("llava", model=tiny_llava, layer_index=LAYER, max_new_tokens=MAX_NEW_TOKENS, relative_attention=False)
    on = ImagePrompter("llava", model=tiny_llava, layer_index=LAYER, max_new_tokens=MAX_NEW_TOKENS, relative_attention=True)
    assert plain.config == off.config and plain.config.relative_attention is None  # False is plain attention, stored unset
    # Local weights: the name ends in the config's hash, which differs with the option as well.
    on_name, plain_name = variant_name(on.config), variant_name(plain.config)
    assert on_name.rsplit("-h", 1)[0] == plain_name.rsplit("-h", 1)[0] + "-rel" and on_name != plain_name
    with pytest.raises(TypeError, match="relative_attention must be True, False or None"):
        ImagePrompter("llava", model=tiny_llava, layer_index=LAYER, relative_attention="yes")
    with pytest.raises(ValueError, match="relative_attention applies to backend 'llava', not to 'clip'"):
        ImagePrompter("clip", model="ViT-B-16", pretrained=None, layer_index=0, relative_attention=True)


def test_capture_is_scoped_to_one_layer(prompter, images):
    backend = prompter.backend()
    layers = backend.model.model.language_model.layers
    shared = layers[0].self_attn.config
    inputs = backend.inputs(images[:1], QUESTIONS[:1])
    positions = backend.image_positions(inputs["input_ids"])
    with pytest.raises(KeyError, match="boom"):
        with ImageAttentionCapture(layers[LAYER].self_attn, positions) as capture:
            assert layers[LAYER].self_attn.config._attn_implementation == CAPTURE_ATTENTION
            assert all(layers[i].self_attn.config is shared for i in range(len(layers)) if i != LAYER)
            assert backend.model.config.text_config._attn_implementation == "sdpa"
            with torch.inference_mode():
                backend.model(**inputs)
            assert len(capture.steps) == 1
            raise KeyError("boom")
    assert all(layer.self_attn.config is shared for layer in layers)
    assert shared._attn_implementation == "sdpa"
    assert "_hf_api_prompt_capture" not in layers[LAYER].self_attn.__dict__


def test_padding_geometry(prompter, tiny_llava, images):
    backend = prompter.backend()
    wide, tall = Image.new("RGB", (80, 40), "white"), Image.new("RGB", (30, 60), "white")
    # The model sees the image centred on a square of the processor's mean colour.
    pixels = backend.inputs([wide], ["what is this?"])["pixel_values"][0]
    mean = torch.tensor(backend.processor.image_processor.image_mean)[:, None]
    std = torch.tensor(backend.processor.image_processor.image_std)[:, None]
    fill = (torch.tensor(backend.fill, dtype=torch.float32)[:, None] / 255 - mean) / std
    white = (1 - mean) / std
    assert torch.allclose(pixels[:, :12].reshape(3, -1), fill, atol=1e-5)  # top band: 14 of 56 rows
    assert torch.allclose(pixels[:, -12:].reshape(3, -1), fill, atol=1e-5)
    assert torch.allclose(pixels[:, 16:40].reshape(3, -1), white, atol=1e-5)
    result = backend.generate([wide, tall], ["what is this?", "what is this?"])
    assert result.boxes == [(0.0, 2.0, 8.0, 6.0), (2.0, 0.0, 6.0, 8.0)]
    # Nearest-neighbour pixels, white image, grayscale 0: the masked image shows the mask itself.
    for geometry, rows, cols in (("paper", (0, 8), (0, 8)), ("aligned", (2, 6), (0, 8))):
        p = ImagePrompter("llava", model=tiny_llava, layer_index=LAYER, max_new_tokens=MAX_NEW_TOKENS,
                          geometry=geometry, interpolation="nearest")
        out = p({"image": [wide], "question": ["what is this?"]})
        grid = masks.mask_to_uint8(out["heatmap"][0]).astype(int)
        got = np.asarray(stored_image(out["masked_image"][0]))[:, :, 0].astype(int)
        y = rows[0] + (np.arange(40) + 0.5) * (rows[1] - rows[0]) / 40
        x = cols[0] + (np.arange(80) + 0.5) * (cols[1] - cols[0]) / 80
        want = grid[np.floor(y).astype(int)][:, np.floor(x).astype(int)]
        assert np.abs(got - want).max() <= 1, geometry


def test_grayscale_is_honoured(tiny_llava, images):
    outputs = {}
    for gray in (0, 200):
        p = ImagePrompter("llava", model=tiny_llava, layer_index=LAYER, max_new_tokens=MAX_NEW_TOKENS, grayscale=gray)
        assert p.config.grayscale == gray
        outputs[gray] = p({"image": images[:1], "question": QUESTIONS[:1]})
    mask = outputs[0]["heatmap"][0]
    np.testing.assert_array_equal(mask, outputs[200]["heatmap"][0])
    for gray, out in outputs.items():
        weights = masks.mask_to_pixels(masks.mask_to_uint8(mask), images[0].size, Image.Resampling.LANCZOS)
        want = masks.blend(images[0], weights, gray)
        np.testing.assert_array_equal(np.asarray(stored_image(out["masked_image"][0])), np.asarray(want))
    assert not np.array_equal(*(np.asarray(stored_image(outputs[gray]["masked_image"][0])) for gray in (0, 200)))


def test_bad_rows(tiny_llava, images):
    batch = {"image": [images[0], None, images[1]], "question": [QUESTIONS[0], QUESTIONS[1], None]}
    strict = ImagePrompter("llava", model=tiny_llava, layer_index=LAYER, max_new_tokens=MAX_NEW_TOKENS)
    with pytest.raises(RowError, match="row 8: image is missing"):
        strict(batch, [7, 8, 9])
    lenient = ImagePrompter("llava", model=tiny_llava, layer_index=LAYER, max_new_tokens=MAX_NEW_TOKENS,
                            on_error="passthrough")
    out = lenient(batch, [7, 8, 9])
    assert out["api_status"][0] == "ok" and "image is missing" in out["api_status"][1]
    assert "question is missing" in out["api_status"][2]
    assert out["heatmap"][1] is None and out["api_answer"][1] is None and out["api_answer"][2] is None
    np.testing.assert_array_equal(np.asarray(stored_image(out["masked_image"][2])), np.asarray(images[1]))  # unmasked
    assert isinstance(out["api_answer"][0], str)


# ---------------------------------------------------------------------------------------- datasets
def test_map_cache_hit_and_num_proc(tiny_llava, images, tmp_path):
    Dataset.from_dict({"image": images[:4], "question": QUESTIONS[:4]}).save_to_disk(str(tmp_path / "ds"))
    ds = load_from_disk(str(tmp_path / "ds"))
    params = dict(model=tiny_llava, layer_index=LAYER, max_new_tokens=MAX_NEW_TOKENS)
    first = ImagePrompter("llava", **params)
    out = first.map(ds, batch_size=2)
    assert out.features["heatmap"].shape == (GRID, GRID) and out.features["api_answer"].dtype == "string"
    again = ImagePrompter("llava", **params)
    cached = again.map(ds, batch_size=2)
    assert again._backend is None  # nothing was computed: a cache hit
    assert cached.cache_files == out.cache_files
    # Forked workers run one torch thread, this process more: equal up to float32 reduction order.
    parallel = ImagePrompter("llava", **params).map(ds, batch_size=2, num_proc=2, load_from_cache_file=False)
    assert parallel["api_answer"] == out["api_answer"]
    assert_heatmaps_close(parallel["heatmap"], out["heatmap"])
    assert_image_lists_close(parallel["masked_image"], out["masked_image"])
