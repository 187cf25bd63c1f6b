"""Time per sample: the llava prompter vs plain ``model.generate`` on the same model and inputs, per family.

A random-weight model of the chosen family (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL or
Qwen2.5-VL) is built from configs, saved to a temporary directory and loaded
through the prompter (the real path). The baseline is what a user does to get
answers from the same loaded model: the family's preprocessing (LLaVA-1.5 and
Qwen: square padding, the processor with the family's options; LLaVA-NeXT: the
processor as it is), greedy ``generate`` with the same ``max_new_tokens`` and
batch, and decoding. The prompter does all that plus the attention capture at
one layer, the mask and the blended image. Runs alternate (baseline, prompter,
prompter, baseline, ...) and the medians are reported, with "generate only"
timings that isolate the capture's cost, and "relative attn": what
``relative_attention=True`` adds to the prompter (one more prefill per image).

    python scripts/bench_llava.py                              # CPU-sized LLaVA-1.5 (~320M params, fp32)
    python scripts/bench_llava.py --family qwen2_vl            # the same sizes as Qwen2-VL (also llava_next, qwen2_5_vl)
    python scripts/bench_llava.py --shapes llava-1.5-7b        # LLaVA-1.5-7B shapes, fp16 (GPU; any family)

Random weights: the masks are meaningless, the arithmetic and timings are not.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SHAPES = {
    # CLIP-L/14-336-like vision tower with fewer blocks, a ~270M-parameter Llama.
    "cpu-small": {
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=4, num_attention_heads=16,
                       image_size=336, patch_size=14, projection_dim=768),
        "text": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
                     num_key_value_heads=16, max_position_embeddings=4096),
        "dtype": "float32",
    },
    # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 (24 blocks) + Vicuna-7B (Llama-2 shapes).
    "llava-1.5-7b": {
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=336, patch_size=14, projection_dim=768),
        "text": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5),
        "dtype": "float16",
    },
}
FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl")
VOCAB_SIZE = 32064  # llava-hf: 32000 Llama tokens + <image> + <pad> + padding to a multiple of 64
IMAGE_TOKEN_ID, PAD_TOKEN_ID = 32000, 32001
#: Qwen's special tokens, after <|image_pad|> (IMAGE_TOKEN_ID) and <pad>.
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
CHAT_TEMPLATE = (  # llava-hf/llava-1.5-*-hf's template
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
QWEN_CHAT_TEMPLATE = (  # Qwen2-VL's template, without its tools and video branches
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% else %}{{ content['text'] }}{% endif %}{% endfor %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QUESTIONS = [
    "What is the color of the car on the left side of the street?",
    "How many people are there?",
    "What is written on the sign above the door of the shop?",
    "Is it raining?",
]


def build_tokenizer(family: str):
    """A word-level tokenizer with llava-hf's special-token ids and a 32k vocabulary (Qwen's specials after them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    from hf_api_prompt.backends.llava import SYSTEM_PROMPT

    qwen = family.startswith("qwen")
    words = sorted(set(" ".join([SYSTEM_PROMPT, "USER ASSISTANT user assistant system You are a helpful assistant",
                                 *QUESTIONS]).replace("?", " ").replace(".", " ")
                       .replace(",", " ").replace(":", " ").split()) | {"?", ".", ",", ":", "'"})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for word in words:
        vocab[word] = len(vocab)
    while len(vocab) < IMAGE_TOKEN_ID:
        vocab[f"w{len(vocab)}"] = len(vocab)
    image = "<|image_pad|>" if qwen else "<image>"
    vocab[image], vocab["<pad>"] = IMAGE_TOKEN_ID, PAD_TOKEN_ID
    specials = [image] + (QWEN_SPECIALS if qwen else [])
    for token in specials[1:]:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if not qwen:
        backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="<|im_end|>" if qwen else "</s>", pad_token="<pad>",
                                        additional_special_tokens=specials)
    return tokenizer, vocab


