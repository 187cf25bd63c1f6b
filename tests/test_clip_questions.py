"""Backend clip: a question longer than the text tower's context is cut, and the log says so (issue 10, section 4)."""

import logging

import pytest
from datasets import Dataset
from PIL import Image

from hf_api_prompt import ImagePrompter
from hf_api_prompt.bundled import DEMO_MODEL, DEMO_MODEL_LAYER

# The bundled model's text tower reads 32 tokens: start, 30 word pieces, end.
CONTEXT = 32


def questions_batch(questions):
    return Dataset.from_dict({"image": [Image.new("RGB", (40, 30), "white")] * len(questions), "question": questions})


@pytest.fixture(scope="module")
def prompter():
    return ImagePrompter("clip", model=DEMO_MODEL, layer_index=DEMO_MODEL_LAYER)


def cut_warnings(caplog):
    return [r for r in caplog.records if r.name == "hf_api_prompt.backends.clip" and "were cut" in r.getMessage()]


def test_the_premise_one_word_is_one_token(prompter):
    # "a" is a single piece of CLIP's vocabulary, so "a " * n is n tokens plus start and end.
    tokenizer = prompter.backend().tokenizer
    assert tokenizer.context_length == CONTEXT
    assert len(tokenizer.encode("a " * 30)) == 30


def test_one_warning_per_batch_with_the_number_cut(prompter, caplog):
    fits, cut = "a " * (CONTEXT - 2), "a " * (CONTEXT - 1)
    questions = [cut, "Where is the red circle?", fits, cut + "b", "What colour?"]
    with caplog.at_level(logging.WARNING, logger="hf_api_prompt"):
        prompter.map(questions_batch(questions), batch_size=len(questions))
    records = cut_warnings(caplog)
    assert len(records) == 1
    message = records[0].getMessage()
    assert message.startswith(f"2 of 5 questions in this batch are longer than the text tower's context of {CONTEXT} tokens")


def test_a_warning_for_each_batch_that_has_cut_rows(prompter, caplog):
    long = "b " * 40
    questions = [long, long, "short", "short", long]  # batches of 2: [long, long], [short, short], [long]
    with caplog.at_level(logging.WARNING, logger="hf_api_prompt"):
        prompter.map(questions_batch(questions), batch_size=2)
    assert [r.getMessage().split(" questions")[0] for r in cut_warnings(caplog)] == ["2 of 2", "1 of 1"]


def test_questions_that_fit_say_nothing(prompter, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_api_prompt"):
        prompter.map(questions_batch(["a " * (CONTEXT - 2), "Is it blue?"]))
    assert cut_warnings(caplog) == []
