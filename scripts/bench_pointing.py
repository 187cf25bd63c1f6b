"""Pointing game: does the mask land on the object the question asks about? (issue 6)

    python scripts/bench_pointing.py                                # bundled demo model, 500 held-out scenes, every block: about a minute on 2 cores
    python scripts/bench_pointing.py --layers 1                     # block 1 only, a fraction of that
    python scripts/bench_pointing.py --model local-dir:/tmp/clip --json pointing.json
    python scripts/bench_pointing.py --backend llava --model DIR    # a generative VLM: plain and relative attention

Scenes: ``hf_api_prompt.scenes.make_scene(seed, (112, 112), min_objects=2)``
for seeds ``--first-seed`` .. ``--first-seed + --scenes - 1`` (default
500,000..500,499; ``scripts/train_demo_clip.py`` trains on seeds from
1,000,000 up, so none of these was seen in training). Every scene has 2-4
objects: with a single object any object-finding map would score, whatever the
question. The question is the scene's own (types ``color``: names the shape,
"What color is the triangle?"; ``shape``: names the colour, "What shape is the
red object?"; ``where``: names both), and the target is the object it names.

Maps, built with the library (``ImagePrompter(...).backend().raw_maps`` and
``hf_api_prompt.masks``) for every ``layer_index`` of the model and kernel
sizes 1, 3 and ``auto`` (``hf_api_prompt.masks.auto_kernel_size`` of the grid:
the paper's 3 on a 24 x 24 grid scaled to the model's; on the demo model's
14 x 14 grid auto = 1, so its rows repeat the k1 rows), ``enhance_coe`` 5, the
paper's. The raw maps of every layer come from one pass of the image tower per
scene batch and question set (the real questions, then the control questions:
the text enters every map, so each set is a pass), through the deepest layer
asked for, as the library's maps stage computes them for a sweep:

- ``attention``: ``mean_filter(enhance(A))``, the attention map alone;
- ``token``: ``mean_filter(invert(T))``, the token map alone, inverted as the
  method uses it;
- ``union``: ``clip_mask(A, T)``, the method's mask (the product's heatmap);
  ``union`` with kernel 3 is the paper-default pipeline.

With ``--backend llava`` (any generative family of the backend) the maps are the
backend's plain ``attention`` and ViCrop's ``relative`` attention (the plain heatmap
over one prefill's heatmap for the generic instruction, shared by the real and the
control questions of a batch), both through the backend's recipe
(``masks.attention_mask``); the product's mask is ``attention`` (the default).

Geometry: a cell is mapped to image pixels with the product's ``"aligned"``
geometry, through ``backend.grid_box(image.size)``; the default square scenes
at the model's input size make that the identity (``"paper"`` == ``"aligned"``),
so cell (r, c) covers pixels [8c, 8c + 8) x [8r, 8r + 8) of a 112 px scene.

Scores, for one heatmap H (non-negative, ``[gh, gw]``) and the target box
``[x0, x1) x [y0, y1)`` in pixels; a cell is *inside* when its centre is:

- hit: the highest cell is inside. Cells that tie for the maximum (a saturated
  sigmoid can tie) share the point: the hit is the fraction of the tied cells
  that are inside, i.e. the expected hit of a random tie-break.
- mass: ``sum(H over inside cells) / sum(H)`` (a uniform map scores the box's
  share of the cells; an all-zero map counts as uniform).

Crop (``prompt="crop"``, ViCrop's crop, at its defaults :data:`CROP_DEFAULTS`): each
map, as a mask, goes through the prompt stage's own box rule
(``hf_api_prompt.prompts.crop_box`` on the mask resized to pixels); ``crop:in`` is
the share of scenes whose crop holds the whole target box, ``share`` the target's
share of the crop's area, ``area`` the crop's share of the image (a crop of the
whole image always holds the target, so ``crop:in`` is read with ``area``). The
baselines' heatmaps go through the same rule.

Baselines, scored as heatmaps by the same two functions (so exactly, as
expectations, with no sampling): ``random cell`` (uniform map: every cell ties),
``center cell`` (the cells nearest the image centre tie: the central 2x2 of an
even grid), ``random object`` (each object's box cells, averaged over the
scene's objects), ``largest object`` (the largest box's cells).

Control: the same scenes, but the question is the same type of question about
another object of the scene (chosen by seed), while the score still uses the
original target's box. A map that follows the question should rarely hit there;
a map that ignores the question scores as high as on the real question. The
``hit`` column and the ``control`` column are on the same scenes.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from PIL import Image

from hf_api_prompt import ImagePrompter, masks
from hf_api_prompt.config import PROMPT_PARAMETERS
from hf_api_prompt.prompts import crop_box
from hf_api_prompt.bundled import DEMO_MODEL, DEMO_MODEL_LAYER
from hf_api_prompt.scenes import QUESTION_TYPES, Scene, make_scene, question_about

logger = logging.getLogger("bench_pointing")

FIRST_SEED = 500_000
ENHANCE_COE = 5
KERNEL_SIZES = (1, 3, "auto")  # "auto": masks.auto_kernel_size(grid), resolved per model
MAPS = ("attention", "token", "union")
BASELINES = ("random cell", "center cell", "random object", "largest object")


# ---------------------------------------------------------------- scoring (pure)
def cells_inside(grid_shape: Tuple[int, int], grid_box: Sequence[float], image_size: Tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """Boolean ``[gh, gw]``: cells whose centre, mapped to pixels, lies in ``box``.

    Args:
        grid_shape: ``(gh, gw)``.
        grid_box: grid coordinates ``(gx0, gy0, gx1, gy1)`` that the whole image
            ``[0, W) x [0, H)`` maps to (``backend.grid_box``; ``(0, 0, gw, gh)``
            when the model saw the whole image).
        image_size: ``(W, H)``.
        box: ``(x0, y0, x1, y1)`` in pixels, x1 and y1 exclusive.
    """
    gh, gw = grid_shape
    gx0, gy0, gx1, gy1 = grid_box
    width, height = image_size
    xs = (np.arange(gw) + 0.5 - gx0) * width / (gx1 - gx0)
    ys = (np.arange(gh) + 0.5 - gy0) * height / (gy1 - gy0)
    x0, y0, x1, y1 = box
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def pointing_hit(heatmap: np.ndarray, inside: np.ndarray) -> float:
    """Fraction of the maximal cells of ``heatmap`` that are ``inside`` (1.0 or 0.0 without ties)."""
    heatmap = np.asarray(heatmap)
    top = heatmap == heatmap.max()
    return float(inside[top].mean())


def mass_inside(heatmap: np.ndarray, inside: np.ndarray) -> float:
    """Share of the (non-negative) heatmap's total in the ``inside`` cells; an all-zero map counts as uniform."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if (heatmap < 0).any():
        raise ValueError("mass_inside needs a non-negative heatmap")
    total = heatmap.sum()
    return float(inside.mean()) if total == 0 else float(heatmap[inside].sum() / total)


