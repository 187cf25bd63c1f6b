"""Backend clip reads a CLIP checkpoint in transformers layout (issue 13): the same weights give the same masks.

A tiny random open_clip ViT is converted here, with this file's own conversion
(open_clip -> transformers, the opposite way to the backend's), into a transformers
``CLIPModel`` folder with a ``CLIPTokenizer`` built from open_clip's BPE vocabulary
and a ``CLIPImageProcessor``. Both layouts must then give the same heatmaps.
"""

import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_api_prompt import ImagePrompter
from hf_api_prompt.backends.base import portable_config, weights_digest
from hf_api_prompt.publishing import variant_name

from conftest import make_local_clip

LAYERS = 3
SIZE, PATCH, WIDTH, HEADS = 64, 8, 64, 4
TEXT_WIDTH, TEXT_HEADS, EMBED = 32, 2, 32
QUESTIONS = ["Where is the red circle?", "What colour is the big square on the left?", "Is there a dog?"]
# float32 through the same arithmetic in both layouts; only in_proj's concatenation order and the
# transposes differ, and those are exact. 1e-5 leaves room for a different summation order.
ATOL = 1e-5


def byte_characters():
    """CLIP's byte-level alphabet in vocabulary order: the printable bytes as themselves, then the others as chr(256 + n)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    others = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + n) for n in range(len(others))]


def clip_tokenizer(folder: Path):
    """A transformers CLIPTokenizer with open_clip's vocabulary: bytes, their '</w>' forms, the merges, then the two specials."""
    import open_clip
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    tokens = byte_characters()
    tokens = tokens + [t + "</w>" for t in tokens] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(folder)
    return tokenizer


def transformers_state_dict(state: dict) -> dict:
    """open_clip CLIP names -> transformers CLIPModel names (this test's conversion, the other way round)."""
    out = {}

    def tower(src: str, dst: str, layers: int):
        for i in range(layers):
            s, d = f"{src}.resblocks.{i}.", f"{dst}.encoder.layers.{i}."
            for part in ("weight", "bias"):
                q, k, v = state[f"{s}attn.in_proj_{part}"].chunk(3)
                out[f"{d}self_attn.q_proj.{part}"], out[f"{d}self_attn.k_proj.{part}"], out[f"{d}self_attn.v_proj.{part}"] = q, k, v
                out[f"{d}self_attn.out_proj.{part}"] = state[f"{s}attn.out_proj.{part}"]
                out[f"{d}layer_norm1.{part}"] = state[f"{s}ln_1.{part}"]
                out[f"{d}layer_norm2.{part}"] = state[f"{s}ln_2.{part}"]
                out[f"{d}mlp.fc1.{part}"] = state[f"{s}mlp.c_fc.{part}"]
                out[f"{d}mlp.fc2.{part}"] = state[f"{s}mlp.c_proj.{part}"]

    tower("visual.transformer", "vision_model", LAYERS)
    tower("transformer", "text_model", 1)
    for part in ("weight", "bias"):
        out[f"vision_model.pre_layrnorm.{part}"] = state[f"visual.ln_pre.{part}"]
        out[f"vision_model.post_layernorm.{part}"] = state[f"visual.ln_post.{part}"]
        out[f"text_model.final_layer_norm.{part}"] = state[f"ln_final.{part}"]
    out["vision_model.embeddings.class_embedding"] = state["visual.class_embedding"]
    out["vision_model.embeddings.patch_embedding.weight"] = state["visual.conv1.weight"]
    out["vision_model.embeddings.position_embedding.weight"] = state["visual.positional_embedding"]
    out["visual_projection.weight"] = state["visual.proj"].T
    out["text_model.embeddings.token_embedding.weight"] = state["token_embedding.weight"]
    out["text_model.embeddings.position_embedding.weight"] = state["positional_embedding"]
    out["text_projection.weight"] = state["text_projection"].T
    out["logit_scale"] = state["logit_scale"]
    return {k: v.contiguous() for k, v in out.items()}


def clip_config(**vision_changes):
    from transformers import CLIPConfig

    vision = {"hidden_size": WIDTH, "intermediate_size": 4 * WIDTH, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
              "image_size": SIZE, "patch_size": PATCH, "hidden_act": "quick_gelu", **vision_changes}
    text = {"vocab_size": 49408, "hidden_size": TEXT_WIDTH, "intermediate_size": 4 * TEXT_WIDTH, "num_attention_heads": TEXT_HEADS,
            "num_hidden_layers": 1, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=EMBED)


