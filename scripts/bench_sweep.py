"""A parameter sweep from one maps pass against the same variants as separate runs (issue 11, acceptance 3).

    python scripts/bench_sweep.py            # the acceptance run: 36 variants, 64 rows at 1024 px; 30 to 50 min on 2 cores
    python scripts/bench_sweep.py --quick    # smoke run: 4 variants, 8 rows at 256 px, a minute or two
    python scripts/bench_sweep.py --model local-dir:/tmp/clip --layers 2 3 --rows 16 --json sweep.json

Model: open_clip ``ViT-B-16`` with RANDOM weights (``pretrained=None``; the
library warns, and the timings do not depend on the weights), or ``--model``.
Data: ``--rows`` scenes ``hf_api_prompt.scenes.make_scene(seed, (size, size))``,
seeds 0, 1, ...: a flat colour with sensor-like noise and 1 to 4 solid shapes
(structure and noise like a photo's, so the PNG encoding costs what a real image
costs), each with its own question; a ``datasets.Dataset`` with an ``Image``
column (PNG) and a ``question`` column. Variants: the product of ``--layers``
(default: the model's three deepest blocks, 9 10 11 for ViT-B-16) x
``--enhance-coe`` (1 5 10) x ``--kernel-sizes`` (1 3) x ``--grayscale``
(0 200), 36 by default. Everything runs in this one process, in this order:

0. warm-up: one untimed model call per batch length (a full and, when the rows
   do not divide evenly, the last, shorter batch), so that one-time costs (lazy
   imports, kernel selection for a shape, the allocator's first growth) fall on no run;
1. (c) the single run: ``ImagePrompter(layer_index=<deepest layer>).map(ds)``
   with the other parameters at their defaults (enhance_coe 5, kernel 3, grayscale 0);
2. (a) the sweep: ``stages.sweep(...)`` -> one ``MapsPrompter.map(ds)`` (the
   model runs once, for all layers) -> one ``stages.remask(maps, prompter)`` per variant;
3. (b) the separate runs: per variant, a fresh ``ImagePrompter(...)`` (its own
   model load) and ``.map(ds)``, as 36 separate jobs would run;
4. in memory: each variant's stages 2 and 3 from the sweep's maps with no
   ``datasets`` at all (below).

Every ``map`` gets ``keep_in_memory=True`` and ``datasets.disable_caching()`` is
on, so no run writes or reads a cache file (each output is checked to have
none); the separate runs' map functions also have pairwise distinct
fingerprints (``datasets.fingerprint.Hasher``), so even a cached, file-backed
dataset would never hand one variant another's result.

Before any timing is printed the bench checks its results: every variant's
heatmaps from the sweep equal the separate run's (``tests/compare.py``:
``assert_heatmaps_close``), row 0's masked images agree within one 8-bit
level (``assert_images_close``), the in-memory computation gives the same
heatmaps, and the single run equals the sweep's variant with its parameters
(when the sweep has it). A bench of wrong results means nothing.

What each number includes (seconds, ``time.perf_counter``):

- load: ``prompter.backend()``, building the open_clip model (random init) or
  reading local weights. Random weights are drawn after ``torch.manual_seed(0)``
  in every run, so that all runs use the same model, as runs of one set of
  pretrained weights would (unseeded, each run would have another model and
  other heatmaps).
- model: the time inside ``backend.maps`` (an instance wrapper adds it up):
  preprocessing of the decoded images (resize, crop, normalise), the text
  tower, the image tower up to the deepest requested block, the maps' copy to
  the CPU.
- rest: total - load - model: building the prompters (config validation),
  ``datasets.map``'s plumbing, decoding the input PNGs, stage 2 (the recipe),
  stage 3 (mask resize + blend), the encoding of every masked image (the scenes
  are PNGs, so the default ``image_format="source"`` stores PNGs) and the Arrow writing. For the sweep, rest
  also holds the maps dataset's Arrow writing and every ``remask``.
- total: everything from building the prompter(s) to the finished output
  dataset(s); "no load" is total - load.
- in memory: the same work with no ``datasets``: decoding the input PNGs
  (once), ``prompter.grid_masks`` and ``prompts.apply_prompt`` per variant on
  the sweep's maps read into numpy arrays (the reading itself is not timed),
  batch by batch. No Arrow writes and no PNG encoding of the outputs. The
  in-memory ratio counts the sweep as decode + its model time + every variant's
  recipe + prompt, and the separate runs as 36 x (decode + that run's model time
  + its recipe + prompt), without model loads.

Ratios and their targets: sweep model / single-run model <= 1.3 (one pass for
three layers costs about one pass for the deepest); sweep total / the 36
separate totals <= 0.1, with and without the model loads; and the same in
memory. Timings need an otherwise idle machine (the 1-min load average is
printed at the start and end). The full run's time is measured at 16 rows (13 min
on 2 shared cores at a load average of 2 to 3, peak RSS 3.7 GB) and scaled: 30
minutes on 2 idle cores, up to 50 with other load.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from datasets import (Dataset, Features, Image, Value, disable_caching, disable_progress_bars, enable_caching,
                      enable_progress_bars, is_caching_enabled, is_progress_bar_enabled)

from datasets.fingerprint import Hasher

import hf_api_prompt
from hf_api_prompt import ImagePrompter, encoding, prompts
from hf_api_prompt.backends import get_backend
from hf_api_prompt.backends.clip import open_clip_config
from hf_api_prompt.inputs import open_image
from hf_api_prompt.prompter import grid_masks
from hf_api_prompt.scenes import make_scene
from hf_api_prompt.stages import BOX_COLUMN, MapsPrompter, maps_column, remask, sweep
from hf_api_prompt.stages import combinations as parameter_product

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the comparison helpers' one home
from compare import assert_heatmaps_close, assert_images_close  # noqa: E402

logger = logging.getLogger("bench_sweep")

MODEL_TIME_TARGET = 1.3  # sweep model / single-run model <=
TOTAL_TARGET = 0.1  # sweep total / 36 separate totals <=
WEIGHTS_SEED = 0  # torch.manual_seed before every model load (random init)


# ---------------------------------------------------------------- timing
class ModelClock:
    """Adds up the seconds spent in a loaded backend's ``maps`` (stage 1), by wrapping it on the instance."""

    def __init__(self, backend):
        self.seconds, self.calls = 0.0, 0
        inner = backend.maps

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        backend.maps = timed


