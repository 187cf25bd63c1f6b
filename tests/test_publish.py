"""Publishing without the Hub: presets, variant names, local layout round trip, cards, lmms-eval export, CLI.

The Hub round trips (push, tags, failures) are in ``test_publish_hub.py``.
"""

import json
import re

import numpy as np
import pytest

from hf_api_prompt import ImagePrompter, PrompterConfig, __version__
from hf_api_prompt.publishing import (
    VariantIndex,
    available_benchmarks,
    custom_benchmark,
    get_benchmark,
    publish_variant,
    variant_name,
    variant_tag,
)
from hf_api_prompt.publishing.card import check_card
from hf_api_prompt.publishing.hub import _merge_by_config, _write_permission
from hf_api_prompt.publishing.retry import RetryPolicy, is_transient
from hf_api_prompt.publishing.layout import read_card, read_index
from hf_api_prompt.publishing.variants import config_hash

from publish_fixtures import (
    MMVET_COLUMNS, assert_published_variant, independent_hash, make_mmvet_like, save_mmvet_like,
)

PAPER = PrompterConfig(backend="clip", model="ViT-L-14-336", pretrained="openai", layer_index=22)


# ------------------------------------------------------------------ variant names


def test_paper_defaults_name_is_the_issue_example_with_the_image_format():
    # The issue's example, as published before the format choice existed (PNG: no format part).
    assert variant_name(PAPER.replace(image_format="png")) == "clip-vit-l-14-336-l22-e5-k3-lanczos-g0"
    # Today's default stores JPEG sources as JPEG q75 (the authors saved theirs so), other sources as PNG, and says so.
    assert variant_name(PAPER) == "clip-vit-l-14-336-l22-e5-k3-lanczos-g0-source75"
    assert variant_tag(variant_name(PAPER)) == f"clip-vit-l-14-336-l22-e5-k3-lanczos-g0-source75-v{__version__}"


@pytest.mark.parametrize(
    "changes, expected",
    [
        (dict(layer_index=20), "clip-vit-l-14-336-l20-e5-k3-lanczos-g0-source75"),
        (dict(enhance_coe=2.5), "clip-vit-l-14-336-l22-e2p5-k3-lanczos-g0-source75"),
        (dict(kernel_size=5), "clip-vit-l-14-336-l22-e5-k5-lanczos-g0-source75"),
        (dict(interpolation="bicubic"), "clip-vit-l-14-336-l22-e5-k3-bicubic-g0-source75"),
        (dict(grayscale=200), "clip-vit-l-14-336-l22-e5-k3-lanczos-g200-source75"),
        (dict(geometry="aligned"), "clip-vit-l-14-336-l22-e5-k3-lanczos-g0-aligned-source75"),
        (dict(model="ViT-B-16", pretrained="openai", layer_index=10), "clip-vit-b-16-openai-l10-e5-k3-lanczos-g0-source75"),
        (dict(model="ViT-B-16", pretrained=None, layer_index=10), "clip-vit-b-16-random-l10-e5-k3-lanczos-g0-source75"),
        (dict(pretrained="laion2b_s32b_b82k"), "clip-vit-l-14-336-laion2b-s32b-b82k-l22-e5-k3-lanczos-g0-source75"),
        # The stored images: {image_format}{jpeg_quality}, after the geometry; PNG (lossless, no quality) adds nothing.
        (dict(image_format="jpeg"), "clip-vit-l-14-336-l22-e5-k3-lanczos-g0-jpeg75"),
        (dict(jpeg_quality=90), "clip-vit-l-14-336-l22-e5-k3-lanczos-g0-source90"),
        (dict(image_format="jpeg", jpeg_quality=100), "clip-vit-l-14-336-l22-e5-k3-lanczos-g0-jpeg100"),
        (dict(geometry="aligned", image_format="jpeg", jpeg_quality=1), "clip-vit-l-14-336-l22-e5-k3-lanczos-g0-aligned-jpeg1"),
        (dict(image_format="png"), "clip-vit-l-14-336-l22-e5-k3-lanczos-g0"),
        # Column names and the device say nothing about the method.
        (dict(image_column="image_1", question_column="q", masked_image_column="m", device="cpu"),
         "clip-vit-l-14-336-l22-e5-k3-lanczos-g0-source75"),
    ],
)
def test_readable_names(changes, expected):
    assert variant_name(PAPER.replace(**changes)) == expected


