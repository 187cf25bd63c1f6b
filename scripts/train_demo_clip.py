"""Train the bundled demo CLIP from scratch on procedural scenes (issue 6).

    python scripts/train_demo_clip.py                          # ~12 min on a busy 2-core CPU; writes hf_api_prompt/data/demo-clip/
    python scripts/train_demo_clip.py --output-dir /tmp/clip   # a fresh run elsewhere (reproduction check)
    python scripts/bench_pointing.py --model local-dir:/tmp/clip

The model is an open_clip ``CLIP`` built from ``MODEL_CFG`` below (a custom
architecture: 112 px input, 8 px patches, so a 14x14 grid; 4 blocks of width
128 in the image tower; a 3-block, width-64 text tower with open_clip's standard
tokenizer and a 32-token context). It is saved in open_clip's ``local-dir``
layout (``open_clip_config.json`` with ``model_cfg`` and ``preprocess_cfg``,
``open_clip_model.safetensors`` in float16), loadable with
``open_clip.create_model("local-dir:...")`` and ``ImagePrompter(model=...)``.

Data, generated on the fly by ``hf_api_prompt.scenes`` (nothing is downloaded):
step ``s`` uses the 112x112 scenes with seeds
``TRAIN_SEED_BASE + s * batch_size + i`` (i < batch_size), 1-4 objects each:
seeds 1,000,000..1,051,199 with the defaults (200 steps of 256). Training
seeds start at 1,000,000; ``scripts/bench_pointing.py`` refuses seeds from
1,000,000 up (its default held-out range is 500,000..500,499, the checkpoint
test's 600,000..600,099, the retrieval check below 700,000..700,255), so no
training scene is ever scored. Each image gets ``--text-pairs`` (positive,
hard negative) texts: a caption listing all its objects in shuffled order
("a red triangle and a blue circle") against the same caption with two colours
swapped or one colour/shape changed (one time in three), or a question /
phrase naming one object by colour, shape or both (the benchmark's question
templates are among them) against the same kind of text naming a colour, shape
or colour-shape binding the scene lacks. Every (image, text) pair of the batch
is labelled from the scenes' structure (``Caption.holds_for``), so a text true
of several images is a positive for all of them, and the loss is the pairwise
sigmoid contrastive loss (SigLIP) over the batch's images x texts. AdamW
(betas 0.9/0.98, weight decay 0.1 on matrices), linear warm-up over 5% of the
steps then cosine decay, gradient norm clipped at 1, bfloat16 autocast for the
matrix products.

Reproducible: all randomness comes from the step's seeds and ``--seed``, the
data order is fixed, and the thread count is fixed (``--threads``), so a rerun
on the same machine repeats the same float operations.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hf_api_prompt.scenes import COLORS, SHAPES, Caption, caption, hard_negative_caption, make_scene, mention_text

logger = logging.getLogger("train_demo_clip")

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "hf_api_prompt" / "data" / "demo-clip"
TRAIN_SEED_BASE = 1_000_000
EVAL_SEED = 700_000  # held-out retrieval check after training (the pointing benchmark uses 500,000+)
IMAGE_SIZE = 112
MODEL_CFG = {
    "embed_dim": 64,
    "quick_gelu": False,
    "init_logit_scale": math.log(10.0),
    "init_logit_bias": -2.0,  # about log(p / (1 - p)) for the ~20% of (image, text) pairs that are positives
    "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": 8, "layers": 4, "width": 128, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}
PREPROCESS_CFG = {
    "size": IMAGE_SIZE, "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0,
}


# ---------------------------------------------------------------- data
def mention_pair(objects, rng: random.Random):
    """A true and a false ``Caption`` naming one object (a question or a phrase).

    The true one names a random object by colour, shape or both; the false one
    changes what it names as little as possible: a colour or shape the scene
    lacks, or the named object's other colour / other shape (a binding that is
    not in the scene).
    """
    target = objects[rng.randrange(len(objects))]
    kind = rng.choice(("color", "shape", "both"))
    missing_colors = sorted(set(COLORS) - {o.color for o in objects})
    missing_shapes = sorted(set(SHAPES) - {o.shape for o in objects})
    if kind == "color":
        positive, negative = (target.color, None), (rng.choice(missing_colors), None)
    elif kind == "shape" and missing_shapes:
        positive, negative = (None, target.shape), (None, rng.choice(missing_shapes))
    else:  # "both", or "shape" when every shape is present
        positive = (None, target.shape) if kind == "shape" else (target.color, target.shape)
        others = [(c, target.shape) for c in COLORS if c != target.color] + [(target.color, s) for s in SHAPES if s != target.shape]
        negative = rng.choice(others)  # each is absent: colours and shapes are distinct within a scene
    return Caption(mention_text(positive, rng), (positive,)), Caption(mention_text(negative, rng), (negative,))


def texts_for(objects, rng: random.Random, pairs: int):
    """``pairs`` (positive, hard negative) ``Caption`` pairs for a scene's objects.

    The first pair is a caption of all objects and its hard negative one time in
    three; every other pair names one object (``mention_pair``).
    """
    texts = []
    for index in range(pairs):
        if index == 0 and rng.random() < 1 / 3:
            texts.extend((caption(objects, rng), hard_negative_caption(objects, rng)))
        else:
            texts.extend(mention_pair(objects, rng))
    return texts


_COLOR_INDEX = {c: i for i, c in enumerate(COLORS)}
_SHAPE_INDEX = {s: i for i, s in enumerate(SHAPES)}


def label_matrix(scenes, texts) -> torch.Tensor:
    """``[B, T]`` floats: 1 where ``texts[t].holds_for(scenes[b].objects)`` (vectorised)."""
    present = np.zeros((len(scenes), len(COLORS) + 1, len(SHAPES) + 1), bool)  # last index: "any"
    for b, scene in enumerate(scenes):
        for o in scene.objects:
            c, s = _COLOR_INDEX[o.color], _SHAPE_INDEX[o.shape]
            present[b, [c, c, -1, -1], [s, -1, s, -1]] = True
    labels = np.ones((len(scenes), len(texts)), bool)
    for t, text in enumerate(texts):
        for color, shape in text.mentions:
            labels[:, t] &= present[:, -1 if color is None else _COLOR_INDEX[color], -1 if shape is None else _SHAPE_INDEX[shape]]
    return torch.from_numpy(labels.astype(np.float32))


def normalized_pixels(scenes, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``[B, 3, S, S]`` model input for square scenes at the model's size (no resize or crop needed)."""
    pixels = torch.from_numpy(np.stack([np.asarray(s.image) for s in scenes])).permute(0, 3, 1, 2).float() / 255
    return (pixels - mean) / std