def load_backend(function):
    """``function.backend()`` with torch's RNG seeded first: random weights are then the same weights in every run."""
    torch.manual_seed(WEIGHTS_SEED)
    return function.backend()


def _seconds_since(start: float) -> float:
    return time.perf_counter() - start


def _run_record(load: float, model: float, total: float) -> Dict[str, float]:
    return {"load": load, "model": model, "rest": total - load - model, "total": total, "no_load": total - load}


def _outputs(dataset, config) -> Dict[str, Any]:
    """What the checks need from an output dataset: all heatmaps, row 0's masked image (decoded)."""
    if dataset.cache_files:
        raise AssertionError(f"an output was written to cache files {dataset.cache_files}; every map should be in memory")
    heatmaps = dataset.with_format("numpy", columns=[config.heatmap_column])[config.heatmap_column]
    return {"heatmaps": np.asarray(heatmaps, dtype=np.float32), "first_image": dataset[0][config.masked_image_column]}


# ---------------------------------------------------------------- the runs
def make_dataset(rows: int, size: int) -> Dataset:
    scenes = [make_scene(seed, (size, size)) for seed in range(rows)]
    features = Features({"image": Image(), "question": Value("string")})
    return Dataset.from_dict({"image": [s.image for s in scenes], "question": [s.question for s in scenes]}, features=features)


def warm_up(base: Dict[str, Any], layer: int, dataset: Dataset, batch_size: int):
    """One untimed model call per batch length the runs will see (a first call with a new shape is slow)."""
    backend = load_backend(ImagePrompter("clip", **base, layer_index=layer))
    for length in sorted({min(batch_size, len(dataset)), len(dataset) % batch_size} - {0}):
        batch = dataset[:length]
        backend.maps([open_image(image) for image in batch["image"]], batch["question"], [layer])