@pytest.mark.parametrize("changes", [dict(on_error="passthrough"), dict(dtype="fp16")])
def test_parameters_outside_the_readable_part_add_a_hash(changes):
    name = variant_name(PAPER.replace(**changes))
    assert re.fullmatch(r"clip-vit-l-14-336-l22-e5-k3-lanczos-g0-source75-h[0-9a-f]{8}", name), name
    assert name != variant_name(PAPER)


def test_local_models_are_named_by_their_weights_hash():
    a = PAPER.replace(model="local-dir:/models/my-clip/", pretrained=None, layer_index=2, weights_sha256="a" * 64)
    b = a.replace(weights_sha256="b" * 64)
    moved = a.replace(model="local-dir:/elsewhere/my-clip")
    assert variant_name(a).startswith("clip-my-clip-l2-e5-k3-lanczos-g0-source75-h")
    assert variant_name(a) != variant_name(b)  # same folder name, other weights: another name
    # The hash is over the whole identity (the default's image format and quality included), with the folder by
    # its name only:
    expected = independent_hash(a, model="local-dir:my-clip")
    assert {"image_format": "source", "jpeg_quality": 75}.items() <= a.to_dict().items()
    assert config_hash(a) == expected and variant_name(a) == "clip-my-clip-l2-e5-k3-lanczos-g0-source75-h" + expected
    # Stored as PNG the identity lacks both, as the identity of every variant before the choice did.
    png = a.replace(image_format="png")
    expected_png = independent_hash(png, model="local-dir:my-clip")
    assert expected_png != expected and variant_name(png) == "clip-my-clip-l2-e5-k3-lanczos-g0-h" + expected_png
    # Where the folder lives is not part of the identity: the same weights elsewhere keep the name.
    assert variant_name(moved) == variant_name(a)


def test_names_are_unique_over_a_parameter_grid():
    grid = [
        PAPER.replace(layer_index=layer, enhance_coe=coe, kernel_size=kernel, interpolation=interp, grayscale=gray, geometry=geom)
        for layer in (20, 22) for coe in (1, 5, 5.5) for kernel in (1, 3) for interp in ("lanczos", "bicubic")
        for gray in (0, 128) for geom in ("paper", "aligned")
    ]
    grid = [c.replace(**fmt) for c in grid for fmt in (dict(image_format="png"), dict(), dict(image_format="jpeg"))]
    names = [variant_name(c) for c in grid]
    assert len(set(names)) == len(grid) == 2 * 3 * 2 * 2 * 2 * 2 * 3
    assert all(re.fullmatch(r"[a-z0-9-]+", n) for n in names)
    assert names == [variant_name(c) for c in grid]  # deterministic


# ------------------------------------------------------------------ presets


def test_presets_cover_the_papers_benchmarks():
    assert set(available_benchmarks()) == {"mmvet", "llava-bench-in-the-wild", "mme", "mmmu", "textvqa", "vizwiz-vqa"}
    mmvet = get_benchmark("MMVet")
    assert (mmvet.dataset_id, mmvet.split, mmvet.image_column, mmvet.question_column, mmvet.lmms_eval_task) == (
        "lmms-lab-encoder/MMVet", "test", "image", "question", "mmvet")
    assert get_benchmark("vizwiz").name == "vizwiz-vqa" and get_benchmark("llava_in_the_wild").name == "llava-bench-in-the-wild"
    for name in available_benchmarks():
        preset = get_benchmark(name)
        assert preset.license and preset.citation.startswith("@") and preset.lmms_eval_task
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        get_benchmark("nope")


