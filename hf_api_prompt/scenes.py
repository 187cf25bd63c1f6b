"""Procedural scenes: shapes on a noisy background, with questions about one object.

Deterministic from a seed. Each scene knows where its objects are, so a mask can
be scored (did it land on the object the question asks about?) and the bundled
demo data set needs no downloads.

>>> scene = make_scene(seed=3, size=(160, 120))
>>> scene.image.size, scene.question.endswith("?"), len(scene.target.box)
((160, 120), True, 4)
"""

from __future__ import annotations

import dataclasses
import random
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")
QUESTION_TYPES = ("color", "shape", "where")


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    box: Tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


@dataclasses.dataclass(frozen=True)
class Scene:
    image: Image.Image
    objects: Tuple[SceneObject, ...]
    target: SceneObject
    question: str
    answer: str
    question_type: str


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject):
    x0, y0, x1, y1 = obj.box
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
    else:  # cross
        w, h = x1 - x0, y1 - y0
        draw.rectangle((x0 + w // 3, y0, x1 - 1 - w // 3, y1 - 1), fill=fill)
        draw.rectangle((x0, y0 + h // 3, x1 - 1, y1 - 1 - h // 3), fill=fill)


def _where(box, size) -> str:
    cx, cy = (box[0] + box[2]) / 2 / size[0], (box[1] + box[3]) / 2 / size[1]
    vertical = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    horizontal = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "center"
    return f"{vertical} {horizontal}"


def make_scene(seed: int, size: Tuple[int, int] = (128, 128), max_objects: int = 4) -> Scene:
    """One scene of 1..``max_objects`` non-overlapping shapes in distinct colors and shapes."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    width, height = size
    base = np.array([rng.randint(90, 160) for _ in range(3)], dtype=np.float32)
    pixels = base + noise.normal(0, 12, (height, width, 3)).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    colors = rng.sample(sorted(COLORS), k=min(max_objects, len(COLORS)))
    shapes = rng.sample(SHAPES, k=min(max_objects, len(SHAPES)))
    count = rng.randint(1, min(max_objects, len(colors), len(shapes)))
    objects: List[SceneObject] = []
    short = min(width, height)
    for index in range(count):
        for _ in range(100):  # rejection sampling of a free spot
            side = rng.randint(max(6, short // 6), max(7, short // 3))
            x0, y0 = rng.randint(0, width - side), rng.randint(0, height - side)
            box = (x0, y0, x0 + side, y0 + side)
            if all(box[2] <= o.box[0] or o.box[2] <= box[0] or box[3] <= o.box[1] or o.box[3] <= box[1] for o in objects):
                objects.append(SceneObject(shapes[index], colors[index], box))
                break
    for obj in objects:
        _draw(draw, obj)
    target = objects[rng.randrange(len(objects))]
    question_type = rng.choice(QUESTION_TYPES)
    if question_type == "color":
        question, answer = f"What color is the {target.shape}?", target.color
    elif question_type == "shape":
        question, answer = f"What shape is the {target.color} object?", target.shape
    else:
        question, answer = f"Where is the {target.color} {target.shape}?", _where(target.box, size)
    return Scene(image, tuple(objects), target, question, answer, question_type)


def scene_rows(seeds, size=(128, 128)) -> dict:
    """Columns of a benchmark-shaped data set (``image``, ``question``, ``answer``, ``bbox``...)."""
    scenes = [make_scene(seed, size) for seed in seeds]
    return {
        "question_id": [f"scene-{seed}" for seed in seeds],
        "image": [s.image for s in scenes],
        "question": [s.question for s in scenes],
        "answer": [s.answer for s in scenes],
        "question_type": [s.question_type for s in scenes],
        "bbox": [list(s.target.box) for s in scenes],
    }
