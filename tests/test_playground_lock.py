"""Two visitors of the playground at once: predictions run one at a time (issue 10, section 4).

A backend call is not re-entrant (llava's attention capture is in use until it
returns), so the shared predictor must not run two at once.
"""

import threading
import time

import numpy as np
from PIL import Image

from hf_api_prompt import ImagePrompter
from hf_api_prompt.bundled import DEMO_MODEL, DEMO_MODEL_LAYER
from hf_api_prompt.playground import PlaygroundPredictor, demo_examples, predict

from compare import stored_image


class NotReentrant:
    """Wraps the backends; a call while another is running fails, as llava's capture does."""

    def __init__(self):
        self.inside = threading.Lock()  # one for all backends: any overlap is caught

    def wrap(self, backend):
        guard = self

        class Guarded:
            def maps(self, images, questions, layers):
                if not guard.inside.acquire(blocking=False):
                    raise RuntimeError("backend re-entered while a call was running")
                try:
                    time.sleep(0.3)  # long enough for the other request to arrive meanwhile
                    return backend.maps(images, questions, layers)
                finally:
                    guard.inside.release()

        return Guarded()


def test_two_requests_at_once_both_succeed(monkeypatch, tmp_path):
    real_backend = ImagePrompter.backend
    guard = NotReentrant()

    def guarded(self, rank=None):
        return guard.wrap(real_backend(self, rank))

    monkeypatch.setattr(ImagePrompter, "backend", guarded)
    predictor = PlaygroundPredictor()
    (path_a, question_a), (path_b, question_b) = demo_examples()[:2]
    requests = [(Image.open(path_a).convert("RGB"), question_a), (Image.open(path_b).convert("RGB"), question_b)]
    widgets = ["clip", DEMO_MODEL, "", DEMO_MODEL_LAYER, 5.0, 3, "LANCZOS", 0, "paper"]
    predict(predictor, tmp_path, *requests[0], *widgets)  # the model is loaded: both visitors share it
    start = threading.Barrier(len(requests))
    results, errors = [None, None], []

    def visit(slot, image, question):
        start.wait()
        try:
            results[slot] = predict(predictor, tmp_path, image, question, *widgets)
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
        assert np.array_equal(np.asarray(result["masked_image"]), np.asarray(stored_image(expected["masked_image"][0])))
