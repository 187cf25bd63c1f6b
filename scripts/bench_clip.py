"""Benchmark of the clip backend against a plain forward pass and against the authors' formulation.

    python scripts/bench_clip.py                      # both models, ~10 min on 2 CPU cores
    python scripts/bench_clip.py --quick              # smoke run: ViT-B-16, tiny batches, ~1 min
    python scripts/bench_clip.py --models ViT-B-16 --device cuda --json bench.json

Models (open_clip, RANDOM weights: ``pretrained=None``; speed and memory do not
depend on the weights): ViT-B-16 at 224 px with layer_index 10, ViT-L-14-336
with layer_index 22 (the paper's setting). Each is built as
``ImagePrompter("clip", model=..., pretrained=None, layer_index=...)``.

For each model, on one batch of preprocessed synthetic 1024-px images with a
distinct MM-Vet-like question per row:

1. Throughput, in masks (or images) per second. "prompter step" is the model
   step of the library: ``backend.encode_questions`` + ``backend.raw_maps`` +
   the backend's recipe (``masks.clip_mask``). "encode_image" is the plain ``model.encode_image`` on
   the same pixels. Everything runs under ``torch.inference_mode`` after warm-up
   calls; each number is the median over repeats, and the order of the methods
   rotates every repeat so that drift (thermal, other load) hits all of them.
2. Peak memory of one call, each method in a fresh subprocess, after a warm-up
   call in that subprocess. CPU: the process's resident set size; the kernel's
   high-water mark (VmHWM) is reset through ``/proc/self/clear_refs`` right
   before the call, after ``malloc_trim``, so "activations" = peak RSS during the
   call minus the RSS before it (which holds the interpreter, the model weights,
   the inputs and the warm-up's caches), and "total" = the process's peak RSS
   during the call. CUDA: ``torch.cuda.max_memory_allocated`` after
   ``reset_peak_memory_stats``, minus ``memory_allocated`` before the call.
3. Speed against "reference", a re-implementation of the authors'
   formulation (``tests/authors_reference.py``; the test suite checks it
   against the golden fixtures and the clip backend at every block): a
   forward pass through ALL blocks of the image tower, every block computing
   its attention explicitly and materialising the per-head, per-source
   contributions for every query (``einsum('bhnm,bhmc->bhnmc')``, [B, heads, n, n, head_dim]) as the authors'
   open_clip fork does; at block ``layer_index`` (only there, which favours the
   reference) it keeps the [CLS] query's per-source contributions mapped
   through out_proj per head, and the patch
   tokens of the residual stream; both are scored through ln_post (with the
   final [CLS] statistics), proj and the embedding norm, as the golden
   fixtures' README describes, then merged by ``masks.clip_mask``. The run
   checks that its mask equals the prompter's (max abs diff printed).

End to end (``prompter.map``: decoding, the image pool, encoding, Arrow) against
this model step is ``scripts/bench_pipeline.py``'s part.

The result is one table per model and a summary of the ratios with their
targets; ``--json PATH`` saves every number. Timings need an otherwise idle
machine: each table prints the 1-min load average at its start and end, and
the speed line gives the ratios from the fastest calls beside those from the
medians. With more busy threads than cores, torch's OpenMP threads wait on one
another and calls slow down several times over, unevenly.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import dataclasses
import gc
import json
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from datasets import disable_progress_bars

import hf_api_prompt
from hf_api_prompt import ImagePrompter, masks
from hf_api_prompt.inputs import open_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the reference's one home
from authors_reference import reference_raw_maps  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import QUESTIONS, set_1024  # noqa: E402  (the benchmarks' one home of their data)

logger = logging.getLogger("bench_clip")


GLIBC = ctypes.CDLL("libc.so.6") if platform.system() == "Linux" else None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    layer_index: int
    batch_size: int
    reference_batch_size: int  # the reference holds [B, heads, n, n, head_dim] per block


MODELS = {
    spec.name: spec
    for spec in (
        ModelSpec("ViT-B-16", layer_index=10, batch_size=8, reference_batch_size=2),
        ModelSpec("ViT-L-14-336", layer_index=22, batch_size=4, reference_batch_size=1),
    )
}


@dataclasses.dataclass
class Check:
    model: str
    name: str
    value: float
    op: str  # ">=" or "<="; "" for a number reported without a target
    target: Optional[float]

    @property
    def result(self) -> str:
        if self.target is None:
            return "INFO"
        ok = self.value >= self.target if self.op == ">=" else self.value <= self.target
        return "PASS" if ok else "FAIL"


def build_prompter(spec: ModelSpec, device: Optional[str], dtype: Optional[str]) -> ImagePrompter:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
        return ImagePrompter("clip", model=spec.name, pretrained=None, layer_index=spec.layer_index, device=device, dtype=dtype)


# ---------------------------------------------------------------- the steps
def prompter_mask(backend, pixels: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
    """The library's model step: text embedding, raw maps, merged grid mask."""
    layer = backend.config.layer_index
    maps = backend.raw_maps(pixels, backend.encode_questions(questions), [layer])[layer]
    return backend.recipe(maps, backend.config.enhance_coe, backend.config.kernel_size)


