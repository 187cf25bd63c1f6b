"""Backend "llava" on the other generative families: Qwen2-VL, Qwen2.5-VL and LLaVA-NeXT (tiny, random, offline).

The reference heatmaps are computed here independently, as in test_llava.py: a
plain greedy loop without KV cache, eager attention with ``output_attentions=True``,
the prompt and the image preparation written out by hand, docs/method.md's
formula (attention of the last query over the grid's image tokens, renormalised,
mean over heads, mean over the generated steps).
"""

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from hf_api_prompt import ImagePrompter, masks

from conftest import (
    TINY_LLAVA_EOS,
    TINY_LLAVA_NEXT_GRID,
    TINY_QWEN_MERGE,
    TINY_QWEN_PATCH,
    make_local_llava_next,
    make_local_qwen2_vl,
)

LAYER = 1
MAX_NEW_TOKENS = 8
QWEN_CELLS = 24  # the documented fixed grid of Qwen2-VL (docs/method.md)
QWEN_SIDE = QWEN_CELLS * TINY_QWEN_PATCH * TINY_QWEN_MERGE
QUESTIONS = [
    "what is this?",
    "what color is the cat on the left?",
    "how many dogs are there?",
    "where is the blue dog in this picture?",
]


@pytest.fixture(scope="module")
def images():
    """Mixed sizes and orientations: (W, H) = (70, 40), (45, 90), (100, 100), (130, 60)."""
    rng = np.random.default_rng(1)
    sizes = [(70, 40), (45, 90), (100, 100), (130, 60)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def tiny_qwen(request, tmp_path_factory):
    return make_local_qwen2_vl(tmp_path_factory.mktemp(request.param), model_type=request.param)


@pytest.fixture(scope="module")
def tiny_llava_next(tmp_path_factory):
    return make_local_llava_next(tmp_path_factory.mktemp("llava_next"))


def _letterbox(image, fill):
    width, height = image.size
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _greedy_reference(model, inputs, image_positions, eos, grow):
    """(heatmap vector, generated ids, the prefill's vector) for one sample: no cache, eager attention, the formula by hand."""
    vectors, generated = [], []
    with torch.no_grad():
        for _ in range(MAX_NEW_TOKENS):
            out = model(**inputs, output_attentions=True, use_cache=False)
            probs = out.attentions[LAYER][0, :, -1, :]  # [heads, keys], softmax over all keys
            on_image = probs[:, image_positions]
            vectors.append((on_image / on_image.sum(-1, keepdim=True)).mean(0))
            token = int(out.logits[0, -1].argmax())
            generated.append(token)
            inputs = grow(inputs, token)
            if token == eos:
                break
    return torch.stack(vectors).mean(0), generated, vectors[0]


def _append(inputs, token, *zero_extended):
    inputs = dict(inputs)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([[token]])], dim=1)
    for name in zero_extended:  # per-token side inputs: a text token is type 0
        inputs[name] = torch.cat([inputs[name], torch.zeros_like(inputs[name][:, :1])], dim=1)
    return inputs