def build_model_dir(directory: Path, shapes: str, device: torch.device, seed: int, family: str = "llava") -> str:
    """Save a random model of ``family`` with the sizes of ``shapes``, and its processor, to ``directory``."""
    import transformers

    spec = SHAPES[shapes]
    vision, text = spec["vision"], spec["text"]
    side, patch = vision["image_size"], vision["patch_size"]
    tokenizer, vocab = build_tokenizer(family)
    text_config = dict(vocab_size=VOCAB_SIZE, pad_token_id=PAD_TOKEN_ID, **text)
    if family in ("llava", "llava_next"):
        clip = dict(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        common = dict(tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy="default",
                      chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1)
        llava = dict(vision_config=dict(model_type="clip_vision_model", **vision), image_token_index=IMAGE_TOKEN_ID,
                     vision_feature_layer=-2,
                     text_config=dict(model_type="llama", bos_token_id=1, eos_token_id=2, **text_config))
        if family == "llava":
            processor = transformers.LlavaProcessor(image_processor=transformers.CLIPImageProcessor(**clip), **common)
            config = transformers.LlavaConfig(image_seq_length=(side // patch) ** 2, **llava)
            model_class = transformers.LlavaForConditionalGeneration
        else:  # llava-v1.6's resolutions: up to 2 x 2 tiles
            pinpoints = [[side, 2 * side], [2 * side, side], [2 * side, 2 * side], [side, 3 * side], [3 * side, side]]
            processor = transformers.LlavaNextProcessor(
                image_processor=transformers.LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, **clip), **common)
            config = transformers.LlavaNextConfig(image_grid_pinpoints=pinpoints, **llava)
            model_class = transformers.LlavaNextForConditionalGeneration
    else:  # the same widths and depths; the vision tower on 14 px patches merged 2 x 2
        eos = vocab["<|im_end|>"]
        head_dim = text["hidden_size"] // text["num_attention_heads"]
        eighth = head_dim // 16  # Qwen2-VL's mrope_section [16, 24, 24] of its 64 rotary pairs, scaled
        rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2 * eighth, 3 * eighth, 3 * eighth]}
        qwen_vision = dict(depth=vision["num_hidden_layers"], hidden_size=text["hidden_size"], patch_size=patch,
                           num_heads=vision["num_attention_heads"], spatial_merge_size=2, temporal_patch_size=2)
        if family == "qwen2_vl":
            qwen_vision.update(embed_dim=vision["hidden_size"], mlp_ratio=vision["intermediate_size"] // vision["hidden_size"])
            config_class, model_class = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
            processor_class = transformers.Qwen2VLProcessor
        else:
            qwen_vision.update(hidden_size=vision["hidden_size"], intermediate_size=vision["intermediate_size"],
                               out_hidden_size=text["hidden_size"], window_size=112,
                               fullatt_block_indexes=list(range(vision["num_hidden_layers"] - 1, -1, -8))[::-1])
            config_class, model_class = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
            processor_class = transformers.Qwen2_5_VLProcessor
        processor = processor_class(
            image_processor=transformers.Qwen2VLImageProcessor(patch_size=patch, merge_size=2),
            video_processor=transformers.Qwen2VLVideoProcessor(patch_size=patch, merge_size=2),
            tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE,
        )
        text_config.update(eos_token_id=eos, bos_token_id=None, rope_parameters=rope)
        config = config_class(vision_config=qwen_vision, text_config=text_config, image_token_id=IMAGE_TOKEN_ID,
                              video_token_id=vocab["<|video_pad|>"], vision_start_token_id=vocab["<|vision_start|>"],
                              vision_end_token_id=vocab["<|vision_end|>"])
    torch.manual_seed(seed)
    with torch.device(device):  # initialise where it will run: 7B shapes are slow to initialise on a CPU
        model = model_class(config)
    model.to(getattr(torch, spec["dtype"])).save_pretrained(directory)
    processor.save_pretrained(directory)
    del model
    return str(directory)


def make_images(count: int, seed: int):
    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (480, 640), (800, 600), (500, 500)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in
            (sizes[i % len(sizes)] for i in range(count))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, default="llava", help="the checkpoint's model_type")
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="cpu-small")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 2 on CPU, 4 on GPU")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layer-index", type=int, default=None, help="default: 20, or half the layers if fewer")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    from hf_api_prompt import ImagePrompter, masks
    from hf_api_prompt.backends.llava import ImageAttentionCapture
    from hf_api_prompt.prompts import apply_prompt

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    spec = SHAPES[args.shapes]
    if spec["dtype"] == "float16" and device.type == "cpu":
        parser.error(f"--shapes {args.shapes} is fp16 and meant for a GPU")
    batch_size = args.batch_size or (4 if device.type == "cuda" else 2)
    layers = spec["text"]["num_hidden_layers"]
    layer_index = args.layer_index if args.layer_index is not None else (20 if layers > 20 else layers // 2)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    with tempfile.TemporaryDirectory(prefix="bench_llava_") as tmp:
        start = time.perf_counter()
        model_dir = build_model_dir(Path(tmp), args.shapes, device, args.seed, args.family)
        prompter = ImagePrompter("llava", model=model_dir, layer_index=layer_index, max_new_tokens=args.max_new_tokens,
                                 device=str(device), dtype=spec["dtype"])
        backend = prompter.backend()
        model, processor = backend.model, backend.processor
        params = sum(p.numel() for p in model.parameters())
        print(f"model: {args.family} {args.shapes} random weights, {params / 1e6:.0f}M params, {spec['dtype']} on {device} "
              f"(built, saved and loaded in {time.perf_counter() - start:.0f} s); layer_index {layer_index}, "
              f"batch {batch_size}, max_new_tokens {args.max_new_tokens}, torch threads {torch.get_num_threads()}")

        images = make_images(batch_size, args.seed)
        questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(batch_size)]
        batch = {"image": images, "question": questions}
        settings = dict(do_sample=False, num_beams=1, max_new_tokens=args.max_new_tokens,
                        eos_token_id=sorted(backend.eos_token_ids), pad_token_id=backend.pad_token_id)

        family = backend.family

        def plain_inputs():
            prepared = [family.prepare(image, backend.fill) for image in images]
            inputs = processor(images=prepared, text=[backend.prompt(q) for q in questions], padding=True,
                               return_tensors="pt", **family.processor_kwargs()).to(device)
            inputs["pixel_values"] = inputs["pixel_values"].to(backend.dtype)
            return inputs

        @torch.inference_mode()
        def baseline():
            inputs = plain_inputs()
            out = model.generate(**inputs, **settings)
            answers = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            sync()
            return answers

        def ours():
            out = prompter(batch)
            sync()
            return out

        from hf_api_prompt.backends.llava import GENERIC_INSTRUCTION

        def ours_relative():
            # What relative_attention=True adds to the prompter: one prefill of the generic instruction per image.
            out = prompter(batch)
            backend.prefill_heatmaps(images, [GENERIC_INSTRUCTION] * batch_size, [backend.config.layer_index])
            sync()
            return out

        fixed = plain_inputs()

        @torch.inference_mode()
        def generate_only():
            model.generate(**fixed, **settings)
            sync()

        class TimedCapture(ImageAttentionCapture):
            """Also accumulates the time spent computing the recorded rows."""

            seconds, calls = 0.0, 0

            def record(self, *args):
                start = time.perf_counter()
                super().record(*args)
                sync()
                TimedCapture.seconds += time.perf_counter() - start
                TimedCapture.calls += 1

        @torch.inference_mode()
        def generate_captured():
            attention = backend.decoder_layers[backend.config.layer_index].self_attn
            with TimedCapture(attention, backend.image_positions(fixed["input_ids"])):
                model.generate(**fixed, **settings)
            sync()

        mask_grid = np.random.default_rng(args.seed).random((batch_size, *family.grid()), dtype=np.float32)

        def mask_and_blend():
            grid = masks.attention_mask(torch.from_numpy(mask_grid), 5.0, 3).numpy()
            apply_prompt(backend.config, images, grid, [None] * batch_size)

        # Warm-up, and a check that both paths produce the same greedy answers.
        plain_answers = [a.strip() for a in baseline()]
        our_answers = ours()["api_answer"]
        print(f"answers identical: {plain_answers == our_answers}")

        pairs = {"end to end": (baseline, ours), "generate only": (generate_only, generate_captured),
                 "relative attn": (ours, ours_relative)}
        times = {name: ([], []) for name in pairs}
        cpu_times = {name: ([], []) for name in pairs}
        for repeat in range(args.repeats):
            for name, (plain, captured) in pairs.items():
                order = [(0, plain), (1, captured)] if repeat % 2 == 0 else [(1, captured), (0, plain)]
                for slot, run in order:
                    start, cpu_start = time.perf_counter(), time.process_time()
                    run()
                    times[name][slot].append(time.perf_counter() - start)
                    cpu_times[name][slot].append(time.process_time() - cpu_start)

        print(f"seconds per sample over {args.repeats} alternating runs, batch of {batch_size}: "
              "wall-clock median (min), process CPU time median")
        print(f"  {'':<15}{'baseline':>25}{'prompter':>25}{'overhead (wall, cpu)':>24}")
        what = {"end to end": "pad + processor + generate + decode  vs  prompter(batch): + capture, mask, blend",
                "generate only": "model.generate  vs  the same inside ImageAttentionCapture",
                "relative attn": "prompter(batch)  vs  the same + one generic-instruction prefill (relative_attention=True)"}
        for name in pairs:
            cells, medians = [], []
            for slot in (0, 1):
                wall, cpu = times[name][slot], cpu_times[name][slot]
                medians.append((statistics.median(wall), statistics.median(cpu)))
                cells.append(f"{statistics.median(wall) / batch_size:.3f} ({min(wall) / batch_size:.3f}), "
                             f"{statistics.median(cpu) / batch_size:.3f}")
            wall_over = 100 * (medians[1][0] / medians[0][0] - 1)
            cpu_over = 100 * (medians[1][1] / medians[0][1] - 1)
            print(f"  {name:<15}{cells[0]:>25}{cells[1]:>25}{wall_over:>+11.1f}%,{cpu_over:>+7.1f}%   ({what[name]})")
        generate_s = statistics.median(times["generate only"][0])
        print(f"  the capture's own work: {1e3 * TimedCapture.seconds / TimedCapture.calls:.2f} ms per forward call, "
              f"{100 * TimedCapture.seconds / args.repeats / generate_s:.2f}% of a plain generate")
        blend_s = statistics.median(timeit.repeat(mask_and_blend, number=1, repeat=10))
        print(f"  mask + blend alone: {1e3 * blend_s / batch_size:.1f} ms per sample, "
              f"{100 * blend_s / statistics.median(times['end to end'][0]):.2f}% of the baseline")

if __name__ == "__main__":
    main()