#: ``prompt="crop"``'s defaults (crop_mass, crop_padding, crop_min_size), the crop the table scores.
CROP_DEFAULTS = {field: spec.default for field, spec in PROMPT_PARAMETERS["crop"].items()}


def crop_scores(heatmap: np.ndarray, grid_box: Sequence[float], image_size: Tuple[int, int], box: Sequence[float],
                crop: Dict[str, float] = CROP_DEFAULTS) -> Tuple[float, float, float]:
    """``(contains, share, area)`` of the crop ``prompt="crop"`` makes from ``heatmap`` (a ``[gh, gw]`` mask in [0, 1]).

    The mask goes to pixels as the prompt stage maps it (LANCZOS, the ``grid_box`` of
    ``geometry="aligned"``), then :func:`hf_api_prompt.prompts.crop_box` with ``crop``'s
    parameters. ``contains``: 1.0 when the crop holds the whole target ``box``; ``share``: the
    target's share of the crop's area; ``area``: the crop's share of the image (a crop of the
    whole image always contains the target: read ``contains`` with ``area``).
    """
    weights = masks.mask_to_pixels(masks.mask_to_uint8(np.asarray(heatmap, dtype=np.float32)), image_size,
                                   Image.Resampling.LANCZOS, tuple(grid_box))
    left, top, right, bottom = crop_box(np.asarray(weights), crop["crop_mass"], crop["crop_padding"], crop["crop_min_size"])
    x0, y0, x1, y1 = box
    contains = float(left <= x0 and top <= y0 and right >= x1 and bottom >= y1)
    overlap = max(0.0, min(right, x1) - max(left, x0)) * max(0.0, min(bottom, y1) - max(top, y0))
    area = (right - left) * (bottom - top)
    return contains, overlap / area, area / (image_size[0] * image_size[1])