def separate_run(params: Dict[str, Any], dataset: Dataset, batch_size: int) -> Dict[str, Any]:
    """One variant as its own job: a fresh prompter, its model load, ``map``.

    Returns the config, the map function's fingerprint, the times and the outputs, not the
    prompter: its loaded model would stay in memory (36 ViT-B-16s are over 20 GB).
    """
    start = time.perf_counter()
    prompter = ImagePrompter("clip", **params)
    load_start = time.perf_counter()
    clock = ModelClock(load_backend(prompter))
    load = _seconds_since(load_start)
    out = prompter.map(dataset, batch_size=batch_size, keep_in_memory=True)
    record = _run_record(load, clock.seconds, _seconds_since(start))
    return {"config": prompter.config, "fingerprint": Hasher.hash(prompter), "times": record, **_outputs(out, prompter.config)}


def sweep_run(base: Dict[str, Any], grid: Dict[str, list], dataset: Dataset, batch_size: int) -> Dict[str, Any]:
    """(a): ``sweep`` -> one ``MapsPrompter.map`` -> one ``remask`` per variant."""
    start = time.perf_counter()
    prompters = sweep("clip", **base, **grid)
    [maps_prompter] = MapsPrompter.for_prompters(prompters)
    setup = _seconds_since(start)
    load_start = time.perf_counter()
    clock = ModelClock(load_backend(maps_prompter))
    load = _seconds_since(load_start)
    maps_start = time.perf_counter()
    maps = maps_prompter.map(dataset, batch_size=batch_size, keep_in_memory=True)
    maps_wall = _seconds_since(maps_start)
    if maps.cache_files:
        raise AssertionError(f"the maps dataset was written to cache files {maps.cache_files}")
    variants = []
    for prompter in prompters:
        remask_start = time.perf_counter()
        out = remask(maps, prompter, batch_size=batch_size, maps_prompter=maps_prompter, keep_in_memory=True)
        variants.append({"prompter": prompter, "remask": _seconds_since(remask_start), **_outputs(out, prompter.config)})
        del out
    total = _seconds_since(start)
    return {"maps": maps, "maps_prompter": maps_prompter, "variants": variants, "setup": setup, "maps_wall": maps_wall,
            "times": _run_record(load, clock.seconds, total),
            "maps_pass": _run_record(load, clock.seconds, setup + load + maps_wall)}


def in_memory(maps, maps_prompter: MapsPrompter, prompters: Sequence[ImagePrompter], batch_size: int) -> Dict[str, Any]:
    """Stages 2 and 3 of every variant from the maps, with no ``datasets``: decode once, then recipe + prompt."""
    column = maps_prompter.config.image_column
    stored = maps.cast_column(column, Image(decode=False))[column]
    map_names = get_backend(maps_prompter.config.backend).map_names
    columns = [maps_column(name, layer) for layer in maps_prompter.layers for name in map_names]
    arrays = {c: np.asarray(a) for c, a in maps.with_format("numpy", columns=columns)[:].items()}
    boxes = [None if box is None else tuple(box) for box in maps[BOX_COLUMN]]
    start = time.perf_counter()
    images = [open_image(value) for value in stored]
    decode = _seconds_since(start)
    spans = [slice(i, i + batch_size) for i in range(0, len(images), batch_size)]
    variants, png_seconds = [], None
    for number, prompter in enumerate(prompters):
        config = prompter.config
        start = time.perf_counter()
        heatmaps, first_batch = [], None
        for span in spans:
            grid = grid_masks(config, {name: arrays[maps_column(name, config.layer_index)][span] for name in map_names})
            prompted = prompts.apply_prompt(config, images[span], grid, boxes[span])
            heatmaps.append(grid)
            first_batch = first_batch or [p.image for p in prompted]
        variants.append({"seconds": _seconds_since(start), "heatmaps": np.concatenate(heatmaps), "first_image": first_batch[0]})
        if number == 0:  # what storing a masked image costs (first batch of the first variant; PNG scenes: PNG)
            start = time.perf_counter()
            for image in first_batch:
                encoding.encode(image, config, "PNG")
            png_seconds = _seconds_since(start) / len(first_batch)
    return {"decode": decode, "variants": variants, "png_per_image": png_seconds}