def _qwen_reference(directory, images):
    import transformers
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(directory)
    model_class = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
                   "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration}[config.model_type]
    model = model_class.from_pretrained(directory, attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(directory)
    fill = tuple(int(x * 255) for x in processor.image_processor.image_mean)
    image_token = config.image_token_id
    eos = model.generation_config.eos_token_id
    results = []
    for image, question in zip(images, QUESTIONS):
        text = f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
        pinned = {"shortest_edge": QWEN_SIDE ** 2, "longest_edge": QWEN_SIDE ** 2}  # exactly QWEN_SIDE squared
        inputs = dict(processor(images=[_letterbox(image, fill)], text=[text], size=pinned, return_tensors="pt"))
        cells = QWEN_CELLS * TINY_QWEN_MERGE
        assert inputs["image_grid_thw"].tolist() == [[1, cells, cells]]
        inputs.pop("attention_mask")
        positions = (inputs["input_ids"][0] == image_token).nonzero()[:, 0]
        assert len(positions) == QWEN_CELLS ** 2
        vector, generated, prefill = _greedy_reference(
            model, inputs, positions, eos, lambda x, token: _append(x, token, "mm_token_type_ids")
        )
        results.append((vector.reshape(QWEN_CELLS, QWEN_CELLS), generated, prefill.reshape(QWEN_CELLS, QWEN_CELLS)))
    return results


def _llava_next_reference(directory, images):
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    model = LlavaNextForConditionalGeneration.from_pretrained(directory, attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(directory)
    grid = TINY_LLAVA_NEXT_GRID
    results, counts = [], []
    for image, question in zip(images, QUESTIONS):
        inputs = dict(processor(images=[image], text=[f"USER: <image>\n{question} ASSISTANT:"], return_tensors="pt"))
        inputs.pop("attention_mask")
        image_tokens = (inputs["input_ids"][0] == 4).nonzero()[:, 0]
        counts.append(len(image_tokens))
        # The base image comes first: the first grid * grid image tokens, consecutive.
        base = image_tokens[: grid * grid]
        assert bool((base == base[0] + torch.arange(grid * grid)).all())
        vector, generated, prefill = _greedy_reference(model, inputs, base, TINY_LLAVA_EOS, _append)
        results.append((vector.reshape(grid, grid), generated, prefill.reshape(grid, grid)))
    assert len(set(counts)) > 1, counts  # different tile counts: different numbers of image tokens
    return results


@pytest.fixture(scope="module")
def qwen_reference(tiny_qwen, images):
    return _qwen_reference(tiny_qwen, images)


@pytest.fixture(scope="module")
def llava_next_reference(tiny_llava_next, images):
    return _llava_next_reference(tiny_llava_next, images)


def _square_box(size, cells):
    """Where a (W, H) image lies on the grid of its centred square (independent of the package's square_box)."""
    width, height = size
    side = max(width, height)
    x0, y0 = (side - width) // 2, (side - height) // 2
    return tuple(v * cells / side for v in (x0, y0, x0 + width, y0 + height))


# ------------------------------------------------------------------------------------------ config
def test_family_from_config_offline(tiny_qwen, tiny_llava_next, tmp_path):
    import json

    assert ImagePrompter("llava", model=tiny_qwen, layer_index=1).grid_shape == (QWEN_CELLS, QWEN_CELLS)
    prompter = ImagePrompter("llava", model=tiny_llava_next, layer_index=1)
    assert prompter.grid_shape == (TINY_LLAVA_NEXT_GRID, TINY_LLAVA_NEXT_GRID)
    assert prompter._backend is None and prompter.config.weights_sha256 is not None
    for directory in (tiny_qwen, tiny_llava_next):
        with pytest.raises(ValueError, match="out of range.*2 decoder layers"):
            ImagePrompter("llava", model=directory, layer_index=2)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    with pytest.raises(ValueError, match=r"model types \['llava', 'llava_next', 'qwen2_5_vl', 'qwen2_vl'\].*'idefics3'"):
        ImagePrompter("llava", model=str(tmp_path), layer_index=1)


def test_qwen_pin_gives_the_fixed_grid_for_every_square():
    """The processor's smart_resize, with the family's size bounds, maps any square side to the fixed side."""
    from transformers import Qwen2VLConfig
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from hf_api_prompt.backends.llava import Qwen2VLFamily

    for patch, merge in ((14, 2), (16, 2), (TINY_QWEN_PATCH, TINY_QWEN_MERGE)):
        config = Qwen2VLConfig(vision_config=dict(patch_size=patch, spatial_merge_size=merge))
        family = Qwen2VLFamily(config, "m")
        assert family.grid() == (QWEN_CELLS, QWEN_CELLS)
        size = family.processor_kwargs()["size"]
        side = QWEN_CELLS * patch * merge
        for square in range(1, 4 * side):
            got = smart_resize(square, square, factor=patch * merge,
                               min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
            assert got == (side, side), (patch, square, got)


def test_llava_next_refuses_a_cropped_base_view(tiny_llava_next, tmp_path):
    import shutil

    from transformers import AutoProcessor

    directory = tmp_path / "cropped"
    shutil.copytree(tiny_llava_next, directory)
    processor = AutoProcessor.from_pretrained(directory)
    processor.image_processor.size = {"shortest_edge": 64}  # base view resized to 64, then cropped to 56
    processor.save_pretrained(directory)
    prompter = ImagePrompter("llava", model=str(directory), layer_index=LAYER)
    with pytest.raises(ValueError, match="base image resized to the tower's 56x56 input as a whole"):
        prompter.backend()


# ------------------------------------------------------------------------------------- the method
def _check(result, reference, tokenizer):
    for i, (heatmap, generated, _) in enumerate(reference):
        assert result.steps[i] == len(generated)
        assert result.answers[i] == tokenizer.decode(generated, skip_special_tokens=True).strip()
        np.testing.assert_allclose(result.heatmaps[LAYER][i].numpy(), heatmap.numpy(), atol=1e-5, rtol=0)


def test_qwen_matches_eager_reference_alone_and_batched(tiny_qwen, images, qwen_reference):
    backend = ImagePrompter("llava", model=tiny_qwen, layer_index=LAYER, max_new_tokens=MAX_NEW_TOKENS).backend()
    for i in range(len(images)):
        _check(backend.generate(images[i:i + 1], QUESTIONS[i:i + 1]), qwen_reference[i:i + 1], backend.tokenizer)
    batched = backend.generate(images, QUESTIONS)  # mixed image sizes and prompt lengths: left padding
    _check(batched, qwen_reference, backend.tokenizer)
    assert min(batched.steps) < MAX_NEW_TOKENS == max(batched.steps)  # EOS before the limit and at it
    assert batched.boxes == [_square_box(image.size, QWEN_CELLS) for image in images]


def test_llava_next_matches_eager_reference_alone_and_batched(tiny_llava_next, images, llava_next_reference):
    backend = ImagePrompter("llava", model=tiny_llava_next, layer_index=LAYER, max_new_tokens=MAX_NEW_TOKENS).backend()
    for i in range(len(images)):
        _check(backend.generate(images[i:i + 1], QUESTIONS[i:i + 1]), llava_next_reference[i:i + 1], backend.tokenizer)
    batched = backend.generate(images, QUESTIONS)  # different tile counts: different image-token counts
    _check(batched, llava_next_reference, backend.tokenizer)
    assert min(batched.steps) < MAX_NEW_TOKENS == max(batched.steps)
    # The base view stretches the whole image over the grid.
    assert batched.boxes == [(0.0, 0.0, 8.0, 8.0)] * len(images)


# ---------------------------------------------------------------------------------------- datasets
def _check_map(directory, images, reference):
    ds = Dataset.from_dict({"image": images, "question": QUESTIONS})
    prompter = ImagePrompter("llava", model=directory, layer_index=LAYER, max_new_tokens=MAX_NEW_TOKENS)
    out = prompter.map(ds, batch_size=3, load_from_cache_file=False)  # batches of 3 and 1
    cells = reference[0][0].shape[0]
    assert out.features["heatmap"].shape == (cells, cells)
    for i, (heatmap, _, _) in enumerate(reference):
        want = masks.attention_mask(heatmap[None], 5.0, 3)[0].numpy()
        np.testing.assert_allclose(np.asarray(out[i]["heatmap"]), want, atol=1e-4, rtol=0)
        assert out[i]["masked_image"].size == images[i].size


def test_qwen_map_writes_masks(tiny_qwen, images, qwen_reference):
    _check_map(tiny_qwen, images, qwen_reference)


def test_llava_next_map_writes_masks(tiny_llava_next, images, llava_next_reference):
    _check_map(tiny_llava_next, images, llava_next_reference)



# ------------------------------------------------------------------------------ one more prefill
def _check_prefill(directory, images, reference):
    """``capturing`` + ``prompt_inputs``: a plain forward call (no generation) records the prefill's map."""
    backend = ImagePrompter("llava", model=directory, layer_index=LAYER).backend()
    inputs = backend.prompt_inputs(images, [backend.prompt(q) for q in QUESTIONS])
    with torch.inference_mode(), backend.capturing([0, LAYER], inputs["input_ids"]) as captures:
        backend.model(**inputs)
    assert len(captures[0].steps) == len(captures[LAYER].steps) == 1
    got = captures[LAYER].heatmaps([1] * len(images))
    for i, (_, _, prefill) in enumerate(reference):
        np.testing.assert_allclose(got[i].reshape(prefill.shape).numpy(), prefill.numpy(), atol=1e-5, rtol=0)


def test_qwen_one_prefill_through_the_capture(tiny_qwen, images, qwen_reference):
    _check_prefill(tiny_qwen, images, qwen_reference)


def test_llava_next_one_prefill_through_the_capture(tiny_llava_next, images, llava_next_reference):
    _check_prefill(tiny_llava_next, images, llava_next_reference)