def make_transformers_clip(open_clip_dir: Path, folder: Path) -> Path:
    """The open_clip folder's weights as a transformers CLIPModel checkpoint, with tokenizer and image processor."""
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPModel

    state = load_file(str(open_clip_dir / "open_clip_model.safetensors"))
    model = CLIPModel(clip_config())
    missing, unexpected = model.load_state_dict(transformers_state_dict(state), strict=False)
    assert not unexpected and all("position_ids" in name for name in missing), (missing, unexpected)
    model.save_pretrained(folder)
    clip_tokenizer(folder)
    CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """``(open_clip local-dir: name, transformers folder)`` of the same tiny weights."""
    open_clip_model = make_local_clip(tmp_path_factory.mktemp("oc") / "model", layers=LAYERS, width=WIDTH, heads=HEADS,
                                      image_size=SIZE, patch_size=PATCH, seed=3)
    folder = make_transformers_clip(Path(open_clip_model[len("local-dir:"):]), tmp_path_factory.mktemp("hf") / "tiny-clip")
    return open_clip_model, folder


def images():
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (90, 64), (50, 77)]  # square, wide, tall: the crop offsets differ
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def test_the_two_tokenizers_agree(layouts):
    import open_clip

    open_clip_model, folder = layouts
    theirs = ImagePrompter("clip", model=str(folder), layer_index=0).backend().tokenizer
    ours = open_clip.get_tokenizer(open_clip_model)
    questions = QUESTIONS + ["a " * 100]  # one longer than the context: cut, end-of-text last
    assert torch.equal(theirs(questions), ours(questions))
    assert torch.equal(theirs(questions, context_length=9), ours(questions, context_length=9))


@pytest.mark.parametrize("layer", [0, 2])
@pytest.mark.parametrize("model_form", ["path", "local-dir"])
def test_same_weights_same_heatmaps_and_masks(layouts, layer, model_form):
    open_clip_model, folder = layouts
    model = str(folder) if model_form == "path" else f"local-dir:{folder}"
    batch = {"image": images(), "question": QUESTIONS}
    want = ImagePrompter("clip", model=open_clip_model, layer_index=layer, geometry="aligned")(batch)
    got = ImagePrompter("clip", model=model, layer_index=layer, geometry="aligned")(batch)
    for w, g in zip(want["heatmap"], got["heatmap"]):
        assert np.asarray(w).shape == (SIZE // PATCH, SIZE // PATCH)
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=ATOL)
        assert np.ptp(np.asarray(w)) > 0.5  # a real map, not a constant
    for w, g in zip(want["masked_image"], got["masked_image"]):
        # 8-bit images blended from heatmaps within 1e-5: at most one step of rounding apart.
        w, g = (np.asarray(Image.open(io.BytesIO(stored["bytes"])), dtype=int) for stored in (w, g))
        assert w.shape == g.shape and np.abs(g - w).max() <= 1


def test_raw_maps_of_several_blocks_in_one_pass_agree(layouts):
    open_clip_model, folder = layouts
    pics = images()
    want = ImagePrompter("clip", model=open_clip_model, layer_index=0).backend().maps(pics, QUESTIONS, [0, 1, 2])
    got = ImagePrompter("clip", model=str(folder), layer_index=0).backend().maps(pics, QUESTIONS, [0, 1, 2])
    assert got.boxes == want.boxes
    for layer in (0, 1, 2):
        for name in ("attention", "tokens"):
            w, g = want.layers[layer][name], got.layers[layer][name]
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * float(w.abs().max()))


def test_low_precision_is_open_clips(layouts):
    # bfloat16: both layouts cast the same weights the same way (open_clip's mixed precision,
    # ln in float32) and run in eval mode, so the maps are the same numbers, not just close.
    open_clip_model, folder = layouts
    pics = images()
    want = ImagePrompter("clip", model=open_clip_model, layer_index=2, dtype="bfloat16").backend()
    got = ImagePrompter("clip", model=str(folder), layer_index=2, dtype="bfloat16").backend()
    assert not got.model.training
    assert {n: p.dtype for n, p in got.model.state_dict().items()} == {n: p.dtype for n, p in want.model.state_dict().items()}
    want, got = (backend.maps(pics, QUESTIONS, [0, 2]) for backend in (want, got))
    for layer in (0, 2):
        for name in ("attention", "tokens"):
            assert torch.equal(got.layers[layer][name], want.layers[layer][name])