def baseline_heatmaps(grid_shape, grid_box, image_size, object_boxes: Sequence[Sequence[float]]) -> Dict[str, List[np.ndarray]]:
    """Each baseline as one or more heatmaps (several = equally likely draws, scores averaged)."""
    gh, gw = grid_shape
    gx0, gy0, gx1, gy1 = grid_box
    centre_x, centre_y = (gx0 + gx1) / 2, (gy0 + gy1) / 2  # image centre in grid coordinates
    distance = np.hypot(np.arange(gw)[None, :] + 0.5 - centre_x, np.arange(gh)[:, None] + 0.5 - centre_y)
    object_maps = [cells_inside(grid_shape, grid_box, image_size, b).astype(np.float64) for b in object_boxes]
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in object_boxes]
    return {
        "random cell": [np.ones(grid_shape)],
        "center cell": [(distance == distance.min()).astype(np.float64)],
        "random object": object_maps,
        "largest object": [m for m, a in zip(object_maps, areas) if a == max(areas)],
    }


def score(heatmaps: Sequence[np.ndarray], inside: np.ndarray) -> Tuple[float, float]:
    """Mean (hit, mass) over equally likely heatmaps."""
    return (float(np.mean([pointing_hit(h, inside) for h in heatmaps])),
            float(np.mean([mass_inside(h, inside) for h in heatmaps])))


def crop_score(heatmaps: Sequence[np.ndarray], grid_box, image_size, box) -> Tuple[float, float, float]:
    """Mean :func:`crop_scores` over equally likely heatmaps (a baseline's heatmaps are in [0, 1], as masks)."""
    return tuple(float(v) for v in np.mean([crop_scores(h, grid_box, image_size, box) for h in heatmaps], axis=0))


def variant_maps(attention: torch.Tensor, tokens: torch.Tensor, kernel_size: int, enhance_coe: float = ENHANCE_COE) -> Dict[str, torch.Tensor]:
    """The three maps of the table from the raw maps ``[B, gh, gw]`` (all in [0, 1])."""
    return {
        "attention": masks.mean_filter(masks.enhance(attention, enhance_coe), kernel_size),
        "token": masks.mean_filter(masks.invert(tokens), kernel_size),
        "union": masks.clip_mask(attention, tokens, enhance_coe, kernel_size),
    }


# ---------------------------------------------------------------- scenes
def control_question(scene: Scene, seed: int) -> str:
    """The same type of question about another object of ``scene``."""
    others = [o for o in scene.objects if o != scene.target]
    other = random.Random(f"control-{seed}").choice(others)
    return question_about(other, scene.question_type, scene.image.size)[0]


# ---------------------------------------------------------------- benchmark
class ClipMaps:
    """The clip backend's maps for the table: ``attention``, ``token``, ``union`` (see the module docstring)."""

    names = MAPS
    product = "union"  # the method's mask

    def __init__(self, model: str, layers: Sequence[int]):
        # Built for the deepest layer, the backend reads every shallower one on the way there.
        self.backend = ImagePrompter("clip", model=model, layer_index=max(layers), enhance_coe=ENHANCE_COE).backend()
        self.layers = layers
        self.grid_shape = tuple(self.backend.model.visual.grid_size)
        self.blocks = len(self.backend.model.visual.transformer.resblocks)
        self.grid_box = self.backend.grid_box

    def raw(self, images, question_sets: Sequence[Sequence[str]]) -> List[dict]:
        """Per question set, ``{layer: raw maps}``: one image pass, one text encoding and image read-out per set."""
        with torch.inference_mode():
            pixels = self.backend.pixels(images)
            return [self.backend.raw_maps(pixels, self.backend.encode_questions(questions), self.layers)
                    for questions in question_sets]

    @staticmethod
    def variants(raw: dict, kernel_size: int) -> Dict[str, torch.Tensor]:
        return variant_maps(raw["attention"], raw["tokens"], kernel_size)