def plain_encode(backend, pixels: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
    """What any user of the model pays for one image embedding."""
    return backend.model.encode_image(pixels)


def reference_mask(backend, pixels: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
    """The authors' formulation of the clip mask, written out (module docstring, item 3)."""
    model = backend.model
    tokens = backend.tokenizer(list(questions)).to(pixels.device)
    text = F.normalize(model.encode_text(tokens).float(), dim=-1)
    attention_map, token_map = reference_raw_maps(model.visual, pixels, text, backend.config.layer_index)
    gh, gw = model.visual.grid_size
    return masks.clip_mask(
        attention_map.reshape(-1, gh, gw), token_map.reshape(-1, gh, gw), backend.config.enhance_coe, backend.config.kernel_size
    )


STEPS: Dict[str, Callable] = {"prompter step": prompter_mask, "encode_image": plain_encode, "reference": reference_mask}


# ------------------------------------------------------------- measurements
def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(calls: Dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int) -> Dict[str, List[float]]:
    """Seconds per call of each entry; the order rotates every round so drift hits all entries alike."""
    names = list(calls)
    seconds: Dict[str, List[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for round_index in range(warmup + repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                _sync(device)
                start = time.perf_counter()
                calls[name]()
                _sync(device)
                if round_index >= warmup:
                    seconds[name].append(time.perf_counter() - start)
                logger.debug("%s: %.3f s", name, time.perf_counter() - start)
    return seconds


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_of(call: Callable[[], object], device: torch.device) -> Dict[str, int]:
    """``{"before", "peak"}`` in bytes around one call (module docstring, item 2)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return {"before": before, "peak": torch.cuda.max_memory_allocated(device)}
    if GLIBC is None:
        raise RuntimeError("CPU memory is measured from /proc (Linux only)")
    GLIBC.malloc_trim(0)  # hand freed heap back, so reused free memory cannot hide growth
    before = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the high-water mark to the current RSS
    call()
    return {"before": before * 1024, "peak": _proc_status_kib("VmHWM") * 1024}


def _memory_worker(spec: ModelSpec, device: Optional[str], dtype: Optional[str], threads: int, step: str,
                   pixels: np.ndarray, questions: List[str]):
    """Runs in a fresh process: load, warm up, then measure one call of ``step``."""
    backend = build_prompter(spec, device, dtype).backend()
    torch.set_num_threads(threads)  # as in the parent (the library may pick one thread in worker processes)
    batch = torch.from_numpy(pixels).to(backend.device, backend.dtype)
    with torch.inference_mode():
        STEPS[step](backend, batch, questions)
        return peak_memory_of(lambda: STEPS[step](backend, batch, questions), backend.device)


def measure_memory(spec: ModelSpec, args, step: str, pixels: torch.Tensor, questions: List[str]) -> Dict[str, int]:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        job = pool.submit(_memory_worker, spec, args.device, args.dtype, torch.get_num_threads(), step,
                          pixels.float().cpu().numpy(), list(questions))
        return job.result()


# ----------------------------------------------------------------- the data
def questions_for(rows: int) -> List[str]:
    """Distinct questions for up to ``len(QUESTIONS)`` rows, cycling beyond."""
    return [QUESTIONS[i % len(QUESTIONS)] for i in range(rows)]


def _timed(function: Callable[[], object]):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


# ------------------------------------------------------------------ a model
def bench_model(spec: ModelSpec, args, jpegs: List[bytes]) -> dict:
    batch_size = args.batch_size or spec.batch_size
    reference_batch = min(batch_size, args.reference_batch_size or spec.reference_batch_size)
    load_before = os.getloadavg()[0]
    prompter = build_prompter(spec, args.device, args.dtype)
    logger.info("%s: loading (random weights)", spec.name)
    backend, load_seconds = _timed(prompter.backend)
    device = backend.device
    questions = questions_for(len(jpegs))
    pixels = backend.pixels([open_image(data) for data in jpegs[:batch_size]])
    batch_questions = questions[:batch_size]
    reference_pixels, reference_questions = pixels[:reference_batch], batch_questions[:reference_batch]

    logger.info("%s: throughput, %d warm-up + %d repeats", spec.name, args.warmup, args.repeats)
    seconds = time_alternating(
        {
            "prompter step": lambda: prompter_mask(backend, pixels, batch_questions),
            "encode_image": lambda: plain_encode(backend, pixels, batch_questions),
            "reference": lambda: reference_mask(backend, reference_pixels, reference_questions),
        },
        device, args.repeats, args.warmup,
    )
    rows = {"prompter step": batch_size, "encode_image": batch_size, "reference": reference_batch}
    rates = {name: rows[name] / statistics.median(values) for name, values in seconds.items()}
    with torch.inference_mode():
        mask_diff = float((prompter_mask(backend, reference_pixels, reference_questions)
                           - reference_mask(backend, reference_pixels, reference_questions)).abs().max())

    logger.info("%s: peak memory, one fresh process per method", spec.name)
    memory = {step: measure_memory(spec, args, step, pixels, batch_questions) for step in ("prompter step", "encode_image")}
    for numbers in memory.values():
        numbers["activations"] = numbers["peak"] - numbers["before"]

    return {
        "model": spec.name, "layer_index": spec.layer_index, "load_average": [load_before, os.getloadavg()[0]], "grid": list(prompter.grid_shape),
        "device": str(device), "dtype": str(backend.dtype).replace("torch.", ""), "load_seconds": load_seconds,
        "batch_size": batch_size, "reference_batch_size": reference_batch, "repeats": args.repeats, "warmup": args.warmup,
        "seconds_per_call": seconds, "per_second": rates, "reference_mask_max_abs_diff": mask_diff,
        "memory_bytes": memory,
    }


def checks_for(result: dict) -> List[Check]:
    name, rates, memory = result["model"], result["per_second"], result["memory_bytes"]
    step, plain = memory["prompter step"], memory["encode_image"]
    return [
        Check(name, "throughput: prompter step / encode_image", rates["prompter step"] / rates["encode_image"], ">=", 1.0),
        Check(name, "peak memory, activations: step / encode_image", step["activations"] / plain["activations"], "<=", 1.2),
        Check(name, "peak memory, whole process: step / encode_image", step["peak"] / plain["peak"], "<=", 1.2),
        Check(name, "speed-up over the authors' formulation", rates["prompter step"] / rates["reference"], ">=",
              20.0 if name == "ViT-L-14-336" else None),
        Check(name, "reference mask vs prompter mask, max abs diff", result["reference_mask_max_abs_diff"], "<=", 1e-4),
    ]


# ------------------------------------------------------------------- output
def _mib(value: float) -> str:
    return f"{value / 2 ** 20:,.0f} MiB"


def format_model(result: dict) -> str:
    rates, seconds, memory = result["per_second"], result["seconds_per_call"], result["memory_bytes"]
    batch, reference_batch = result["batch_size"], result["reference_batch_size"]
    gh, gw = result["grid"]
    step, plain = memory["prompter step"], memory["encode_image"]
    memory_how = ("CUDA allocator peak" if result["device"].startswith("cuda")
                  else "process RSS, high-water mark reset before the call")
    lines = [
        f"== {result['model']}  layer_index {result['layer_index']}, grid {gh}x{gw}, {result['device']} {result['dtype']}, "
        f"torch threads {torch.get_num_threads()}, model load {result['load_seconds']:.1f} s ==",
        f"(1-min load average of the machine: {result['load_average'][0]:.2f} at start, {result['load_average'][1]:.2f} at end)",
        f"1+3. speed ({result['repeats']} timed calls each after {result['warmup']} warm-up, methods rotated each repeat; "
        "per s = rows / median)",
        f"  {'method':<44}{'batch':>6}{'median s':>10}{'min s':>8}{'per s':>8}",
    ]
    for name, label in (("prompter step", "prompter step (questions+raw_maps+clip_mask)"),
                        ("encode_image", "plain model.encode_image"),
                        ("reference", "reference (authors' formulation)")):
        size = reference_batch if name == "reference" else batch
        lines.append(f"  {label:<44}{size:>6}{statistics.median(seconds[name]):>10.3f}{min(seconds[name]):>8.3f}{rates[name]:>8.2f}")
    best = {name: rows / min(seconds[name]) for name, rows in (("prompter step", batch), ("encode_image", batch), ("reference", reference_batch))}
    lines += [
        f"  prompter step / encode_image: {rates['prompter step'] / rates['encode_image']:.2f} from medians, "
        f"{best['prompter step'] / best['encode_image']:.2f} from minima; prompter step / reference: "
        f"{rates['prompter step'] / rates['reference']:.2f} from medians, {best['prompter step'] / best['reference']:.2f} from minima",
        f"  reference mask == prompter mask: max abs diff {result['reference_mask_max_abs_diff']:.2e}",
        f"2. peak memory of one call at batch {batch} (fresh process each, after a warm-up call; {memory_how})",
        f"  {'method':<44}{'before':>13}{'peak':>13}{'activations':>14}",
        f"  {'prompter step':<44}{_mib(step['before']):>13}{_mib(step['peak']):>13}{_mib(step['activations']):>14}",
        f"  {'plain model.encode_image':<44}{_mib(plain['before']):>13}{_mib(plain['peak']):>13}{_mib(plain['activations']):>14}",
        "  (before = interpreter + weights + inputs + warm-up caches; activations = peak - before)",
    ]
    return "\n".join(lines)


def format_summary(checks: List[Check]) -> str:
    lines = ["== summary ==", f"  {'model':<14}{'ratio':<50}{'value':>10}  {'target':<11}result"]
    for check in checks:
        target = f"{check.op} {check.target:g}" if check.target is not None else "-"
        value = f"{check.value:.2e}" if check.value < 0.01 else f"{check.value:.2f}"
        lines.append(f"  {check.model:<14}{check.name:<50}{value:>10}  {target:<11}{check.result}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), help="default: all (ViT-B-16 only with --quick)")
    parser.add_argument("--batch-size", type=int, help="rows per model call (default: 8 for ViT-B-16, 4 for ViT-L-14-336)")
    parser.add_argument("--reference-batch-size", type=int, help="rows per reference call (default: 2 / 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per method (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per method first (default 1)")
    parser.add_argument("--device", help="torch device (default: the library's choice, cuda if present)")
    parser.add_argument("--dtype", help="float32, float16 or bfloat16 (default: the library's choice for the device)")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 2, 1 repeat, ViT-B-16 unless --models")
    parser.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every timed call")
    args = parser.parse_args(argv)
    if args.quick:
        args.models = args.models or ["ViT-B-16"]
        args.batch_size, args.reference_batch_size = args.batch_size or 2, args.reference_batch_size or 1
        args.repeats = 1
    args.models = args.models or list(MODELS)
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    disable_progress_bars()
    started = time.perf_counter()
    if os.getloadavg()[0] > 0.5:
        logger.warning("1-min load average is %.2f: other processes use the CPUs, so timings will be noisy", os.getloadavg()[0])
    rows = {name: args.batch_size or MODELS[name].batch_size for name in args.models}  # one batch
    jpegs = set_1024(max(rows.values()))
    results, checks = [], []
    for name in args.models:
        result = bench_model(MODELS[name], args, jpegs[:rows[name]])
        results.append(result)
        checks += checks_for(result)
        print(format_model(result) + "\n", flush=True)
    print(format_summary(checks))
    wall = time.perf_counter() - started
    print(f"\nhf_api_prompt {hf_api_prompt.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, wall time {wall / 60:.1f} min")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "wall_seconds": wall, "torch": torch.__version__, "cpus": os.cpu_count(),
                       "results": results, "checks": [dataclasses.asdict(c) | {"result": c.result} for c in checks]},
                      handle, indent=2)


if __name__ == "__main__":
    main()