def test_folder_is_identified_by_its_weights(layouts):
    _, folder = layouts
    prompter = ImagePrompter("clip", model=str(folder), layer_index=1)
    assert prompter.config.weights_sha256 == weights_digest(folder)
    assert prompter.config.pretrained is None
    assert portable_config(prompter.config).model == "local-dir:tiny-clip"
    assert prompter.grid_shape == (SIZE // PATCH, SIZE // PATCH)
    # A plain path and local-dir: name one variant, named by the folder and told apart by the weights.
    by_prefix = ImagePrompter("clip", model=f"local-dir:{folder}", layer_index=1)
    assert variant_name(by_prefix.config) == variant_name(prompter.config)
    assert variant_name(prompter.config).startswith("clip-tiny-clip-l1-")
    assert variant_name(prompter.config) != variant_name(prompter.config.replace(weights_sha256="0" * 64))


def test_nothing_loads_before_the_first_batch(layouts, backend_loads):
    _, folder = layouts
    prompter = ImagePrompter("clip", model=str(folder), layer_index=1)
    prompter.output_features()
    assert backend_loads() == []
    prompter({"image": images()[:1], "question": QUESTIONS[:1]})
    assert len(backend_loads()) == 1


# ----------------------------------------------------------------------------- offline validation
def copy_without(folder: Path, tmp_path: Path, *names: str) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(*names))
    return target


def test_pretrained_must_be_none(layouts):
    with pytest.raises(ValueError, match="pretrained must be None"):
        ImagePrompter("clip", model=str(layouts[1]), pretrained="openai", layer_index=1)


def test_layer_out_of_range(layouts):
    with pytest.raises(ValueError, match=r"layer_index 3 is out of range.*has 3 blocks"):
        ImagePrompter("clip", model=str(layouts[1]), layer_index=3)


def test_wrong_model_type(layouts, tmp_path):
    folder = copy_without(layouts[1], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "siglip"}))
    with pytest.raises(ValueError, match="model_type 'clip'.*'siglip'"):
        ImagePrompter("clip", model=str(folder), layer_index=1)


@pytest.mark.parametrize("missing, match", [
    ("model.safetensors", "has no weights"),
    ("preprocessor_config.json", "no preprocessor_config.json"),
    ("tokenizer*", "no tokenizer"),
])
def test_missing_files(layouts, tmp_path, missing, match):
    folder = copy_without(layouts[1], tmp_path, missing, *(("vocab.json", "merges.txt") if missing == "tokenizer*" else ()))
    with pytest.raises(FileNotFoundError, match=match):
        ImagePrompter("clip", model=str(folder), layer_index=1)


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImagePrompter("clip", model=str(tmp_path / "absent"), layer_index=1)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ImagePrompter("clip", model=str(tmp_path), layer_index=1)


def test_open_clip_folder_without_prefix_says_how_to_name_it(layouts):
    with pytest.raises(FileNotFoundError, match="open_clip_config.json: name it 'local-dir:'"):
        ImagePrompter("clip", model=layouts[0][len("local-dir:"):], layer_index=1)


def test_unsupported_image_processing(layouts, tmp_path):
    folder = copy_without(layouts[1], tmp_path)
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**settings, "size": {"shortest_edge": SIZE + 8}}))
    with pytest.raises(ValueError, match="cannot follow the image processing"):
        ImagePrompter("clip", model=str(folder), layer_index=1)


def test_hub_id_is_checked_by_name_only():
    prompter = ImagePrompter("clip", model="openai/clip-vit-large-patch14-336", layer_index=22)
    assert prompter.config.weights_sha256 is None
    assert variant_name(prompter.config).startswith("clip-openai-clip-vit-large-patch14-336-l22-")
    with pytest.raises(ValueError, match="pretrained must be None"):
        ImagePrompter("clip", model="openai/clip-vit-large-patch14-336", pretrained="openai", layer_index=22)
    with pytest.raises(ValueError, match="Repo id"):
        ImagePrompter("clip", model="org/bad name!", layer_index=1)


def test_the_tests_conversion_matches_transformers_own_forward(layouts):
    # The round trip above could hide two mirrored mistakes; transformers' own CLIPModel forward
    # on this test's conversion must give open_clip's embeddings (float32, same arithmetic: 1e-5).
    import open_clip
    from transformers import CLIPModel

    open_clip_model, folder = layouts
    reference = open_clip.create_model(open_clip_model).eval()
    converted = CLIPModel.from_pretrained(folder).eval()
    pixels = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    tokens = open_clip.get_tokenizer(open_clip_model)(QUESTIONS)
    with torch.no_grad():
        # transformers 5: the projected embedding is the output's pooler_output.
        image = converted.get_image_features(pixel_values=pixels).pooler_output
        text = converted.get_text_features(input_ids=tokens).pooler_output
        torch.testing.assert_close(image, reference.encode_image(pixels), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(text, reference.encode_text(tokens), rtol=1e-5, atol=1e-5)