# ---------------------------------------------------------------- checks
def check(sweep_result, separate, single, memory, single_name: Optional[str]) -> List[str]:
    """Assert that every way of computing a variant gave the same result; return what was checked."""
    names = [variant_name(v["prompter"].config) for v in sweep_result["variants"]]
    worst = 0.0
    for name, a, b, m in zip(names, sweep_result["variants"], separate, memory["variants"]):
        if a["prompter"].config != b["config"]:
            raise AssertionError(f"variant {name}: the sweep's config {a['prompter'].config} != the separate run's {b['config']}")
        assert_heatmaps_close(a["heatmaps"], b["heatmaps"], f"variant {name}: sweep vs separate run heatmaps")
        assert_heatmaps_close(m["heatmaps"], a["heatmaps"], f"variant {name}: in-memory vs sweep heatmaps")
        assert_images_close(a["first_image"], b["first_image"], f"variant {name}: row 0 masked image, sweep vs separate run")
        assert_images_close(m["first_image"], a["first_image"], f"variant {name}: row 0 masked image, in memory vs sweep")
        worst = max(worst, float(np.abs(a["heatmaps"] - b["heatmaps"]).max()))
    done = [(f"{len(names)} variants: sweep heatmaps == separate runs' (max abs diff {worst:.1e}) == in-memory; "
             "row 0 masked images within one level")]
    if single_name is not None:
        twin = sweep_result["variants"][names.index(single_name)]
        assert_heatmaps_close(single["heatmaps"], twin["heatmaps"], f"single run vs sweep variant {single_name}")
        done.append(f"single run == sweep variant {single_name}")
    hashes = {run["fingerprint"] for run in separate}
    if len(hashes) != len(separate):
        raise AssertionError(f"{len(separate)} separate runs have only {len(hashes)} distinct map fingerprints")
    done.append(f"{len(hashes)} distinct map fingerprints; every output in memory (no cache files)")
    return done


# ---------------------------------------------------------------- report
def variant_name(config) -> str:
    """``L11 e5 k3 g0``: layer_index, enhance_coe, kernel_size, grayscale."""
    return f"L{config.layer_index} e{config.enhance_coe:g} k{config.kernel_size} g{config.grayscale}"


def summarize(sweep_result, separate, single, memory) -> Dict[str, Any]:
    count = len(separate)
    summed = {key: sum(run["times"][key] for run in separate) for key in ("load", "model", "rest", "total", "no_load")}
    remask_total = sum(v["remask"] for v in sweep_result["variants"])
    prompt_total = sum(v["seconds"] for v in memory["variants"])
    sweep_times, single_times = sweep_result["times"], single["times"]
    memory_sweep = memory["decode"] + sweep_times["model"] + prompt_total
    memory_separate = count * memory["decode"] + summed["model"] + prompt_total
    ratios = [
        ("sweep model / single-run model", sweep_times["model"] / single_times["model"], MODEL_TIME_TARGET),
        (f"sweep total / {count} separate totals (with model loads)", sweep_times["total"] / summed["total"], TOTAL_TARGET),
        (f"sweep total / {count} separate totals (without model loads)", sweep_times["no_load"] / summed["no_load"],
         TOTAL_TARGET),
        ("same in memory: no datasets, no Arrow, no PNG (without loads)", memory_sweep / memory_separate, TOTAL_TARGET),
    ]
    return {
        "variants": [{"name": variant_name(run["config"]), "separate": run["times"], "remask": v["remask"],
                      "in_memory_recipe_prompt": m["seconds"]}
                     for run, v, m in zip(separate, sweep_result["variants"], memory["variants"])],
        "sweep": sweep_times, "sweep_maps_pass": sweep_result["maps_pass"], "sweep_setup": sweep_result["setup"],
        "sweep_remask_total": remask_total, "separate_sum": summed, "single": single_times,
        "in_memory": {"decode": memory["decode"], "recipe_prompt_total": prompt_total, "sweep": memory_sweep,
                      "separate": memory_separate, "png_encode_per_image": memory["png_per_image"]},
        "remask_datasets_overhead": remask_total - count * memory["decode"] - prompt_total,
        "ratios": [{"name": name, "value": value, "target": target, "result": "PASS" if value <= target else "FAIL"}
                   for name, value, target in ratios],
    }


