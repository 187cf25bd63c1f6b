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


#: lmms-eval's CLI, recording the images each task hands the model: the model calls the ``doc_to_visual`` of the
#: task's requests (``ConfigurableTask.doc_to_visual``, lmms-eval 0.7.3 ``api/task.py``), one call per doc, so this
#: saves what it returns, per task, under ``$API_FED_VISUALS`` (read back by :func:`fed_visuals`).
FED_VISUALS_DRIVER = """
import hashlib, os, sys
from pathlib import Path

import numpy as np
from lmms_eval.api.task import ConfigurableTask
from lmms_eval.cli.dispatch import main

task_doc_to_visual = ConfigurableTask.doc_to_visual


def recording_doc_to_visual(self, doc):
    visuals = task_doc_to_visual(self, doc)
    folder = Path(os.environ["API_FED_VISUALS"], self.config.task)
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(doc["question"].encode()).hexdigest()
    np.savez(folder / (name + ".npz"), question=doc["question"], *[np.asarray(visual) for visual in visuals])
    return visuals


ConfigurableTask.doc_to_visual = recording_doc_to_visual
sys.exit(main())
"""


def run_recording_lmms_eval(tmp_path: Path, llava: str, tasks, limit: int):
    """lmms-eval's CLI on ``tasks`` (exported under ``tmp_path/tasks``) with :data:`FED_VISUALS_DRIVER`, offline.

    The visuals each doc gives the model are recorded under ``tmp_path/fed`` (:func:`fed_visuals`).
    Returns the results file's contents and the end of the CLI's output.
    """
    driver = tmp_path / "fed_visuals.py"
    driver.write_text(FED_VISUALS_DRIVER)
    command = [
        sys.executable, str(driver), "--model", "llava_hf", "--model_args", f"pretrained={llava},device=cpu,device_map=cpu",
        "--tasks", ",".join(tasks), "--include_path", str(tmp_path / "tasks"), "--output_path", str(tmp_path / "results"),
        "--limit", str(limit),
    ]
    env = {**_offline_env(tmp_path), "API_FED_VISUALS": str(tmp_path / "fed")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    log = (done.stdout + done.stderr)[-6000:]
    results_files = sorted((tmp_path / "results").glob("*/*_results.json"))
    assert len(results_files) == 1, f"lmms-eval (exit {done.returncode}) wrote no results file:\n{log}"
    return json.loads(results_files[0].read_text()), log


def fed_visuals(folder: Path, task: str) -> dict:
    """What :data:`FED_VISUALS_DRIVER` saved for ``task``: ``{question: [image array, ...]}``."""
    fed = {}
    for path in sorted((folder / task).glob("*.npz")):
        with np.load(path) as saved:
            fed[str(saved["question"])] = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
    return fed


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


@pytest.mark.slow  # 1-2.5 min on a shared 2-core CPU, most of it lmms-eval starting (imports, task index)
def test_lmms_eval_cli_masks_a_maps_dataset_when_it_reads_a_doc_as_the_materialized_variant(tmp_path):
    """One maps dataset, two recipes: lmms-eval feeds the model, doc by doc, the masked images of the two variants."""
    from datasets import load_dataset, load_from_disk

    from hf_api_prompt.publishing import publish_sweep
    from hf_api_prompt.publishing.variants import lmms_eval_task_name

    source_dir = save_mme_like(tmp_path / "mme_like")
    source = load_from_disk(source_dir)
    benchmark = get_benchmark("mme").replace(dataset_id=source_dir)
    recipes = [{"layer_index": 1}, {"layer_index": 2, "enhance_coe": 2.5, "kernel_size": 5, "interpolation": "bicubic",
                                    "grayscale": 60, "geometry": "aligned"}]
    prompters = [ImagePrompter("clip", model=DEMO_MODEL, **recipe) for recipe in recipes]
    publish_sweep(prompters, benchmark, output_dir=tmp_path / "maps", maps_only=True)  # one model pass, both layers
    variants = [publish_variant(prompter, benchmark, output_dir=tmp_path / "variants")["config_name"] for prompter in prompters]
    written = export_variants(tmp_path / "tasks", dataset_dir=tmp_path / "maps", params=recipes)
    tasks = [task for task, _ in written]
    assert tasks == [lmms_eval_task_name("mme", name) for name in variants]  # the maps' results line up with theirs
    llava = make_local_llava(tmp_path / "llava")

    limit = 4
    results, log = run_recording_lmms_eval(tmp_path, llava, tasks, limit)
    assert sorted(results["results"]) == sorted(tasks), log
    for task in tasks:
        config = results["configs"][task]
        assert (config["dataset_path"], config["test_split"]) == (str((tmp_path / "maps").resolve()), "test")
        assert "MaskedDocToVisual('lmms_eval.tasks.mme.utils.mme_doc_to_visual'" in config["doc_to_visual"]

    # Each doc's image, masked from the maps by the task's recipe, is the one the materialized variant holds.
    for task, name in zip(tasks, variants):
        rows = load_dataset(str(tmp_path / "variants"), name, split="test")
        fed = fed_visuals(tmp_path / "fed", task)
        assert sorted(fed) == sorted(source["question"][:limit]), task
        for i in range(limit):
            [visual] = fed[rows[i]["question"]]
            assert np.array_equal(visual, np.asarray(rows[i]["image"].convert("RGB"))), (task, i)
            assert not np.array_equal(visual, np.asarray(source[i]["image"].convert("RGB"))), (task, i)


@pytest.mark.slow  # 1-2.5 min on a shared 2-core CPU, most of it lmms-eval starting (imports, task index)
def test_lmms_eval_cli_shows_the_model_the_original_and_the_crop_of_a_crop_variant(tmp_path):
    """A materialized crop variant: lmms-eval evaluates it, feeding the model two images per doc, original then crop."""
    from datasets import load_dataset, load_from_disk

    source_dir = save_mme_like(tmp_path / "mme_like")
    source = load_from_disk(source_dir)
    prompter = ImagePrompter("clip", model=DEMO_MODEL, layer_index=DEMO_MODEL_LAYER, prompt="crop", crop_mass=0.5,
                             crop_min_size=0.2)
    result = publish_variant(prompter, get_benchmark("mme").replace(dataset_id=source_dir), output_dir=tmp_path / "variant")
    [(task, _)] = export_variants(tmp_path / "tasks", dataset_dir=tmp_path / "variant")
    llava = make_local_llava(tmp_path / "llava")

    limit = 2
    results, log = run_recording_lmms_eval(tmp_path, llava, [task], limit)
    assert list(results["results"]) == [task], log
    assert 0 <= results["results"][task]["mme_perception_score,none"] <= 200
    assert "OriginalAndCropDocToVisual('lmms_eval.tasks.mme.utils.mme_doc_to_visual'" in results["configs"][task]["doc_to_visual"]

    rows = load_dataset(str(tmp_path / "variant"), result["config_name"], split="test")
    fed = fed_visuals(tmp_path / "fed", task)
    assert sorted(fed) == sorted(source["question"][:limit])
    for i in range(limit):
        original, crop = fed[rows[i]["question"]]
        assert np.array_equal(original, np.asarray(source[i]["image"].convert("RGB"))), i
        assert np.array_equal(crop, np.asarray(rows[i]["image"].convert("RGB"))), i
        left, top, right, bottom = rows[i]["api_crop_box"]
        assert np.array_equal(crop, original[top:bottom, left:right]), i
