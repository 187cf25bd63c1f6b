"""Procedural scenes: shapes on a noisy background, with questions about one object.

Deterministic from a seed. Each scene knows where its objects are, so a mask can
be scored (did it land on the object the question asks about?), a small CLIP can
be trained on it (captions, and hard-negative captions that swap colours and
shapes), and the bundled demo data set needs no downloads.

>>> scene = make_scene(seed=3, size=(160, 120))
>>> scene.image.size, scene.question.endswith("?"), len(scene.target.box)
((160, 120), True, 4)
>>> [o.describe() for o in make_scene(seed=7, size=(112, 112), min_objects=2).objects]
['yellow circle', 'blue square']
"""

from __future__ import annotations

import dataclasses
import random
from typing import List, Optional, Sequence, Tuple

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
#: What each question type names about its target: "color" questions name the
#: shape ("What color is the triangle?"), "shape" questions name the colour,
#: "where" questions name both.
QUESTION_TYPES = ("color", "shape", "where")


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    box: Tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

    def describe(self) -> str:
        return f"{self.color} {self.shape}"


@dataclasses.dataclass(frozen=True)
class Scene:
    image: Image.Image
    objects: Tuple[SceneObject, ...]
    target: SceneObject
    question: str
    answer: str
    question_type: str


@dataclasses.dataclass(frozen=True)
class Caption:
    """A text about a scene and what it claims: every mention must match an object.

    Attributes:
        text: the text the model reads.
        mentions: ``(color, shape)`` pairs, ``None`` where the text leaves that
            attribute open ("the triangle" is ``(None, "triangle")``).
    """

    text: str
    mentions: Tuple[Tuple[Optional[str], Optional[str]], ...]

    def holds_for(self, objects: Sequence[SceneObject]) -> bool:
        """True when each mention matches some object of the scene.

        >>> red_triangle = SceneObject("triangle", "red", (0, 0, 9, 9))
        >>> Caption("a red object", (("red", None),)).holds_for([red_triangle])
        True
        >>> Caption("a blue triangle", (("blue", "triangle"),)).holds_for([red_triangle])
        False
        """
        return all(
            any((color is None or o.color == color) and (shape is None or o.shape == shape) for o in objects)
            for color, shape in self.mentions
        )


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


def question_mention(target: SceneObject, question_type: str) -> Tuple[Optional[str], Optional[str]]:
    """What a question of ``question_type`` about ``target`` names: ``(color, shape)``, ``None`` if unnamed."""
    if question_type not in QUESTION_TYPES:
        raise ValueError(f"unknown question type {question_type!r}; known: {QUESTION_TYPES}")
    return {
        "color": (None, target.shape),
        "shape": (target.color, None),
        "where": (target.color, target.shape),
    }[question_type]


def question_text(mention: Tuple[Optional[str], Optional[str]]) -> str:
    """The question template that names exactly ``mention`` (the benchmark's and the training texts' one home).

    >>> question_text((None, "triangle")), question_text(("red", None)), question_text(("red", "cross"))
    ('What color is the triangle?', 'What shape is the red object?', 'Where is the red cross?')
    """
    color, shape = mention
    if color is None and shape is None:
        raise ValueError("a mention names a colour, a shape or both")
    if color is None:
        return f"What color is the {shape}?"
    return f"What shape is the {color} object?" if shape is None else f"Where is the {color} {shape}?"


def question_about(target: SceneObject, question_type: str, size: Tuple[int, int]) -> Tuple[str, str]:
    """``(question, answer)`` of type ``question_type`` about ``target`` in an image of ``size``.

    >>> question_about(SceneObject("cross", "blue", (0, 0, 20, 20)), "shape", (112, 112))
    ('What shape is the blue object?', 'cross')
    """
    question = question_text(question_mention(target, question_type))
    answer = _where(target.box, size) if question_type == "where" else {"color": target.color, "shape": target.shape}[question_type]
    return question, answer