class GenerativeMaps:
    """The llava backend's maps: ``attention`` (plain) and ``relative`` (ViCrop's, over the generic instruction).

    One ``generate`` per question set gives the plain heatmaps of every layer; one
    prefill of the generic instruction per image batch gives the denominator that both
    sets share (it does not depend on the question). Both maps go through the
    backend's recipe (``masks.attention_mask``).
    """

    names = ("attention", "relative")
    product = "attention"

    def __init__(self, model: str, layers: Sequence[int], max_new_tokens: int):
        from hf_api_prompt.backends.llava import GENERIC_INSTRUCTION

        self.backend = ImagePrompter("llava", model=model, layer_index=max(layers), enhance_coe=ENHANCE_COE,
                                     max_new_tokens=max_new_tokens).backend()
        self.generic = GENERIC_INSTRUCTION
        self.layers = layers
        self.grid_shape = self.backend.family.grid()
        self.blocks = self.backend.family.num_layers
        self.grid_box = lambda size: self.backend.family.box(size, self.grid_shape)

    def raw(self, images, question_sets: Sequence[Sequence[str]]) -> List[dict]:
        generic = self.backend.prefill_heatmaps(images, [self.generic] * len(images), self.layers)
        out = []
        for questions in question_sets:
            heatmaps = self.backend.generate(images, questions, self.layers).heatmaps
            out.append({layer: {"attention": heatmaps[layer], "generic": generic[layer].reshape(heatmaps[layer].shape)}
                        for layer in self.layers})
        return out

    @staticmethod
    def variants(raw: dict, kernel_size: int) -> Dict[str, torch.Tensor]:
        tiny = torch.finfo(torch.float32).tiny
        return {"attention": masks.attention_mask(raw["attention"], ENHANCE_COE, kernel_size),
                "relative": masks.attention_mask(raw["attention"] / raw["generic"].clamp_min(tiny), ENHANCE_COE, kernel_size)}


