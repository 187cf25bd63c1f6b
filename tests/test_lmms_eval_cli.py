"""The documented evaluation path, run for real: publish a variant, export its task, run lmms-eval's CLI on it.

Offline: a tiny random LLaVA (``conftest.make_local_llava``), the bundled demo CLIP
for the masks, a local variant folder, no Hub and no judge. lmms-eval exits with
status 0 even when it evaluated nothing (a task that did not load, a model that did
not start), so the test reads the results and samples files it writes instead of
trusting the exit code. Tasks scored by a GPT judge (MM-Vet, LLaVA-Bench) are
exported with a warning naming the key they need.
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_api_prompt import ImagePrompter
from hf_api_prompt.bundled import DEMO_MODEL, DEMO_MODEL_LAYER
from hf_api_prompt.publishing import get_benchmark, publish_variant

from conftest import make_local_llava
from publish_fixtures import pixels, save_mmvet_like

pytest.importorskip("lmms_eval", reason="lmms-eval is the 'eval' extra")

from hf_api_prompt.publishing.lmms_export import export_variants  # noqa: E402  (after the skip: it reads lmms-eval's tasks)

#: MME's suffix, which its task replaces by its own post-prompt (lmms-eval 0.7.3, tasks/mme/mme.yaml and utils.py).
MME_SUFFIX = " Please answer yes or no."
MME_POST_PROMPT = "\nAnswer the question using a single word or phrase."


def save_mme_like(directory: Path, num_images: int = 3) -> str:
    """An MME-shaped split: two yes/no questions per image (MME scores per image pair), ``save_to_disk``-ed."""
    from datasets import Dataset, Features, Image as ImageFeature, Value

    rng = np.random.RandomState(1)
    rows = {"question_id": [], "image": [], "question": [], "answer": [], "category": []}
    for i in range(num_images):
        image = Image.fromarray(rng.randint(0, 256, (40 + 8 * i, 56 - 6 * i, 3), dtype=np.uint8), "RGB")
        for colour, answer in (("red", "Yes"), ("blue", "No")):
            rows["question_id"].append(f"color/{i:04d}.png")
            rows["image"].append(image)
            rows["question"].append(f"Is there a {colour} square in picture {i}?{MME_SUFFIX}")
            rows["answer"].append(answer)
            rows["category"].append("color")
    features = Features({"question_id": Value("string"), "image": ImageFeature(), "question": Value("string"),
                         "answer": Value("string"), "category": Value("string")})
    Dataset.from_dict(rows, features=features).save_to_disk(str(directory))
    return str(directory)


def _offline_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "API_TYPE")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TOKENIZERS_PARALLELISM="false")
    return env


@pytest.mark.slow  # 1-2.5 min on a shared 2-core CPU, most of it lmms-eval starting (imports, task index)
def test_lmms_eval_cli_evaluates_the_masked_rows_of_an_exported_variant(tmp_path):
    from datasets import load_dataset, load_from_disk

    source_dir = save_mme_like(tmp_path / "mme_like")
    source = load_from_disk(source_dir)
    prompter = ImagePrompter("clip", model=DEMO_MODEL, layer_index=DEMO_MODEL_LAYER)
    result = publish_variant(prompter, get_benchmark("mme").replace(dataset_id=source_dir), output_dir=tmp_path / "variant")
    [(task, _)] = export_variants(tmp_path / "tasks", dataset_dir=tmp_path / "variant")
    llava = make_local_llava(tmp_path / "llava")

    limit = 4
    lmms_eval = Path(sys.executable).with_name("lmms-eval")  # the console script the README runs
    command = [
        str(lmms_eval), "--model", "llava_hf", "--model_args", f"pretrained={llava},device=cpu,device_map=cpu",
        "--tasks", task, "--include_path", str(tmp_path / "tasks"), "--output_path", str(tmp_path / "results"),
        "--limit", str(limit), "--log_samples",
    ]
    done = subprocess.run(command, env=_offline_env(tmp_path), capture_output=True, text=True, timeout=900)
    log = (done.stdout + done.stderr)[-6000:]

    results_files = sorted((tmp_path / "results").glob("*/*_results.json"))
    assert len(results_files) == 1, f"lmms-eval (exit {done.returncode}) wrote no results file:\n{log}"
    results = json.loads(results_files[0].read_text())
    assert list(results["results"]) == [task], log
    # MME's per-category score is accuracy + accuracy+ over image pairs, each in [0, 100]; all rows are "color".
    score = results["results"][task]["mme_perception_score,none"]
    assert 0 <= score <= 200
    assert results["n-samples"][task] == {"original": len(source), "effective": limit}

    # lmms-eval read the variant's config of the variant folder ...
    config = results["configs"][task]
    assert (config["dataset_path"], config["dataset_name"], config["test_split"]) == (
        str((tmp_path / "variant").resolve()), result["config_name"], "test")
    # ... whose images are the masked ones (computed here from the source with the same prompter), not the originals.
    expected = prompter.map(source, batch_size=8)
    rows = load_dataset(config["dataset_path"], config["dataset_name"], split=config["test_split"])
    for i in range(limit):
        assert np.array_equal(pixels(rows[i]["image"]), pixels(expected[i]["masked_image"])), i
        assert not np.array_equal(pixels(rows[i]["image"]), pixels(source[i]["image"])), i

    # The logged samples are the first `limit` rows, in order: MME's prompt built from each question, its answer.
    [samples_file] = (tmp_path / "results").glob(f"*/*_samples_{task}.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert [s["doc_id"] for s in samples] == list(range(limit))
    assert [s["input"] for s in samples] == [q[: -len(MME_SUFFIX)] + MME_POST_PROMPT for q in source["question"][:limit]]
    assert [s["target"] for s in samples] == source["answer"][:limit]
    assert all(isinstance(s["filtered_resps"], str) for s in samples)


# ------------------------------------------------------------------ tasks scored by a judge


@pytest.fixture(scope="module")
def mmvet_variant(tmp_path_factory, tiny_clip):
    root = tmp_path_factory.mktemp("mmvet_variant")
    source_dir = save_mmvet_like(root / "source", num_rows=2)
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    publish_variant(prompter, get_benchmark("mmvet").replace(dataset_id=source_dir), output_dir=root / "variant")
    return root / "variant"


def test_export_of_a_judge_task_warns_without_openai_api_key(mmvet_variant, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("API_TYPE", raising=False)
    with caplog.at_level(logging.WARNING, logger="hf_api_prompt.publishing.lmms_export"):
        [(task, path)] = export_variants(tmp_path / "tasks", dataset_dir=mmvet_variant)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = warning.getMessage()
    assert message.startswith("OPENAI_API_KEY is not set") and "'mmvet'" in message and "judge" in message
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any("OPENAI_API_KEY" in line and "judge" in line for line in header), header

    caplog.clear()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # with the key: the note stays in the YAML, no warning
    with caplog.at_level(logging.WARNING, logger="hf_api_prompt.publishing.lmms_export"):
        export_variants(tmp_path / "tasks_with_key", dataset_dir=mmvet_variant)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_export_of_a_local_metric_task_does_not_warn(tmp_path, tiny_clip, monkeypatch, caplog):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    source_dir = save_mme_like(tmp_path / "mme_like", num_images=1)
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    publish_variant(prompter, get_benchmark("mme").replace(dataset_id=source_dir), output_dir=tmp_path / "variant")
    with caplog.at_level(logging.WARNING, logger="hf_api_prompt.publishing.lmms_export"):
        [(_, path)] = export_variants(tmp_path / "tasks", dataset_dir=tmp_path / "variant")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "OPENAI_API_KEY" not in path.read_text()
    assert "OPENAI_API_KEY" not in (tmp_path / "variant" / "README.md").read_text()


def test_card_of_a_judge_task_names_the_key(mmvet_variant):
    card = (mmvet_variant / "README.md").read_text()
    evaluate = card[card.index("## Evaluate with lmms-eval"):card.index("## Example")]
    assert "export OPENAI_API_KEY=" in evaluate and "GPT judge" in evaluate
    assert "device_map=auto" in evaluate and "_results.json" in evaluate and "n-samples" in evaluate