def make_batch(step: int, batch_size: int, pairs: int, tokenizer, mean: torch.Tensor, std: torch.Tensor):
    """Pixels ``[B, 3, S, S]``, tokens ``[2 pairs B, L]`` and labels ``[B, 2 pairs B]`` (1 where the text holds)."""
    scenes, texts = [], []
    for i in range(batch_size):
        seed = TRAIN_SEED_BASE + step * batch_size + i
        scene = make_scene(seed, (IMAGE_SIZE, IMAGE_SIZE), min_objects=1)
        scenes.append(scene)
        texts.extend(texts_for(scene.objects, random.Random(f"text-{seed}"), pairs))
    return normalized_pixels(scenes, mean, std), tokenizer([t.text for t in texts]), label_matrix(scenes, texts)


def sigmoid_loss(image_features, text_features, labels, logit_scale, logit_bias):
    """SigLIP's pairwise loss with given labels, summed over texts, averaged over images."""
    logits = logit_scale.exp() * image_features @ text_features.T + logit_bias
    return -F.logsigmoid((2 * labels - 1) * logits).sum() / image_features.shape[0]


# ---------------------------------------------------------------- training
@contextlib.contextmanager
def float32_attention():
    """Run ``F.scaled_dot_product_attention`` in float32 under bfloat16 autocast, restored on exit.

    On CPU its bfloat16 backward is about twice as slow as its float32 one (torch
    2.14, 197 tokens, head width 32), while the linear layers gain from bfloat16.
    ``nn.MultiheadAttention`` looks the function up in ``torch.nn.functional``.
    """
    original = F.scaled_dot_product_attention

    def attention(query, key, value, *args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return original(query.float(), key.float(), value.float(), *args, **kwargs).to(query.dtype)

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def lr_at(step: int, steps: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = open_clip.CLIP(**MODEL_CFG)
    model.train()
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=MODEL_CFG["text_cfg"]["context_length"])
    mean = torch.tensor(PREPROCESS_CFG["mean"])[None, :, None, None]
    std = torch.tensor(PREPROCESS_CFG["std"])[None, :, None, None]
    # No weight decay on gains, biases, embeddings and the logit scale/bias (as open_clip's trainer).
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-6,
    )
    warmup = max(1, int(args.warmup * args.steps))
    history = []
    start = time.perf_counter()
    running = None
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, warmup, args.lr)
        pixels, tokens, labels = make_batch(step, args.batch_size, args.text_pairs, tokenizer, mean, std)
        # bfloat16 matmuls (fp32 weights and loss): ~2x faster on CPUs with AMX/AVX512-BF16.
        with float32_attention(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            image_features = model.encode_image(pixels)
            text_features = model.encode_text(tokens)
        image_features = F.normalize(image_features.float(), dim=-1)
        text_features = F.normalize(text_features.float(), dim=-1)
        loss = sigmoid_loss(image_features, text_features, labels, model.logit_scale, model.logit_bias)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            elapsed = time.perf_counter() - start
            history.append({"step": step + 1, "loss": round(running, 4), "seconds": round(elapsed, 1)})
            logger.info("step %d/%d  loss %.4f  %.2f s/step  %.0f s", step + 1, args.steps, running, elapsed / (step + 1), elapsed)
    seconds = time.perf_counter() - start
    retrieval = evaluate(model, tokenizer, mean, std)
    logger.info("held-out retrieval: %s", retrieval)
    return {"model": model, "history": history, "seconds": seconds, "retrieval": retrieval}


@torch.inference_mode()
def evaluate(model, tokenizer, mean, std, first_seed: int = EVAL_SEED, count: int = 256) -> dict:
    """Held-out retrieval: 256-way image -> caption top-1, and caption vs its hard negative."""
    model.eval()
    scenes = [make_scene(seed, (IMAGE_SIZE, IMAGE_SIZE), min_objects=2) for seed in range(first_seed, first_seed + count)]
    rngs = [random.Random(f"eval-{seed}") for seed in range(first_seed, first_seed + count)]
    positives = [caption(s.objects, rng) for s, rng in zip(scenes, rngs)]
    negatives = [hard_negative_caption(s.objects, rng) for s, rng in zip(scenes, rngs)]
    images = F.normalize(model.encode_image(normalized_pixels(scenes, mean, std)).float(), dim=-1)
    texts = F.normalize(model.encode_text(tokenizer([c.text for c in positives])).float(), dim=-1)
    hard = F.normalize(model.encode_text(tokenizer([c.text for c in negatives])).float(), dim=-1)
    similarity = images @ texts.T
    model.train()
    return {
        "caption_retrieval_top1": round(float((similarity.argmax(1) == torch.arange(count)).float().mean()), 4),
        "caption_vs_hard_negative": round(float((similarity.diag() > (images * hard).sum(-1)).float().mean()), 4),
        "scenes": [first_seed, first_seed + count - 1],
    }


def save(model: torch.nn.Module, directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}, indent=2) + "\n"
    )
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "open_clip_model.safetensors"))
    (directory / "open_clip_model.safetensors").chmod(0o644)  # safetensors writes 0600; the file ships in the package


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--text-pairs", type=int, default=1, help="(positive, hard negative) texts per image")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup", type=float, default=0.05, help="fraction of the steps")
    parser.add_argument("--seed", type=int, default=0, help="initial weights")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32 (slower)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; keep it fixed for bitwise reruns")
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    result = train(args)
    save(result["model"], args.output_dir)
    log = {
        "args": {k: str(v) for k, v in sorted(vars(args).items()) if k != "output_dir"},
        "train_seeds": [TRAIN_SEED_BASE, TRAIN_SEED_BASE + args.steps * args.batch_size - 1],
        "wall_seconds": round(result["seconds"], 1),
        "held_out_retrieval": result["retrieval"],
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "history": result["history"],
    }
    (args.output_dir / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    logger.info("wrote %s in %.0f s", args.output_dir, result["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