def run(model: str, layers: Sequence[int], seeds: Sequence[int], size=(112, 112), batch_size: int = 100,
        backend: str = "clip", max_new_tokens: int = 5) -> dict:
    """Scores of every (layer, map, kernel) and of the baselines, overall and per question type.

    ``backend``: ``"clip"`` (maps ``attention``, ``token``, ``union``) or ``"llava"``
    (``attention``, ``relative``; ``max_new_tokens`` per answer).

    Returns ``{"rows": [{"layer_index", "map", "kernel_size", "hit", "mass",
    "control_hit", "hit_by_type": {...}, "mass_by_type": {...}}], "baselines": [...], "n": ...,
    "n_by_type": {...}, "blocks": number of blocks of the model, "auto_kernel_size": what
    kernel_size "auto" is on this grid, "maps", "product": the map the backend's mask is}``.
    The rows are ordered by layer, kernel, map.
    """
    scenes = [make_scene(seed, size, min_objects=2) for seed in seeds]
    controls = [control_question(scene, seed) for scene, seed in zip(scenes, seeds)]
    types = np.array([s.question_type for s in scenes])
    layers = list(dict.fromkeys(layers))
    source = ClipMaps(model, layers) if backend == "clip" else GenerativeMaps(model, layers, max_new_tokens)
    grid_shape = source.grid_shape
    kernels = {kernel: masks.auto_kernel_size(grid_shape) if kernel == "auto" else kernel for kernel in KERNEL_SIZES}
    grid_boxes = [source.grid_box(s.image.size) for s in scenes]
    insides = [cells_inside(grid_shape, gb, s.image.size, s.target.box) for s, gb in zip(scenes, grid_boxes)]
    results: Dict[Tuple[int, str, object], Dict[str, list]] = {
        (layer, name, kernel): {"hit": [], "mass": [], "control_hit": [], "crop_contains": [], "crop_share": [], "crop_area": []}
        for layer in layers for kernel in KERNEL_SIZES for name in source.names
    }
    for start in range(0, len(scenes), batch_size):
        batch = scenes[start:start + batch_size]
        real, control = source.raw([s.image for s in batch], [[s.question for s in batch], controls[start:start + batch_size]])
        for layer in layers:
            for kernel, kernel_size in kernels.items():
                real_maps = source.variants(real[layer], kernel_size)
                control_maps = source.variants(control[layer], kernel_size)
                for name in source.names:
                    entry = results[layer, name, kernel]
                    for i, inside in enumerate(insides[start:start + batch_size]):
                        heatmap, scene = real_maps[name][i].numpy(), batch[i]
                        entry["hit"].append(pointing_hit(heatmap, inside))
                        entry["mass"].append(mass_inside(heatmap, inside))
                        entry["control_hit"].append(pointing_hit(control_maps[name][i].numpy(), inside))
                        crop = crop_scores(heatmap, grid_boxes[start + i], scene.image.size, scene.target.box)
                        for key, value in zip(("crop_contains", "crop_share", "crop_area"), crop):
                            entry[key].append(value)
        logger.info("scenes %d..%d done", start, start + len(batch) - 1)

    def summary(values: Dict[str, list]) -> dict:
        out = {key: round(float(np.mean(v)), 4) for key, v in values.items()}
        for key in ("hit", "mass"):
            out[f"{key}_by_type"] = {t: round(float(np.mean(np.array(values[key])[types == t])), 4) for t in QUESTION_TYPES}
        return out

    rows = [{"layer_index": layer, "map": name, "kernel_size": kernel, **summary(values)}
            for (layer, name, kernel), values in results.items()]
    baseline_values = {name: {"hit": [], "mass": [], "crop_contains": [], "crop_share": [], "crop_area": []}
                       for name in BASELINES}
    for scene, grid_box, inside in zip(scenes, grid_boxes, insides):
        maps = baseline_heatmaps(inside.shape, grid_box, scene.image.size, [o.box for o in scene.objects])
        for name in BASELINES:
            values = baseline_values[name]
            scores = score(maps[name], inside) + crop_score(maps[name], grid_box, scene.image.size, scene.target.box)
            for key, value in zip(("hit", "mass", "crop_contains", "crop_share", "crop_area"), scores):
                values[key].append(value)
    baselines = [{"baseline": name, **summary(values)} for name, values in baseline_values.items()]
    counts = {t: int((types == t).sum()) for t in QUESTION_TYPES}
    return {"rows": rows, "baselines": baselines, "n": len(scenes), "n_by_type": counts, "blocks": source.blocks,
            "grid": list(grid_shape), "auto_kernel_size": kernels["auto"], "maps": list(source.names),
            "product": source.product, "backend": backend}


def setting_name(row: dict, report: dict) -> str:
    """``L1 union k3``; kernel ``auto`` with the size it stands for: ``L1 union kauto=1``."""
    kernel = f"auto={report['auto_kernel_size']}" if row["kernel_size"] == "auto" else str(row["kernel_size"])
    return f"L{row['layer_index']} {row['map']} k{kernel}"


