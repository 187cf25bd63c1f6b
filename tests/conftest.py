import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The authors' outputs, vendored (tests/fixtures/golden/README.md); HF_API_PROMPT_GOLDEN points at another copy.
GOLDEN = Path(os.environ.get("HF_API_PROMPT_GOLDEN", ROOT / "tests" / "fixtures" / "golden" / "clip_public"))
GOLDEN_MODEL = "local-dir:" + str(GOLDEN / "model")


@pytest.fixture
def backend_loads(monkeypatch, tmp_path):
    """Record each backend construction (any backend), in num_proc workers too: read() gives ``[(pid, torch threads), ...]``."""
    import torch

    from hf_api_prompt.backends.base import Backend

    log = tmp_path / "backend_loads.txt"
    original = Backend.__init__

    def recording_init(self, *args, **kwargs):
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()} {torch.get_num_threads()}\n")
        original(self, *args, **kwargs)

    monkeypatch.setattr(Backend, "__init__", recording_init)

    def read():
        return [tuple(map(int, line.split())) for line in log.read_text().splitlines()] if log.exists() else []

    return read


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"golden fixtures not found at {GOLDEN} (tests/fixtures/golden/ in the repository, or HF_API_PROMPT_GOLDEN)")
    return GOLDEN


@pytest.fixture(scope="session")
def golden_manifest(golden_dir) -> dict:
    """The golden fixtures' manifest.json: images, layers, parameter sets, cases."""
    import json

    return json.loads((golden_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def golden_dataset(golden_dir, golden_manifest):
    """The golden images as a dataset: ``id``, ``image`` (an ``Image`` feature read from the files), ``question``."""
    from datasets import Dataset, Image as ImageFeature

    rows = golden_manifest["images"]
    ds = Dataset.from_dict(
        {
            "id": [r["id"] for r in rows],
            "image": [str(golden_dir / r["file"]) for r in rows],
            "question": [r["question"] for r in rows],
        }
    )
    return ds.cast_column("image", ImageFeature())


def make_local_clip(directory: Path, *, image_size=64, patch_size=8, width=64, layers=3, heads=4, seed=0) -> str:
    """Build a tiny random open_clip ViT from a config and save it in the local-dir layout."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "head_width": width // heads, "patch_size": patch_size},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    directory.mkdir(parents=True, exist_ok=True)
    preprocess = {"size": image_size, "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
                  "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors"))
    return "local-dir:" + str(directory)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """``local-dir:`` name of a tiny random CLIP (64 px input, 8x8 grid, 3 blocks)."""
    return make_local_clip(tmp_path_factory.mktemp("tiny_clip"))


#: The tiny LLaVA of :func:`make_local_llava`: its patch grid (56 px input, 7 px patches) and end-of-sequence id.
TINY_LLAVA_GRID = 8
TINY_LLAVA_EOS = 2
_LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_LLAVA_WORDS = sorted(set(
    "a an the is are what where which color of in on this that cat cats dog dogs red blue green picture image there "
    "how many left right USER ASSISTANT : ? . , chat between curious human and artificial intelligence assistant gives "
    "helpful detailed polite answers to human's questions yes no one two three animal big small".split()
))


def _word_tokenizer(extra_specials, bos=True, extra_words=()):
    """A word-level tokenizer: ids 0-3 ``<unk> <s> </s> <pad>``, then ``extra_specials``, :data:`_LLAVA_WORDS`, ``extra_words``.

    Returns ``(tokenizer, vocab)``; ``bos`` prefixes every text with ``<s>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"] + list(extra_specials)
    vocab = {token: i for i, token in enumerate(specials + _LLAVA_WORDS + list(extra_words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if bos:
        backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=list(extra_specials),
    )
    return tokenizer, vocab


def _peaked(layers):
    """Scale up query and key projections: peaked attention, heatmaps far from uniform."""
    import torch

    with torch.no_grad():
        for layer in layers:
            layer.self_attn.q_proj.weight.mul_(10.0)
            layer.self_attn.k_proj.weight.mul_(10.0)


def make_local_llava(directory, *, seed=0, max_shard_size=None):
    """Save a tiny random LLaVA (CLIP 56 px / 7 px patches -> 8x8 grid; Llama 3 layers, GQA) with its processor.

    The end-of-sequence row of the LM head copies the row of ":" scaled by 1.01, so
    greedy answers end wherever they would have said ":": some samples stop early,
    others run to ``max_new_tokens`` (deterministic for the seed). Query and key
    projections are scaled up so attention is peaked: averaging the wrong steps
    then moves a heatmap by ~1e-2, far above the tests' 1e-5.
    """
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer, vocab = _word_tokenizer(["<image>"])
    image_processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=7, vision_feature_select_strategy="default",
        chat_template=_LLAVA_CHAT_TEMPLATE, num_additional_image_tokens=1,
    )
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=56, patch_size=7, hidden_size=32,
                           intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=TINY_LLAVA_EOS, pad_token_id=3),
        image_token_index=4,
        image_seq_length=TINY_LLAVA_GRID * TINY_LLAVA_GRID,
    )
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight[TINY_LLAVA_EOS] = model.lm_head.weight[vocab[":"]] * 1.01
    _peaked(model.model.language_model.layers)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    processor.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> str:
    """Folder of a tiny random LLaVA (:func:`make_local_llava`, seed 0)."""
    return make_local_llava(tmp_path_factory.mktemp("tiny_llava"))


#: :func:`make_local_llava_next`'s base grid (56 px / 7 px patches) and its anyres resolutions (1 to 4 tiles of 56 px).
TINY_LLAVA_NEXT_GRID = 8
TINY_LLAVA_NEXT_PINPOINTS = [[56, 112], [112, 56], [112, 112]]


def make_local_llava_next(directory, *, seed=2, eos_like="USER"):
    """Save a tiny random LLaVA-NeXT (CLIP 56 px / 7 px patches, anyres up to 2x2 tiles; Llama 2 layers) with its processor.

    Same tokenizer and chat template as :func:`make_local_llava`, no system line; the
    EOS row of the LM head copies the row of ``eos_like`` scaled by 1.01 (for seed 2,
    "USER": some of the tests' answers stop early, others run to the limit).
    """
    import torch
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor, LlavaNextProcessor

    tokenizer, vocab = _word_tokenizer(["<image>"])
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, image_grid_pinpoints=TINY_LLAVA_NEXT_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=7, vision_feature_select_strategy="default",
        chat_template=_LLAVA_CHAT_TEMPLATE, num_additional_image_tokens=1,
    )
    torch.manual_seed(seed)
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=56, patch_size=7, hidden_size=32,
                           intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=1, eos_token_id=TINY_LLAVA_EOS, pad_token_id=3),
        image_token_index=4,
        image_grid_pinpoints=TINY_LLAVA_NEXT_PINPOINTS,
        vision_feature_select_strategy="default",
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight[TINY_LLAVA_EOS] = model.lm_head.weight[vocab[eos_like]] * 1.01
    _peaked(model.model.language_model.layers)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


_QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{% else %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: :func:`make_local_qwen2_vl`'s patch and merge sizes: 2 x 2 px patches, 2 x 2 merged (one image token per 4 x 4 px).
TINY_QWEN_PATCH, TINY_QWEN_MERGE = 2, 2


def make_local_qwen2_vl(directory, *, seed=0, model_type="qwen2_vl"):
    """Save a tiny random Qwen2-VL (or ``model_type="qwen2_5_vl"``: Qwen2.5-VL) with its processor.

    Vision tower of 2 blocks on 2 px patches merged 2 x 2; text model of 2 layers
    (hidden 32, 4 heads, 2 key-value heads, mrope). ``<|im_end|>`` ends a turn and
    its LM-head row copies ":" scaled by 1.01, as in :func:`make_local_llava`.
    """
    import torch
    import transformers

    tokenizer, vocab = _word_tokenizer(_QWEN_SPECIALS, bos=False, extra_words=["user", "assistant", "system"])
    tokenizer.eos_token = "<|im_end|>"
    eos = vocab["<|im_end|>"]
    image_processor = transformers.Qwen2VLImageProcessor(
        patch_size=TINY_QWEN_PATCH, merge_size=TINY_QWEN_MERGE, temporal_patch_size=2,
        size={"shortest_edge": 16 * 16, "longest_edge": 256 * 256},
    )
    processor_class = transformers.Qwen2VLProcessor if model_type == "qwen2_vl" else transformers.Qwen2_5_VLProcessor
    video_processor = transformers.Qwen2VLVideoProcessor(patch_size=TINY_QWEN_PATCH, merge_size=TINY_QWEN_MERGE)
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                                chat_template=_QWEN_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, patch_size=TINY_QWEN_PATCH,
                  spatial_merge_size=TINY_QWEN_MERGE, temporal_patch_size=2)
    if model_type == "qwen2_vl":
        vision["mlp_ratio"] = 2
        config_class, model_class = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
    else:
        vision.update(intermediate_size=64, out_hidden_size=32, fullatt_block_indexes=[0, 1], window_size=16)
        config_class, model_class = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
    config = config_class(
        vision_config=vision,
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
                         eos_token_id=eos, pad_token_id=3, bos_token_id=None),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
    )
    model = model_class(config).eval()
    with torch.no_grad():
        model.lm_head.weight[eos] = model.lm_head.weight[vocab[":"]] * 1.01
    _peaked(model.model.language_model.layers)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = 3
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)
