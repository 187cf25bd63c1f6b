"""Procedural scenes (hf_api_prompt.scenes): deterministic, well-formed, and honest about their boxes."""

import random

import numpy as np
import pytest

from hf_api_prompt.scenes import (
    COLORS,
    QUESTION_TYPES,
    SHAPES,
    SceneObject,
    caption,
    hard_negative_caption,
    make_scene,
    mention_text,
    question_about,
    question_mention,
    scene_rows,
)

SEEDS = range(40)
SIZES = [(112, 112), (160, 120), (120, 200)]


def test_same_seed_same_scene_different_seed_different_scene():
    a, b, c = make_scene(5, (112, 112)), make_scene(5, (112, 112)), make_scene(6, (112, 112))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert (a.objects, a.target, a.question, a.answer, a.question_type) == (b.objects, b.target, b.question, b.answer, b.question_type)
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


@pytest.mark.parametrize("size", SIZES)
def test_objects_fit_do_not_overlap_and_are_distinct(size):
    for seed in SEEDS:
        scene = make_scene(seed, size, min_objects=2)
        assert scene.image.size == size and 2 <= len(scene.objects) <= 4
        assert len({o.color for o in scene.objects}) == len({o.shape for o in scene.objects}) == len(scene.objects)
        for o in scene.objects:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1:]:
                assert a.box[2] <= b.box[0] or b.box[2] <= a.box[0] or a.box[3] <= b.box[1] or b.box[3] <= a.box[1]


@pytest.mark.parametrize("size", SIZES)
def test_box_is_the_bounding_box_of_the_drawn_pixels_of_each_colour(size):
    for seed in SEEDS:
        scene = make_scene(seed, size)
        pixels = np.asarray(scene.image)
        for o in scene.objects:
            ys, xs = np.nonzero((pixels == COLORS[o.color]).all(-1))
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == o.box, (seed, o)
            x0, y0, x1, y1 = o.box
            assert len(xs) >= 0.25 * (x1 - x0) * (y1 - y0)  # a real shape, not a few stray pixels


def test_question_names_the_target_and_answer_matches():
    seen_types = set()
    for seed in SEEDS:
        scene = make_scene(seed, (112, 112))
        seen_types.add(scene.question_type)
        color, shape = question_mention(scene.target, scene.question_type)
        assert (color is None or color in scene.question) and (shape is None or shape in scene.question)
        # the question names the target only: no other object fits what it names
        fits = [o for o in scene.objects if (color is None or o.color == color) and (shape is None or o.shape == shape)]
        assert fits == [scene.target]
        if scene.question_type == "color":
            assert scene.answer == scene.target.color and scene.target.color not in scene.question
        elif scene.question_type == "shape":
            assert scene.answer == scene.target.shape and scene.target.shape not in scene.question
        else:
            assert scene.answer.split()[0] in ("top", "middle", "bottom")
    assert seen_types == set(QUESTION_TYPES)


def test_where_answer_follows_the_box():
    obj = SceneObject("square", "red", (0, 0, 10, 10))
    assert question_about(obj, "where", (120, 120)) == ("Where is the red square?", "top left")
    obj = SceneObject("square", "red", (100, 50, 120, 70))
    assert question_about(obj, "where", (120, 120))[1] == "middle right"


def test_scene_rows_is_a_benchmark_layout_for_datasets():
    from datasets import Dataset

    rows = scene_rows([1, 2, 3], (112, 112))
    ds = Dataset.from_dict(rows)
    assert {"image", "question", "answer", "bbox"} <= set(ds.column_names)
    assert ds[0]["bbox"] == list(make_scene(1, (112, 112)).target.box)
    assert ds.map(lambda row: {"n": len(row["question"])})[2]["n"] == len(make_scene(3, (112, 112)).question)


def test_min_objects_is_honoured_and_validated():
    assert all(len(make_scene(seed, (112, 112), min_objects=4).objects) == 4 for seed in range(10))
    with pytest.raises(ValueError):
        make_scene(0, (112, 112), min_objects=5)


def test_captions_list_all_objects_and_hold():
    for seed in SEEDS:
        scene = make_scene(seed, (112, 112))
        positive = caption(scene.objects, random.Random(seed))
        assert positive.holds_for(scene.objects)
        assert sorted(positive.mentions) == sorted((o.color, o.shape) for o in scene.objects)
        assert all(f"{o.color} {o.shape}" in positive.text for o in scene.objects)


def test_hard_negatives_are_false_and_one_binding_away():
    swaps = 0
    for seed in range(200):
        scene = make_scene(seed, (112, 112))
        negative = hard_negative_caption(scene.objects, random.Random(seed))
        assert not negative.holds_for(scene.objects)
        assert len(negative.mentions) == len(scene.objects)
        colors, shapes = {o.color for o in scene.objects}, {o.shape for o in scene.objects}
        if {c for c, _ in negative.mentions} == colors and {s for _, s in negative.mentions} == shapes:
            swaps += 1  # same words, swapped binding
    assert swaps > 20


def test_mention_text_names_exactly_the_mention():
    rng = random.Random(0)
    for color in (None, *COLORS):
        for shape in (None, *SHAPES):
            if color is None and shape is None:
                continue
            text = mention_text((color, shape), rng)
            assert (color is None or color in text) and (shape is None or shape in text)
            assert not any(c in text for c in COLORS if c != color)
            assert not any(s in text for s in SHAPES if s != shape)