def format_table(report: dict, paper_layer: int) -> str:
    header = (f"{'setting':<30} {'hit':>6} {'color':>6} {'shape':>6} {'where':>6} {'mass':>6} {'control':>8}"
              f" {'crop:in':>8} {'share':>6} {'area':>6}")
    lines = [f"pointing game, {report['n']} held-out scenes (by type: " +
             ", ".join(f"{t} {n}" for t, n in report["n_by_type"].items()) + ")", header, "-" * len(header)]
    for row in report["rows"]:
        mark = "  <- product mask at the marked layer" if (row["map"], row["kernel_size"], row["layer_index"]) == (report["product"], 3, paper_layer) else ""
        by_type = " ".join(f"{row['hit_by_type'][t]:6.3f}" for t in QUESTION_TYPES)
        lines.append(f"{setting_name(row, report):<30} "
                     f"{row['hit']:6.3f} {by_type} {row['mass']:6.3f} {row['control_hit']:8.3f}"
                     f" {row['crop_contains']:8.3f} {row['crop_share']:6.3f} {row['crop_area']:6.3f}{mark}")
    lines.append("-" * len(header))
    for row in report["baselines"]:
        by_type = " ".join(f"{row['hit_by_type'][t]:6.3f}" for t in QUESTION_TYPES)
        lines.append(f"{'baseline: ' + row['baseline']:<30} {row['hit']:6.3f} {by_type} {row['mass']:6.3f} {'':>8}"
                     f" {row['crop_contains']:8.3f} {row['crop_share']:6.3f} {row['crop_area']:6.3f}")
    best = max(report["rows"], key=lambda r: r["hit"])
    random_object = next(b for b in report["baselines"] if b["baseline"] == "random object")
    lines.append(f"best: {setting_name(best, report)} hit {best['hit']:.3f} = "
                 f"{best['hit'] / random_object['hit']:.2f}x random object ({random_object['hit']:.3f}); "
                 f"control {best['control_hit']:.3f}")
    # The paper's pipeline (clip: union with the inverted token map; llava: the attention map), kernel 3, at the
    # bundled layer and at the second-to-last block (the paper's 22 of 24 blocks).
    product = report["product"]
    for layer in dict.fromkeys((paper_layer, report["blocks"] - 2)):
        paper = next((r for r in report["rows"] if (r["map"], r["kernel_size"], r["layer_index"]) == (product, 3, layer)), None)
        if paper is not None:
            lines.append(f"paper-default pipeline ({product} k3) at L{layer}: hit {paper['hit']:.3f} = "
                         f"{paper['hit'] / random_object['hit']:.2f}x random object; control {paper['control_hit']:.3f}")
    lines.append(f"kauto: hf_api_prompt.masks.auto_kernel_size of the {report['grid'][0]}x{report['grid'][1]} grid = "
                 f"{report['auto_kernel_size']} (the paper's 3 on 24x24, scaled to this grid)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("clip", "llava"), default="clip",
                        help="clip: attention, token and union maps; llava (any generative family): plain and relative attention")
    parser.add_argument("--model", default=None,
                        help="model for ImagePrompter (default for clip: the bundled demo model; llava needs a checkpoint folder or Hub id)")
    parser.add_argument("--max-new-tokens", type=int, default=5, help="llava: answer length (default 5)")
    parser.add_argument("--layers", type=int, nargs="*", default=None, help="layer_index values (default: all blocks)")
    parser.add_argument("--paper-layer", type=int, default=None,
                        help="layer_index whose k3 product-mask row is marked (default: the bundled model's for clip, the deepest for llava)")
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    parser.add_argument("--size", type=int, default=112, help="square scene side in pixels")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write every number to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)  # open_clip logs INFO on the root logger
    logger.setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.first_seed + args.scenes > 1_000_000:
        parser.error("seeds from 1,000,000 up are training scenes (scripts/train_demo_clip.py)")
    if args.model is None:
        if args.backend != "clip":
            parser.error("--backend llava needs --model (a checkpoint folder or Hub id)")
        args.model = DEMO_MODEL
    layers = args.layers
    if layers is None and args.backend == "clip":
        from hf_api_prompt.backends.clip import open_clip_config

        layers = list(range(open_clip_config(args.model)["model_cfg"]["vision_cfg"]["layers"]))
    elif layers is None:
        from hf_api_prompt.backends.llava import model_family

        layers = list(range(model_family(args.model).num_layers))
    paper_layer = args.paper_layer
    if paper_layer is None:
        paper_layer = DEMO_MODEL_LAYER if args.model == DEMO_MODEL else max(layers)
    start = time.perf_counter()
    report = run(args.model, layers, range(args.first_seed, args.first_seed + args.scenes), (args.size, args.size),
                 backend=args.backend, max_new_tokens=args.max_new_tokens)
    report.update(model=args.model, first_seed=args.first_seed, size=args.size, enhance_coe=ENHANCE_COE,
                  seconds=round(time.perf_counter() - start, 1))
    print(format_table(report, paper_layer))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