@pytest.mark.parametrize("name", ["mmvet", "llava-bench-in-the-wild", "mme", "mmmu", "textvqa", "vizwiz-vqa"])
def test_presets_match_lmms_eval_task_yamls(name):
    """Dataset id, split and the columns the task's functions read, from lmms-eval 0.7.3's own files."""
    pytest.importorskip("lmms_eval", reason="lmms-eval is the 'eval' extra")
    from hf_api_prompt.publishing.lmms_export import find_task_yaml, load_task_config

    preset = get_benchmark(name)
    path = find_task_yaml(preset.lmms_eval_task)
    config = load_task_config(path)
    assert config["task"] == preset.lmms_eval_task
    assert config["dataset_path"] == preset.dataset_id
    assert config["test_split"] == preset.split
    utils = (path.parent / "utils.py").read_text()

    def body(function_ref):
        name = function_ref.rsplit(".", 1)[1]
        return utils.split(f"def {name}(", 1)[1].split("\ndef ", 1)[0]

    def reads(column):
        return re.compile(rf"doc\[['\"]{column}['\"]\]")

    visual = body(config["doc_to_visual"])
    if preset.image_column == "image_1":  # MMMU reads image_<n> named by the "<image n>" tokens of the question
        assert "doc[image_token]" in visual and "<image" in visual
    else:
        assert reads(preset.image_column).search(visual)
    text = body(config["doc_to_text"])
    if "construct_prompt(doc" in text:  # MMMU builds the prompt in a helper
        text = body("utils.construct_prompt")
    assert reads(preset.question_column).search(text)


# ------------------------------------------------------------------ local layout round trip


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    return save_mmvet_like(tmp_path_factory.mktemp("mmvet_like"), num_rows=4)


def _expected(tiny_clip, source, **params):
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1, **params)
    return prompter, prompter.map(source, batch_size=8)  # publish_variant's default: the same batches, the same floats


def test_local_round_trip_two_variants(tmp_path, tiny_clip, source_dir):
    from datasets import load_dataset, load_from_disk

    source = load_from_disk(source_dir)
    benchmark = get_benchmark("mmvet").replace(dataset_id=source_dir)
    folder = tmp_path / "MMVet-API"
    results, expectations = [], []
    for params in (dict(), dict(grayscale=128, kernel_size=1)):
        prompter, expected = _expected(tiny_clip, source, **params)
        results.append(publish_variant(prompter, benchmark, output_dir=folder))
        expectations.append((expected, params.get("grayscale", 0)))
    names = [r["config_name"] for r in results]
    assert len(set(names)) == 2 and all(r["num_rows"] == 4 and r["revision"] is None for r in results)

    for name, (expected, grayscale) in zip(names, expectations):
        published = load_dataset(str(folder), name, split="test")
        assert_published_variant(published, source, expected, grayscale)
        assert published.features["heatmap"].shape == (8, 8)

    index = read_index(folder)
    assert index.names() == sorted(names)  # the second run kept the first variant
    first = index[names[0]]
    assert first.source["dataset"] == source_dir and first.source["revision"].startswith("sha256:")
    assert first.prompter["weights_sha256"] and first.prompter["layer_index"] == 1
    assert first.lmms_eval == {"base_task": "mmvet", "task": f"mmvet_api_{names[0]}"}
    card = read_card(folder)
    assert check_card(card, index, [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]) == []
    configs = {c["config_name"]: c for c in card.data.to_dict()["configs"]}
    assert set(configs) == set(names)
    table = [line for line in card.text.splitlines() if line.startswith("| `")]
    assert [re.match(r"\| `([^`]+)`", line).group(1) for line in table] == sorted(names)
    assert card.data.license == "other" and card.data.task_categories == ["visual-question-answering"]
    for name in names:
        assert (folder / "previews" / f"{name}.png").is_file()


def test_keep_original_image_and_schema(tmp_path, tiny_clip):
    from datasets import load_dataset

    source = make_mmvet_like(2)
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    benchmark = custom_benchmark("in-memory", "test", lmms_eval_task="mmvet")
    result = publish_variant(prompter, benchmark, output_dir=tmp_path, dataset=source, keep_original_image=True)
    published = load_dataset(str(tmp_path), result["config_name"], split="test")
    assert published.column_names == ["question_id", "image", "original_image", "question", "answer", "image_source",
                                      "capability", "heatmap"]
    for got, original in zip(published["original_image"], source["image"]):
        assert np.array_equal(np.asarray(got), np.asarray(original))
    record = read_index(tmp_path)[result["config_name"]]
    assert record.columns["original_image"] == "original_image"
    assert record.source["revision"] == "fingerprint:" + source._fingerprint


def test_prompter_columns_must_match_the_benchmark(tmp_path, tiny_clip):
    with pytest.raises(ValueError, match="benchmark's columns"):
        publish_variant(ImagePrompter("clip", model=tiny_clip, layer_index=1), get_benchmark("mmmu"), output_dir=tmp_path)
    with pytest.raises(ValueError, match="exactly one of output_dir"):
        publish_variant(ImagePrompter("clip", model=tiny_clip, layer_index=1), get_benchmark("mmvet"))