def format_report(summary: Dict[str, Any], header: str, checks: Sequence[str]) -> str:
    count = len(summary["variants"])
    lines = [header, "checks passed: " + "; ".join(checks), ""]
    lines.append(f"{'variant':<18} {'separate run:':>13} {'load':>7} {'model':>8} {'rest':>8} {'total':>8} | "
                 f"{'remask':>8} | {'in memory':>9}")
    for row in summary["variants"]:
        s = row["separate"]
        lines.append(f"{row['name']:<18} {'':>13} {s['load']:7.2f} {s['model']:8.2f} {s['rest']:8.2f} {s['total']:8.2f} | "
                     f"{row['remask']:8.2f} | {row['in_memory_recipe_prompt']:9.3f}")
    lines.append("(remask: wall time of stages.remask, no model; in memory: recipe + prompt of the variant, no datasets)")
    lines.append("")
    head = f"{'run':<40} {'load':>8} {'model':>8} {'rest':>8} {'total':>9} {'no load':>9}"
    lines += [head, "-" * len(head)]

    def row(name, t):
        return f"{name:<40} {t['load']:8.2f} {t['model']:8.2f} {t['rest']:8.2f} {t['total']:9.2f} {t['no_load']:9.2f}"

    lines.append(row("(a) sweep: setup + maps pass", summary["sweep_maps_pass"]))
    lines.append(f"{f'(a) sweep: {count} x remask':<40} {'':>8} {'':>8} {summary['sweep_remask_total']:8.2f} "
                 f"{summary['sweep_remask_total']:9.2f} {summary['sweep_remask_total']:9.2f}")
    lines.append(row("(a) sweep, all", summary["sweep"]))
    lines.append(row(f"(b) {count} separate runs, sum", summary["separate_sum"]))
    lines.append(row("(b) one separate run, mean", {k: v / count for k, v in summary["separate_sum"].items()}))
    lines.append(row("(c) single run, deepest layer", summary["single"]))
    memory = summary["in_memory"]
    lines.append("")
    lines.append(f"in memory (no datasets): decode {memory['decode']:.2f} s once; recipe + prompt of all {count} variants "
                 f"{memory['recipe_prompt_total']:.2f} s")
    lines.append(f"  (a) sweep: decode + model + {count} x recipe+prompt = {memory['sweep']:.2f} s")
    lines.append(f"  (b) separate: {count} x decode + their model + {count} x recipe+prompt = {memory['separate']:.2f} s")
    lines.append(f"remask's datasets part (Arrow writing, PNG encoding, map plumbing) = remask total - {count} x decode - "
                 f"recipe+prompt = {summary['remask_datasets_overhead']:.2f} s of {summary['sweep_remask_total']:.2f} s; "
                 f"PNG encoding alone: {memory['png_encode_per_image'] * 1000:.1f} ms per masked image")
    lines.append("")
    lines.append(f"{'ratio':<64} {'value':>7}  {'target':<8} result")
    for ratio in summary["ratios"]:
        lines.append(f"{ratio['name']:<64} {ratio['value']:7.3f}  <= {ratio['target']:<5} {ratio['result']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- main
def _kernel(value: str):
    return value if value == "auto" else int(value)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model (default ViT-B-16, random weights)")
    parser.add_argument("--pretrained", default=None, help="weights tag or file (default: none, random weights)")
    parser.add_argument("--layers", type=int, nargs="+", help="layer_index values (default: the model's three deepest blocks)")
    parser.add_argument("--enhance-coe", type=float, nargs="+", help="default: 1 5 10")
    parser.add_argument("--kernel-sizes", type=_kernel, nargs="+", help="odd sizes or 'auto' (default: 1 3)")
    parser.add_argument("--grayscale", type=int, nargs="+", help="default: 0 200")
    parser.add_argument("--rows", type=int, help="scenes in the dataset (default 64)")
    parser.add_argument("--size", type=int, help="square scene side in pixels (default 1024)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per model call and per remask batch (default 8)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 8 rows at 256 px, the two deepest layers x enhance_coe 5 x kernel 1 3 x grayscale 0")
    parser.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    blocks = open_clip_config(args.model)["model_cfg"]["vision_cfg"]["layers"]
    quick = {"rows": 8, "size": 256, "layers": list(range(blocks - 2, blocks)), "enhance_coe": [5.0],
             "kernel_sizes": [1, 3], "grayscale": [0]}
    full = {"rows": 64, "size": 1024, "layers": list(range(max(0, blocks - 3), blocks)), "enhance_coe": [1.0, 5.0, 10.0],
            "kernel_sizes": [1, 3], "grayscale": [0, 200]}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv=None) -> Dict[str, Any]:
    """Run the bench, print its report; returns the summary, with every variant's heatmaps under ``"heatmaps"``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    once = _Once("No pretrained weights loaded")  # open_clip says so on every random-weights load
    logging.getLogger().addFilter(once)
    caching, bars = is_caching_enabled(), is_progress_bar_enabled()
    disable_caching()
    disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("once", message=".*RANDOM weights.*")
            return bench(args)
    finally:  # called from a test, the process goes on: leave datasets as it was
        logging.getLogger().removeFilter(once)
        if caching:
            enable_caching()
        if bars:
            enable_progress_bars()


def bench(args) -> Dict[str, Any]:
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    base = {"model": args.model, "pretrained": args.pretrained}
    grid = {"layer_index": args.layers, "enhance_coe": args.enhance_coe, "kernel_size": args.kernel_sizes,
            "grayscale": args.grayscale}
    combinations = parameter_product(grid)
    deepest = max(args.layers)

    logger.info("data: %d scenes of %d px", args.rows, args.size)
    dataset = make_dataset(args.rows, args.size)
    warm_up(base, deepest, dataset, args.batch_size)
    logger.info("(c) single run, layer %d", deepest)
    single = separate_run({**base, "layer_index": deepest}, dataset, args.batch_size)
    logger.info("(a) sweep: %d variants from one maps pass", len(combinations))
    sweep_result = sweep_run(base, grid, dataset, args.batch_size)
    if len(sweep_result["variants"]) != len(combinations):
        raise SystemExit(f"the sweep has {len(sweep_result['variants'])} distinct variants for {len(combinations)} "
                         "combinations (kernel 'auto' stands for a listed size): list each size once")
    separate = []
    for number, params in enumerate(combinations, 1):
        logger.info("(b) separate run %d of %d: %s", number, len(combinations), params)
        separate.append(separate_run({**base, **params}, dataset, args.batch_size))
        gc.collect()
    logger.info("in memory: recipe + prompt of every variant")
    memory = in_memory(sweep_result["maps"], sweep_result["maps_prompter"], [v["prompter"] for v in sweep_result["variants"]],
                       args.batch_size)

    names = [variant_name(v["prompter"].config) for v in sweep_result["variants"]]
    single_name = variant_name(single["config"])
    checks = check(sweep_result, separate, single, memory, single_name if single_name in names else None)
    summary = summarize(sweep_result, separate, single, memory)
    header = (f"bench_sweep: {args.model} (pretrained {args.pretrained}), {args.rows} rows of {args.size}x{args.size} scenes, "
              f"batch {args.batch_size}, {len(combinations)} variants (layers {' '.join(map(str, args.layers))} x enhance_coe "
              f"{' '.join(f'{c:g}' for c in args.enhance_coe)} x kernel_size {' '.join(map(str, args.kernel_sizes))} x grayscale "
              f"{' '.join(map(str, args.grayscale))}); single run: layer {deepest} ({single_name})\n"
              f"hf_api_prompt {hf_api_prompt.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
              f"torch threads {torch.get_num_threads()}, 1-min load average {load_before:.2f} at the start")
    print(format_report(summary, header, checks))
    wall = _seconds_since(started)
    print(f"wall time {wall / 60:.1f} min; 1-min load average {os.getloadavg()[0]:.2f} at the end")
    summary.update(args=vars(args), checks=checks, wall_seconds=wall, torch_threads=torch.get_num_threads(),
                   cpus=os.cpu_count(), torch=torch.__version__)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=1)
    summary["heatmaps"] = {"sweep": {n: v["heatmaps"] for n, v in zip(names, sweep_result["variants"])},
                           "separate": {n: run["heatmaps"] for n, run in zip(names, separate)},
                           "single": {single_name: single["heatmaps"]}}
    return summary


class _Once(logging.Filter):
    """Let a log message that starts with ``prefix`` through once."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix, self.seen = prefix, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.prefix):
            return True
        seen, self.seen = self.seen, True
        return not seen


if __name__ == "__main__":
    main()
