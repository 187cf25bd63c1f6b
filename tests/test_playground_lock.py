"""Two visitors of the playground at once: predictions run one at a time (issue 10, section 4).

A backend call is not re-entrant (llava's attention capture is in use until it
returns), so the shared predictor must not run two at once.
"""

import threading
import time

import numpy as np
import pytest
from PIL import Image

from hf_api_prompt import ImagePrompter
from hf_api_prompt.bundled import DEMO_MODEL, DEMO_MODEL_LAYER
from hf_api_prompt.playground import PlaygroundPredictor, demo_examples, predict



class NotReentrant:
    """Wraps a backend; a second call while one is running fails, as llava's capture does."""

    def __init__(self, backend):
        self.backend = backend
        self.inside = threading.Lock()

    def __call__(self, images, questions):
        if not self.inside.acquire(blocking=False):
            raise RuntimeError("backend re-entered while a call was running")
        try:
            time.sleep(0.3)  # long enough for the other request to arrive meanwhile
            return self.backend(images, questions)
        finally:
            self.inside.release()


def test_two_requests_at_once_both_succeed(monkeypatch, tmp_path):
    real_backend = ImagePrompter.backend
    guards = {}

    def guarded(self, rank=None):
        backend = real_backend(self, rank)
        return guards.setdefault(id(backend), NotReentrant(backend))

    monkeypatch.setattr(ImagePrompter, "backend", guarded)
    predictor = PlaygroundPredictor()
    (path_a, question_a), (path_b, question_b) = demo_examples()[:2]
    requests = [(Image.open(path_a).convert("RGB"), question_a), (Image.open(path_b).convert("RGB"), question_b)]
    start = threading.Barrier(len(requests))
    results, errors = [None, None], []

    def visit(slot, image, question):
        start.wait()
        try:
            results[slot] = predict(predictor, tmp_path, image, question, "clip", DEMO_MODEL, "", DEMO_MODEL_LAYER,
                                    5.0, 3, "LANCZOS", 0, "paper")
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=visit, args=(slot, *request)) for slot, request in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    # Each visitor got the mask of their own image and question.
    for (image, question), result in zip(requests, results):
        expected = ImagePrompter("clip", model=DEMO_MODEL, layer_index=DEMO_MODEL_LAYER)({"image": [image], "question": [question]})
        assert np.array_equal(np.asarray(result["masked_image"]), np.asarray(expected["masked_image"][0]))
