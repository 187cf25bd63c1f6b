"""The image path against the model: does ``prompter.map`` keep up with its model step? (issue 12)

    python scripts/bench_pipeline.py                   # the acceptance run, about 10 min on 2 CPU cores
    python scripts/bench_pipeline.py --quick           # smoke run: a few small rows, about a minute
    python scripts/bench_pipeline.py --json pipeline.json
    # the GPU run (issue 12, acceptance 4): ViT-L-14-336 fp16, batch 32, the MM-Vet-shaped set, exact and device path
    python scripts/bench_pipeline.py --sections 3 --model ViT-L-14-336 --layer-index 22 --device cuda --dtype fp16 \
        --batch-size 32 --end-to-end-set mmvet --rows 96 --vit-rows 96

Everything runs in this one process (the CLI part in child processes), side by
side, on data made here with fixed seeds:

- "1024 set": ``--rows`` photo-like JPEGs (quality 90) of 1024 x 768 and 768 x 1024.
- "MM-Vet-shaped set": ``--rows`` images shaped like MM-Vet's: mostly 800-1400 px on
  the long side, one in ten 3000-4200 px, aspect ratios 4:3, 3:2, 16:9, 1:1 and 3:4;
  three in four JPEG (quality 90), one in four PNG.

Photo-like content (:func:`photo_like`): a random field with a photo's 1/f
spectrum, coloured, a few hard-edged objects, and sensor noise, so that every
codec costs what it costs on a photo (a flat synthetic image would flatter PNG).

Sections, and the issue's acceptance they check:

1. Image work per row on one thread, a 1024 x 768 JPEG: decode, preprocess
   (open_clip's ViT-B-16 transform), mask resize (14 x 14 -> image, LANCZOS), blend,
   encode, for every ``image_format``; target <= 100 ms for the default. And the
   thread pool: the whole image work of a batch of rows on 1 and on 2 threads
   (:func:`hf_api_prompt.parallel.thread_map`), the two taking turns; target >= 1.7x.
   And the mask style's resize + blend on the torch path (``prompt_device="cpu"``)
   against Pillow/numpy: the time, and whether the images are the same.
2. The bundled model (a model step of a few ms a row, as ViT-L's on a GPU):
   ``prompter.map`` over the 1024 set against a bare ``map`` that only decodes each
   image and re-encodes it as JPEG (Pillow's default quality) on one thread, the two
   taking turns (medians of 3); target >= 0.5x the bare map's rows/s.
3. ViT-B-16 (random weights; ``--model``, ``--layer-index``, ``--device``, ``--dtype``),
   batch 8, all cores: ``prompter.map`` rows/s over the 1024 set (or ``--end-to-end-set
   mmvet``) against the model step alone (questions + image tower to the block + recipe,
   on preprocessed pixels), for the default format, png, and the default with
   ``prompt_device="auto"``; target >= 0.8x for the default (on a GPU: 0.5x, the issue's).
4. The MM-Vet-shaped set with the bundled model, for each format and 1, 2 and all
   cores (torch threads and the image pool both set to the count): rows/s end to
   end, ms per row of each stage (each timed on its own over the same rows), and
   output bytes per row against the source's.
5. ``hf-api-prompt run`` over the MM-Vet-shaped set (saved with ``save_to_disk``)
   in one process, with ``--num-proc 2``, and under ``accelerate launch`` with 2 CPU
   processes: rows/s of the whole command (start-up, model loads, masking, writing the variant).

Timings need an otherwise idle machine: the 1-min load average is printed at the
start and the end. Every ``map`` runs with ``load_from_cache_file=False``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence

import numpy as np
import torch
from datasets import Dataset, Features, Value, disable_progress_bars, enable_progress_bars, is_progress_bar_enabled
from datasets import Image as ImageFeature
from PIL import Image

from hf_api_prompt import ImagePrompter, device_prompt, encoding, masks, parallel, prompts
from hf_api_prompt.bundled import DEMO_MODEL, DEMO_MODEL_LAYER
from hf_api_prompt.config import PrompterConfig
from hf_api_prompt.inputs import decode_image
from hf_api_prompt.prompter import grid_masks
from hf_api_prompt.prompts import apply_prompt

logger = logging.getLogger("bench_pipeline")

QUESTIONS = [
    "What is the total price of all the items listed on the receipt in this picture?",
    "How many people in the photo are wearing glasses, and what are they holding?",
    "Which country's flag is shown on the building at the left side of the image?",
    "What is written on the blue sign above the entrance of the small shop?",
    "Is the person on the right side of the picture older than the person on the left?",
    "What breed is the dog lying on the sofa, and what color is its collar?",
    "Which of the two bottles on the table contains more liquid, the green one or the brown one?",
    "What time does the clock on the wall show, and is it morning or evening outside?",
    "How many slices of pizza are left in the box on the kitchen counter?",
    "What is the main ingredient of the dish shown on the white plate in front?",
    "Can you read the license plate number of the red car parked near the tree?",
    "What does the chart in the slide say about sales growth between 2019 and 2021?",
    "Which animal in the picture is closest to the camera, and what is it doing?",
    "What is the name of the book that the girl on the bench is reading?",
    "How many windows can you count on the front of the old brick house?",
    "What sport are the children playing in the field, and which team is winning?",
    "What is the handwritten equation on the whiteboard, and what is its solution?",
    "Which fruit in the bowl is not ripe yet, judging from its color and shape?",
    "What is the weather like in this scene, and what season does it seem to be?",
    "Where is the cat hiding, under the chair or behind the curtain near the window?",
    "What is the brand of the laptop on the desk, and is its screen turned on?",
    "How much does the coffee cost according to the menu board behind the counter?",
    "Which direction does the arrow on the road sign point, and what town does it name?",
    "What musical instrument is the man in the black jacket playing on the stage?",
]

#: (name, config changes): every output format; the default (``"source"``) first.
FORMATS = [
    ("source q75 (default)", {}),
    ("jpeg q75", {"image_format": "jpeg"}),
    ("jpeg q95", {"image_format": "jpeg", "jpeg_quality": 95}),
    ("png", {"image_format": "png"}),
]


# ---------------------------------------------------------------------- data
def photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """``[height, width, 3]`` uint8: a 1/f random field, coloured, with a few solid objects and sensor noise."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx ** 2 + fy ** 2)
    radius[0, 0] = 1.0
    amplitude = radius ** -1.0  # a photo's power spectrum falls as 1/f^2
    fields = []
    for _ in range(3):
        spectrum = (rng.standard_normal(radius.shape) + 1j * rng.standard_normal(radius.shape)) * amplitude
        spectrum[0, 0] = 0
        fields.append(np.fft.irfft2(spectrum, s=(height, width)).astype(np.float32))
    field = np.stack(fields, axis=-1) @ rng.uniform(0.2, 1.0, (3, 3)).astype(np.float32)  # correlated channels
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6) * 220 + 18
    for _ in range(int(rng.integers(2, 6))):  # objects with hard edges
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        w, h = int(rng.integers(width // 10, width // 3)), int(rng.integers(height // 10, height // 3))
        field[y0:y0 + h, x0:x0 + w] = field[y0:y0 + h, x0:x0 + w] * 0.3 + rng.uniform(0, 255, 3).astype(np.float32) * 0.7
    field += rng.normal(0.0, 5.0, field.shape).astype(np.float32)
    return np.clip(field, 0, 255).astype(np.uint8)


def encoded(pixels: np.ndarray, kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind, **({"quality": 90} if kind == "JPEG" else {}))
    return buffer.getvalue()


def set_1024(rows: int, seed: int = 0) -> List[bytes]:
    rng = np.random.default_rng(seed)
    return [encoded(photo_like(rng, *((1024, 768) if i % 2 == 0 else (768, 1024))), "JPEG") for i in range(rows)]


def set_mmvet(rows: int, seed: int = 1, small: bool = False) -> List[bytes]:
    rng = np.random.default_rng(seed)
    aspects = [(4, 3), (3, 2), (16, 9), (1, 1), (3, 4)]
    images = []
    for i in range(rows):
        long_side = int(rng.integers(3000, 4200)) if i % 10 == 9 else int(rng.integers(800, 1400))
        if small:
            long_side //= 4
        a, b = aspects[int(rng.integers(len(aspects)))]
        size = (long_side, long_side * b // a) if a >= b else (long_side * a // b, long_side)
        images.append(encoded(photo_like(rng, *size), "PNG" if i % 4 == 3 else "JPEG"))
    return images


def as_dataset(images: Sequence[bytes]) -> Dataset:
    features = Features({"image": ImageFeature(), "question": Value("string")})
    return Dataset.from_dict({"image": [{"bytes": data, "path": None} for data in images],
                              "question": [QUESTIONS[i % len(QUESTIONS)] for i in range(len(images))]}, features=features)


# ------------------------------------------------------------------- helpers
def timed(function: Callable[[], Any]):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def median_seconds(function: Callable[[], Any], repeats: int) -> float:
    function()  # warm-up
    return statistics.median(timed(function)[1] for _ in range(repeats))


def interleaved(calls: Dict[str, Callable[[], Any]], repeats: int) -> Dict[str, float]:
    """Median seconds of each call, the calls taking turns (after one warm-up each), so drift hits all alike."""
    for call in calls.values():
        call()
    seconds: Dict[str, List[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            seconds[name].append(timed(call)[1])
    return {name: statistics.median(values) for name, values in seconds.items()}


def config_for(changes: Dict[str, Any]) -> PrompterConfig:
    return PrompterConfig(backend="clip", model="ViT-B-16", pretrained=None, layer_index=0, **changes)


@contextlib.contextmanager
def Threads(count: int) -> Iterator[None]:
    """Within the block, torch's threads and the image pool are ``count`` (emulates a machine of ``count`` cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with parallel.threads_per_process(count):
            yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------- 1. image work per row
def image_work(data: bytes, repeats: int, batch: Sequence[bytes]) -> Dict[str, Any]:
    import open_clip

    preprocess = open_clip.image_transform(224, is_train=False)
    rng = np.random.default_rng(3)
    grid = (rng.random((14, 14)) * 255).astype(np.uint8)
    image, kind = decode_image({"bytes": data, "path": None})
    weights = masks.mask_to_pixels(grid, image.size, Image.Resampling.LANCZOS)
    blended = masks.blend(image, weights, 0)
    with Threads(1):
        stages = {
            "decode": median_seconds(lambda: decode_image({"bytes": data, "path": None}), repeats),
            "preprocess": median_seconds(lambda: preprocess(image), repeats),
            "mask resize": median_seconds(lambda: masks.mask_to_pixels(grid, image.size, Image.Resampling.LANCZOS), repeats),
            "blend": median_seconds(lambda: masks.blend(image, weights, 0), repeats),
        }
        encode = {}
        for name, changes in FORMATS:
            config = config_for(changes)
            encode[name] = {"seconds": median_seconds(lambda: encoding.encode(blended, config, kind), repeats),
                            "bytes": len(encoding.encode(blended, config, kind)["bytes"])}
    default = config_for({})

    def row(value: bytes):
        picture, source_kind = decode_image({"bytes": value, "path": None})
        preprocess(picture)
        w = masks.mask_to_pixels(grid, picture.size, Image.Resampling.LANCZOS)
        return encoding.encode(masks.blend(picture, w, 0), default, source_kind)

    with Threads(1):  # torch's own threads stay at 1: the pool is what is measured
        pool = interleaved({n: (lambda n=n: parallel.thread_map(row, list(batch), n)) for n in (1, 2)}, repeats)
    # The device path (prompt_device) on the CPU device: the same images; its speed matters on a GPU only.
    with Threads(1):
        paths = interleaved({"pillow": lambda: prompts.soft_mask(image, grid, None, default),
                             "torch cpu": lambda: device_prompt.soft_mask_on("cpu", image, grid, None, default)}, repeats)
    same = np.array_equal(np.asarray(prompts.soft_mask(image, grid, None, default).image),
                          np.asarray(device_prompt.soft_mask_on("cpu", image, grid, None, default).image))
    return {"size": list(image.size), "source_bytes": len(data), "stages_seconds": stages, "encode": encode,
            "pool_rows": len(batch), "pool_seconds": pool, "prompt_paths_seconds": paths, "prompt_paths_equal": same}


# ------------------------------------------------- 2. bundled model vs bare map
def bare_map(dataset: Dataset, batch_size: int) -> Dataset:
    """Decode each image and re-encode it as JPEG at Pillow's default quality, on one thread."""
    def reencode(batch):
        out = []
        for value in batch["image"]:
            image, _ = decode_image(value)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG")
            out.append({"bytes": buffer.getvalue(), "path": None})
        return {"bare": out}

    source = dataset.cast_column("image", ImageFeature(decode=False))
    features = Features({**source.features, "bare": ImageFeature()})
    return source.map(reencode, batched=True, batch_size=batch_size, features=features, load_from_cache_file=False)


def bundled_vs_bare(dataset: Dataset, batch_size: int, repeats: int) -> Dict[str, Any]:
    prompter = ImagePrompter("clip", model=DEMO_MODEL, layer_index=DEMO_MODEL_LAYER)
    seconds = interleaved({
        "bare": lambda: bare_map(dataset, batch_size),
        "prompter": lambda: prompter.map(dataset, batch_size=batch_size, load_from_cache_file=False),
    }, repeats)
    return {"rows": len(dataset), "bare_seconds": seconds["bare"], "prompter_seconds": seconds["prompter"],
            "threads": prompter.threads, "repeats": repeats}


# ------------------------------------------------------ 3. ViT-B-16 end to end
def model_step_seconds(prompter: ImagePrompter, dataset: Dataset, batch_size: int) -> float:
    """Questions + image tower + recipe of every batch, on pixels preprocessed beforehand (the model step alone)."""
    backend = prompter.backend()
    config = prompter.config
    stored = dataset.cast_column("image", ImageFeature(decode=False))["image"]
    images = [decode_image(value)[0] for value in stored]
    questions = list(dataset["question"])
    spans = [slice(s, s + batch_size) for s in range(0, len(images), batch_size)]
    pixels = [backend.pixels(images[span]) for span in spans]

    def step():
        with torch.inference_mode():
            for batch, span in zip(pixels, spans):
                raw = backend.raw_maps(batch, backend.encode_questions(questions[span]), [config.layer_index])
                grid_masks(config, raw[config.layer_index])

    step()  # warm-up
    return timed(step)[1]


#: The end-to-end runs of section 3: (label, ImagePrompter options), the default format first.
END_TO_END = [
    ("source q75 (default)", {}),
    ("png", {"image_format": "png"}),
    ("source q75, prompt_device auto", {"prompt_device": "auto"}),
]


def end_to_end(dataset: Dataset, batch_size: int, args) -> Dict[str, Any]:
    """``prompter.map`` rows/s of each END_TO_END run against the model step alone, with one model (random weights)."""
    torch.manual_seed(0)
    base = {"model": args.model, "pretrained": None, "layer_index": args.layer_index, "device": args.device, "dtype": args.dtype}
    prompters = {name: ImagePrompter("clip", **base, **options) for name, options in END_TO_END}
    first = next(iter(prompters.values()))
    step = model_step_seconds(first, dataset, batch_size)
    backend = first.backend()
    result = {"model": args.model, "rows": len(dataset), "batch_size": batch_size, "model_step_seconds": step,
              "device": str(backend.device), "dtype": str(backend.dtype).replace("torch.", ""), "map_seconds": {}}
    for name, prompter in prompters.items():
        prompter._backend = backend  # one model: the runs differ only after it
        result["map_seconds"][name] = timed(lambda: prompter.map(dataset, batch_size=batch_size, load_from_cache_file=False))[1]
    return result


# ------------------------------------------- 4. MM-Vet-shaped set, per stage
def stage_breakdown(prompter: ImagePrompter, dataset: Dataset, batch_size: int) -> Dict[str, float]:
    """Seconds of each stage over all rows, each timed on its own with the prompter's threads."""
    config, backend, threads = prompter.config, prompter.backend(), prompter.threads
    stored = dataset.cast_column("image", ImageFeature(decode=False))["image"]
    questions = list(dataset["question"])
    spans = [slice(s, s + batch_size) for s in range(0, len(stored), batch_size)]
    decoded, decode = timed(lambda: parallel.thread_map(decode_image, stored, threads))
    images, kinds = [d[0] for d in decoded], [d[1] for d in decoded]
    pixels, preprocess = timed(lambda: [backend.pixels(images[span]) for span in spans])
    with torch.inference_mode():
        grids, model = timed(lambda: [
            grid_masks(config, backend.raw_maps(batch, backend.encode_questions(questions[span]), [config.layer_index])[config.layer_index])
            for batch, span in zip(pixels, spans)])
    prompted, prompt = timed(lambda: [apply_prompt(config, images[span], grid, [None] * len(grid), threads=threads)
                                      for grid, span in zip(grids, spans)])
    flat = [p.image for batch in prompted for p in batch]
    _, encode = timed(lambda: parallel.thread_map(lambda pair: encoding.encode(pair[0], config, pair[1]), list(zip(flat, kinds)), threads))
    return {"decode": decode, "preprocess": preprocess, "model": model, "resize + blend": prompt, "encode": encode}


def mmvet_matrix(dataset: Dataset, batch_size: int, thread_counts: Sequence[int]) -> List[Dict[str, Any]]:
    source_bytes = sum(len(v["bytes"]) for v in dataset.cast_column("image", ImageFeature(decode=False))["image"])
    rows = []
    for name, changes in FORMATS:
        prompter = ImagePrompter("clip", model=DEMO_MODEL, layer_index=DEMO_MODEL_LAYER, **changes)
        prompter.map(dataset.select(range(batch_size)), batch_size=batch_size, load_from_cache_file=False)  # load, warm up
        for count in thread_counts:
            with Threads(count):
                out, seconds = timed(lambda: prompter.map(dataset, batch_size=batch_size, load_from_cache_file=False))
                stages = stage_breakdown(prompter, dataset, batch_size)
            stored = out.cast_column("masked_image", ImageFeature(decode=False))["masked_image"]
            rows.append({"format": name, "threads": count, "seconds": seconds, "stages_seconds": stages,
                         "output_bytes": sum(len(v["bytes"]) for v in stored), "source_bytes": source_bytes})
    return rows


# ------------------------------------------------------------------ 5. CLI
#: How each CLI run starts its processes: (label, launcher prefix, extra run flags).
CLI_RUNS = [
    ("1 process", [], []),
    ("--num-proc 2", [], ["--num-proc", "2"]),
    ("accelerate, 2 CPU processes", ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"], []),
]


def cli_runs(dataset: Dataset, batch_size: int) -> List[Dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "source"
        dataset.save_to_disk(str(source))
        for index, (label, launcher, flags) in enumerate(CLI_RUNS):
            out = Path(folder) / f"out{index}"
            command = [sys.executable, *launcher, "-m", "hf_api_prompt", "run", "--dataset", str(source), "--output-dir", str(out),
                       "--model", DEMO_MODEL, "--layer-index", str(DEMO_MODEL_LAYER), "--batch-size", str(batch_size),
                       "--preview-rows", "0", "--chunk-size", str(max(batch_size, len(dataset) // 4)), *flags]
            env = {**os.environ, "ACCELERATE_USE_CPU": "1"} if launcher else None
            done, seconds = timed(lambda: subprocess.run(command, capture_output=True, text=True, env=env))
            if done.returncode != 0:
                raise SystemExit(f"hf-api-prompt run ({label}) failed:\n{done.stderr[-3000:]}")
            results.append({"run": label, "rows": len(dataset), "seconds": seconds})
    return results


# ------------------------------------------------------------------ report
def ms(seconds: float, rows: int = 1) -> str:
    return f"{seconds / rows * 1000:8.1f}"


def report(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    checks = []

    def check(name, value, op, target):
        ok = value >= target if op == ">=" else value <= target
        checks.append({"check": name, "value": value, "op": op, "target": target, "result": "PASS" if ok else "FAIL"})

    default = FORMATS[0][0]
    if "image_work" in result:
        work = result["image_work"]
        print(f"\n1. image work per row, one thread, {work['size'][0]}x{work['size'][1]} photo-like JPEG ({work['source_bytes']:,} bytes)")
        common = sum(work["stages_seconds"].values())
        for name, seconds in work["stages_seconds"].items():
            print(f"   {name:<34}{ms(seconds)} ms")
        print(f"   {'format':<34}{'encode ms':>9}{'total ms':>10}{'bytes':>11}{'/ source':>9}")
        for name, numbers in work["encode"].items():
            total = common + numbers["seconds"]
            print(f"   {name:<34}{ms(numbers['seconds'])}{ms(total):>10}{numbers['bytes']:>11,}{numbers['bytes'] / work['source_bytes']:>9.2f}")
        check("1 thread image work per row, default format (ms)", (common + work["encode"][default]["seconds"]) * 1000, "<=", 100.0)
        pool = work["pool_seconds"]
        print(f"   pool, whole image work of {work['pool_rows']} rows (default format): 1 thread {pool[1]:.3f} s, "
              f"2 threads {pool[2]:.3f} s: {pool[1] / pool[2]:.2f}x")
        check("image pool scaling, 2 threads / 1", pool[1] / pool[2], ">=", 1.7)
        paths = work["prompt_paths_seconds"]
        print(f"   mask resize + blend, Pillow/numpy {ms(paths['pillow'])} ms, torch on the CPU device (prompt_device) "
              f"{ms(paths['torch cpu'])} ms; the same image: {work['prompt_paths_equal']}")

    if "bundled_vs_bare" in result:
        bare = result["bundled_vs_bare"]
        ratio = bare["bare_seconds"] / bare["prompter_seconds"]
        print(f"\n2. bundled model, {bare['rows']} rows of the 1024 set, medians of {bare['repeats']} turns each: prompter.map {ms(bare['prompter_seconds'], bare['rows'])} ms/row "
              f"({bare['threads']} image threads), bare decode + JPEG map {ms(bare['bare_seconds'], bare['rows'])} ms/row (1 thread): "
              f"rows/s ratio {ratio:.2f}")
        check("bundled prompter.map / bare decode+JPEG map, rows/s", ratio, ">=", 0.5)

    if "end_to_end" in result:
        run = result["end_to_end"]
        print(f"\n3. {run['model']} on {run['device']} ({run['dtype']}), batch {run['batch_size']}, {run['rows']} rows "
              f"of the {result['end_to_end_set']} set, torch threads {torch.get_num_threads()}: model step alone "
              f"{ms(run['model_step_seconds'], run['rows'])} ms/row")
        for name, seconds in run["map_seconds"].items():
            print(f"   prompter.map, {name:<32}{ms(seconds, run['rows'])} ms/row: end to end / model step "
                  f"{run['model_step_seconds'] / seconds:.2f}")
        target = 0.5 if run["device"].startswith("cuda") else 0.8  # the GPU target, and its CPU one
        check(f"{run['model']} end to end / model step, rows/s, default format", run["model_step_seconds"] / run["map_seconds"][default],
              ">=", target)

    if "mmvet" in result:
        matrix = result["mmvet"]
        rows = result["mmvet_rows"]
        print(f"\n4. MM-Vet-shaped set, {rows} rows, bundled model: ms/row end to end and per stage (each timed on its own)")
        stage_names = list(matrix[0]["stages_seconds"])
        print(f"   {'format':<22}{'threads':>8}{'rows/s':>8}{'e2e':>8}" + "".join(f"{n[:14]:>15}" for n in stage_names) + f"{'out/src bytes':>15}")
        for entry in matrix:
            print(f"   {entry['format']:<22}{entry['threads']:>8}{rows / entry['seconds']:>8.1f}{ms(entry['seconds'], rows)}"
                  + "".join(f"{ms(entry['stages_seconds'][n], rows):>15}" for n in stage_names)
                  + f"{entry['output_bytes'] / entry['source_bytes']:>15.2f}")
        print(f"   (source: {matrix[0]['source_bytes'] / rows / 1e3:,.0f} kB per row)")

    if "cli" in result:
        print(f"\n5. hf-api-prompt run over the MM-Vet-shaped set ({result['mmvet_rows']} rows), whole command:")
        for entry in result["cli"]:
            print(f"   {entry['run']:<30}{entry['seconds']:6.1f} s, {entry['rows'] / entry['seconds']:.2f} rows/s")

    print("\nsummary")
    for c in checks:
        print(f"   {c['check']:<62}{c['value']:>8.2f} {c['op']} {c['target']:<6} {c['result']}")
    return checks


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few and small rows")
    parser.add_argument("--rows", type=int, help="rows of each set (default 48; quick 8)")
    parser.add_argument("--vit-rows", type=int, help="rows of section 3 (default 32; quick 8)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, help="repeats of each one-row timing (default 15; quick 3)")
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="which sections to run (default: all)")
    parser.add_argument("--model", default="ViT-B-16", help="section 3's open_clip model, random weights (default ViT-B-16)")
    parser.add_argument("--layer-index", type=int, default=10, help="section 3's block (default 10)")
    parser.add_argument("--device", help="section 3's device (default: the library's choice, cuda if present)")
    parser.add_argument("--dtype", help="section 3's dtype (default: the library's choice for the device)")
    parser.add_argument("--end-to-end-set", choices=["1024", "mmvet"], default="1024", help="section 3's rows (default 1024)")
    parser.add_argument("--json", help="save every number here")
    return parser.parse_args(argv)


def main(argv=None) -> Dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    rows = args.rows or (8 if args.quick else 48)
    vit_rows = args.vit_rows or (8 if args.quick else 32)
    repeats = args.repeats or (3 if args.quick else 15)
    cores = parallel.available_cores()
    thread_counts = sorted({1, 2, cores}) if not args.quick else [1, 2]
    bars = is_progress_bar_enabled()
    disable_progress_bars()
    load_before = os.getloadavg()[0]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
            logger.info("data: %d + %d rows", rows, rows)
            jpegs = set_1024(max(rows, vit_rows))
            mmvet = as_dataset(set_mmvet(rows, small=args.quick))
            result: Dict[str, Any] = {"cores": cores, "torch_threads": torch.get_num_threads(), "rows": rows}
            sections = {
                1: ("image work per row", "image_work", lambda: image_work(jpegs[0], repeats, jpegs[:16])),
                2: ("bundled model vs bare map", "bundled_vs_bare", lambda: bundled_vs_bare(as_dataset(jpegs[:rows]), args.batch_size, max(1, repeats // 5))),
                3: (args.model, "end_to_end", lambda: end_to_end(
                    as_dataset(jpegs[:vit_rows]) if args.end_to_end_set == "1024" else mmvet.select(range(min(vit_rows, len(mmvet)))),
                    args.batch_size, args)),
                4: ("MM-Vet-shaped set", "mmvet", lambda: mmvet_matrix(mmvet, args.batch_size, thread_counts)),
                5: ("CLI", "cli", lambda: cli_runs(mmvet, args.batch_size)),
            }
            result["mmvet_rows"], result["end_to_end_set"] = rows, ("1024" if args.end_to_end_set == "1024" else "MM-Vet-shaped")
            for number in args.sections:
                title, key, run = sections[number]
                logger.info("%d. %s", number, title)
                result[key] = run()
    finally:
        if bars:
            enable_progress_bars()
    print(f"cores {cores}, torch threads {torch.get_num_threads()}, load average {load_before:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end")
    result["checks"] = report(result)
    result["load_average"] = [load_before, os.getloadavg()[0]]
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