def test_check_card_reports_missing_files_and_variants(tmp_path, tiny_clip):
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    result = publish_variant(prompter, custom_benchmark("x", "test"), output_dir=tmp_path, dataset=make_mmvet_like(1))
    card, index = read_card(tmp_path), read_index(tmp_path)
    name = result["config_name"]
    problems = check_card(card, index, ["README.md"])
    assert any("matches no file" in p for p in problems) and any("preview" in p for p in problems)
    other = index[name].__class__.from_dict({**index[name].to_dict(), "config_name": "not-in-card"})
    assert any("not-in-card" in p for p in check_card(card, index.upsert(other), []))


# ------------------------------------------------------------------ command line


def test_cli_run_without_dataset_uses_bundled_demo(tmp_path, capsys):
    from hf_api_prompt.bundled import DEMO_MODEL_LAYER
    from hf_api_prompt.cli import main

    assert main(["run", "--output-dir", str(tmp_path), "--limit", "2", "--preview-rows", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["output_dir"] == str(tmp_path) and summary["num_rows"] == 2 and summary["revision"] is None
    pattern = rf"clip-demo-clip-l{DEMO_MODEL_LAYER}-e5-k3-lanczos-g0-source75-h[0-9a-f]{{8}}-first2"
    assert re.fullmatch(pattern, summary["config_name"])
    assert (tmp_path / summary["config_name"] / "train-00000-of-00001.parquet").is_file()
    card = read_card(tmp_path)
    assert card.data.license == "mit" and summary["config_name"] in card.text


def test_cli_run_dataset_with_columns(tmp_path, tiny_clip, capsys):
    from datasets import load_dataset

    from hf_api_prompt.cli import main

    data = make_mmvet_like(2).rename_columns({"image": "picture", "question": "prompt"})
    data.save_to_disk(str(tmp_path / "src"))
    args = ["run", "--dataset", str(tmp_path / "src"), "--split", "val", "--image-column", "picture", "--question-column",
            "prompt", "--model", tiny_clip, "--layer-index", "0", "--grayscale", "7", "--output-dir", str(tmp_path / "out")]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert re.fullmatch(r"clip-tiny-clip\d*-l0-e5-k3-lanczos-g7-source75-h[0-9a-f]{8}", summary["config_name"])
    published = load_dataset(str(tmp_path / "out"), summary["config_name"], split="val")
    assert "picture" in published.column_names and "masked_image" not in published.column_names


def test_cli_needs_a_destination(capsys):
    from hf_api_prompt.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--benchmark", "mmvet"])
    assert "--output-dir" in capsys.readouterr().err


# ------------------------------------------------------------------ lmms-eval export (local folder)


def test_lmms_eval_export_of_a_local_folder_loads_in_lmms_eval(tmp_path, tiny_clip, source_dir, monkeypatch):
    pytest.importorskip("lmms_eval", reason="lmms-eval is the 'eval' extra")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unused")  # MM-Vet's utils make their GPT judge's client on import; nothing is sent
    from datasets import load_from_disk
    from lmms_eval.tasks import TaskManager, get_task_dict

    from hf_api_prompt.publishing.lmms_export import export_variants

    source = load_from_disk(source_dir)
    prompter, expected = _expected(tiny_clip, source)
    result = publish_variant(prompter, get_benchmark("mmvet").replace(dataset_id=source_dir), output_dir=tmp_path / "v")
    [(task, path)] = export_variants(tmp_path / "tasks", dataset_dir=tmp_path / "v")
    assert task == f"mmvet_api_{result['config_name']}" and path.name == f"{task}.yaml"

    manager = TaskManager(include_path=str(tmp_path / "tasks"))
    config = manager._get_config(task)
    assert config["dataset_path"] == str((tmp_path / "v").resolve())
    assert config["dataset_name"] == result["config_name"] and config["test_split"] == "test"
    assert "revision" not in (config.get("dataset_kwargs") or {})
    loaded = get_task_dict([task], manager)[task]
    docs = loaded.test_docs()
    assert [d["question_id"] for d in docs] == source["question_id"]
    [visual] = loaded.doc_to_visual(docs[0])
    assert np.array_equal(np.asarray(visual), np.asarray(expected[0]["masked_image"].convert("RGB")))


def test_export_without_lmms_eval_says_what_to_install(monkeypatch, tmp_path):
    import importlib.util

    from hf_api_prompt.publishing.lmms_export import find_task_yaml

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lmms_eval" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'hf_api_prompt\[eval\]'"):
        find_task_yaml("mmvet")


# ------------------------------------------------------------------ hub helpers (pure functions)


def _whoami(role, scoped=None, orgs=None):
    token = {"role": role}
    if scoped is not None:
        token["fineGrained"] = {"scoped": scoped}
    return {"name": "me", "orgs": [{"name": n, "roleInOrg": r} for n, r in (orgs or {}).items()],
            "auth": {"accessToken": token}}


@pytest.mark.parametrize(
    "whoami, namespace, allowed",
    [
        (_whoami("write"), "me", True),
        (_whoami("read"), "me", False),
        (_whoami("write"), "someone-else", False),
        (_whoami("write", orgs={"lab": "write"}), "lab", True),
        (_whoami("write", orgs={"lab": "read"}), "lab", False),
        (_whoami("fineGrained", scoped=[{"entity": {"type": "user", "name": "me"}, "permissions": ["repo.content.read"]}]), "me", False),
        (_whoami("fineGrained", scoped=[{"entity": {"type": "user", "name": "me"}, "permissions": ["repo.write"]}]), "me", True),
        (_whoami("fineGrained", scoped=[{"entity": {"type": "dataset", "name": "me/X"}, "permissions": ["repo.write"]}]), "me", True),
        (_whoami("fineGrained", scoped=[{"entity": {"type": "dataset", "name": "me/Y"}, "permissions": ["repo.write"]}]), "me", False),
    ],
)
def test_write_permission_from_whoami(whoami, namespace, allowed):
    reason = _write_permission(whoami, namespace, f"{namespace}/X")
    assert (reason is None) == allowed, reason


def test_retry_policy_retries_transient_errors_only():
    from huggingface_hub.errors import HfHubHTTPError

    class Response:
        def __init__(self, status):
            self.status_code, self.headers, self.request, self.url, self.text = status, {}, None, "u", ""

    def http_error(status):
        error = HfHubHTTPError(f"{status}", response=Response(status))
        return error

    assert is_transient(http_error(503)) and is_transient(http_error(429)) and is_transient(ConnectionError())
    assert not is_transient(http_error(403)) and not is_transient(ValueError())
    waits, calls = [], []

    def failing(status):
        def step():
            calls.append(status)
            raise http_error(status)
        return step

    with pytest.raises(HfHubHTTPError):
        RetryPolicy(attempts=3, base_wait=1, max_wait=1.5).call("x", failing(500), sleep=waits.append)
    assert calls == [500] * 3 and waits == [1, 1.5]
    calls.clear()
    with pytest.raises(HfHubHTTPError):
        RetryPolicy(attempts=3).call("x", failing(403), sleep=waits.append)
    assert calls == [403]


def test_merge_by_config_keeps_both_sides():
    remote = {"config_name": "a", "data_files": "a/*"}
    local = [{"config_name": "b", "data_files": "b/*"}, {"config_name": "a", "data_files": "a2/*"}]
    assert _merge_by_config(remote, local) == [{"config_name": "a", "data_files": "a2/*"}, {"config_name": "b", "data_files": "b/*"}]
    assert _merge_by_config(None, None) == []


def test_variant_index_json_round_trip(tmp_path, tiny_clip):
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    publish_variant(prompter, custom_benchmark("x", "test"), output_dir=tmp_path, dataset=make_mmvet_like(1))
    text = (tmp_path / "api_variants.json").read_text()
    index = VariantIndex.from_json(text)
    assert index.to_json() == text and json.loads(text)["format_version"] == 1
    record = index[index.names()[0]]
    # The record is the prompter's config with the local folder named by its name only (its sha256 identifies it).
    folder_name = tiny_clip.rstrip("/").rsplit("/", 1)[1]
    assert PrompterConfig.from_dict(record.prompter) == prompter.config.replace(model="local-dir:" + folder_name)
    assert set(MMVET_COLUMNS) >= {record.source["image_column"], record.source["question_column"]}