def make_scene(
    seed: int,
    size: Tuple[int, int] = (128, 128),
    max_objects: int = 4,
    min_objects: int = 1,
) -> Scene:
    """One scene of ``min_objects..max_objects`` non-overlapping shapes in distinct colors and shapes.

    Args:
        seed: everything (background, layout, target, question) follows from it.
        size: ``(width, height)`` in pixels. Object sides are 1/6 to 1/3 of the short side.
        max_objects, min_objects: bounds of the uniformly drawn object count (at most 4:
            shapes are distinct).
    """
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    width, height = size
    base = np.array([rng.randint(90, 160) for _ in range(3)], dtype=np.float32)
    pixels = base + noise.normal(0, 12, (height, width, 3)).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    colors = rng.sample(sorted(COLORS), k=min(max_objects, len(COLORS)))
    shapes = rng.sample(SHAPES, k=min(max_objects, len(SHAPES)))
    count = rng.randint(min(min_objects, len(colors), len(shapes)), min(max_objects, len(colors), len(shapes)))
    objects: List[SceneObject] = []
    short = min(width, height)
    for index in range(count):
        # Rejection sampling of a free spot; the first min_objects must be placed.
        for attempt in range(100 if index >= min_objects else 10_000):
            side = rng.randint(max(6, short // 6), max(7, short // 3))
            x0, y0 = rng.randint(0, width - side), rng.randint(0, height - side)
            box = (x0, y0, x0 + side, y0 + side)
            if all(box[2] <= o.box[0] or o.box[2] <= box[0] or box[3] <= o.box[1] or o.box[3] <= box[1] for o in objects):
                objects.append(SceneObject(shapes[index], colors[index], box))
                break
    if len(objects) < min_objects:
        raise RuntimeError(f"seed {seed}: could not place {min_objects} objects in {size}")
    for obj in objects:
        _draw(draw, obj)
    target = objects[rng.randrange(len(objects))]
    question_type = rng.choice(QUESTION_TYPES)
    question, answer = question_about(target, question_type, size)
    return Scene(image, tuple(objects), target, question, answer, question_type)


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _listing(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(objects: Sequence[SceneObject], rng: random.Random) -> Caption:
    """All objects, in shuffled order: ``"a red triangle and a blue circle"``.

    >>> objects = [SceneObject("triangle", "red", (0, 0, 9, 9)), SceneObject("circle", "blue", (20, 0, 29, 9))]
    >>> caption(objects, random.Random(0)).text
    'a red triangle and a blue circle'
    """
    order = list(objects)
    rng.shuffle(order)
    return Caption(_listing([_a(o.describe()) for o in order]), tuple((o.color, o.shape) for o in order))


def hard_negative_caption(objects: Sequence[SceneObject], rng: random.Random) -> Caption:
    """A caption false for the scene that differs from a true one in one binding.

    With two or more objects, half of the time the colours of two objects are
    swapped (``"a blue triangle and a red circle"`` for a red triangle and a blue
    circle); otherwise one object's colour or shape is replaced by one the scene
    lacks. The objects are listed in shuffled order.

    >>> objects = [SceneObject("triangle", "red", (0, 0, 9, 9)), SceneObject("circle", "blue", (20, 0, 29, 9))]
    >>> negative = hard_negative_caption(objects, random.Random(1))
    >>> negative.holds_for(objects), negative.text
    (False, 'a red circle and a blue triangle')
    """
    pairs = [(o.color, o.shape) for o in objects]
    if len(pairs) >= 2 and rng.random() < 0.5:
        i, j = rng.sample(range(len(pairs)), 2)
        pairs[i], pairs[j] = (pairs[j][0], pairs[i][1]), (pairs[i][0], pairs[j][1])
    else:
        index = rng.randrange(len(pairs))
        color, shape = pairs[index]
        if rng.random() < 0.5:
            color = rng.choice(sorted(set(COLORS) - {c for c, _ in pairs}))
        else:
            options = sorted(set(SHAPES) - {s for _, s in pairs})
            if options:
                shape = rng.choice(options)
            else:  # all four shapes present: change the colour instead
                color = rng.choice(sorted(set(COLORS) - {c for c, _ in pairs}))
        pairs[index] = (color, shape)
    rng.shuffle(pairs)
    return Caption(_listing([_a(f"{c} {s}") for c, s in pairs]), tuple(pairs))


def mention_text(mention: Tuple[Optional[str], Optional[str]], rng: random.Random) -> str:
    """A question (the benchmark's template) or a phrase naming exactly ``mention``.

    >>> mention_text(("red", None), random.Random(0)), mention_text(("red", None), random.Random(1))
    ('a red object', 'What shape is the red object?')
    """
    color, shape = mention
    if color is None and shape is None:
        raise ValueError("a mention names a colour, a shape or both")
    if rng.random() < 0.5:
        return question_text(mention)
    return _a(f"{color} {shape or 'object'}" if color else shape)


def scene_rows(seeds, size=(128, 128), min_objects: int = 1) -> dict:
    """Columns of a benchmark-shaped data set (``image``, ``question``, ``answer``, ``bbox``...).

    ``bbox`` is the target's ``[x0, y0, x1, y1]`` in pixels (x1, y1 exclusive).
    ``datasets.Dataset.from_dict(scene_rows(range(8)))`` is ready for
    ``ImagePrompter.map`` / ``ds.map``.
    """
    scenes = [make_scene(seed, size, min_objects=min_objects) for seed in seeds]
    return {
        "question_id": [f"scene-{seed}" for seed in seeds],
        "image": [s.image for s in scenes],
        "question": [s.question for s in scenes],
        "answer": [s.answer for s in scenes],
        "question_type": [s.question_type for s in scenes],
        "bbox": [list(s.target.box) for s in scenes],
    }
