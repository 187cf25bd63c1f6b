"""Publishing to a Hub: real ``huggingface_hub``/``datasets``/``lmms-eval`` clients against ``hub_server.py``.

``huggingface_hub`` reads ``HF_ENDPOINT`` when it is imported, and other test
modules import it first, so these checks run in a fresh interpreter: the test
session starts ``python -m pytest`` on this file once with
``HF_API_PROMPT_HUB_CHILD=1``; in that child, this module starts the server and
points the clients at it before anything imports them, and each ``check_*``
function below is a test. In the parent session, ``test_hub[check_...]``
reports the child's result for that check (its failure text on failure).
Nothing is mocked: every call goes through the real clients over HTTP.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

CHILD = os.environ.get("HF_API_PROMPT_HUB_CHILD") == "1"
TESTS = Path(__file__).resolve().parent
TOKEN, READ_TOKEN, FINE_NO_WRITE, FINE_WRITE, OTHER_TOKEN = "hf_me_write", "hf_me_read", "hf_me_fine_ro", "hf_me_fine_rw", "hf_other"

if CHILD:
    if "huggingface_hub" in sys.modules:  # pragma: no cover (a wrong start would test the real Hub's URL)
        raise RuntimeError("the Hub checks must start in a fresh interpreter (huggingface_hub is already imported)")
    sys.path.insert(0, str(TESTS))
    from hub_server import HubServer

    SERVER = HubServer().start()
    SERVER.add_user("me", token=TOKEN, orgs={"lab": "write", "museum": "read"})
    SERVER.add_token("me", READ_TOKEN, role="read")
    SERVER.add_token("me", FINE_NO_WRITE, role="fineGrained",
                     scoped=[{"entity": {"type": "user", "name": "me"}, "permissions": ["repo.content.read"]}])
    SERVER.add_token("me", FINE_WRITE, role="fineGrained",
                     scoped=[{"entity": {"type": "user", "name": "me"}, "permissions": ["repo.content.read", "repo.write"]}])
    SERVER.add_user("other", token=OTHER_TOKEN)
    _HOME = tempfile.mkdtemp(prefix="hf_home_")
    atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.pop(name, None)
    os.environ.update(
        HF_ENDPOINT=SERVER.url, HF_HUB_DISABLE_XET="1", HF_HOME=_HOME, HF_HUB_DISABLE_TELEMETRY="1",
        HF_DATASETS_CACHE=os.path.join(_HOME, "datasets"), HF_HUB_DISABLE_PROGRESS_BARS="1",
    )


# ----------------------------------------------------------------------------- child-side fixtures


@pytest.fixture
def hub():
    """The server, with no injected faults left over."""
    SERVER.state.faults.clear()
    yield SERVER
    SERVER.state.faults.clear()


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    from publish_fixtures import save_mmvet_like

    return save_mmvet_like(tmp_path_factory.mktemp("mmvet_like"), num_rows=4)


def fast_retry():
    from hf_api_prompt.publishing import RetryPolicy

    return RetryPolicy(attempts=3, base_wait=0.05, max_wait=0.1)


def _publish(model, source_dir, repo_id, token=TOKEN, **params):
    from hf_api_prompt import ImagePrompter
    from hf_api_prompt.publishing import get_benchmark, publish_variant

    prompter = ImagePrompter("clip", model=model, layer_index=1, **params)
    benchmark = get_benchmark("mmvet").replace(dataset_id=source_dir)
    return publish_variant(prompter, benchmark, repo_id=repo_id, token=token, retry=fast_retry())


def _expected(model, source, **params):
    """The source split and its masks computed directly (``source``: a ``save_to_disk`` folder or a split)."""
    from datasets import load_from_disk

    from hf_api_prompt import ImagePrompter

    source = load_from_disk(source) if isinstance(source, str) else source
    return source, ImagePrompter("clip", model=model, layer_index=1, **params).map(source, batch_size=8)


def _assert_tags_are_whole(hub, repo_id):
    """Every tag points at a commit that holds its variant whole: data, picture, record, card entry."""
    from huggingface_hub import DatasetCard

    from hf_api_prompt.publishing import VariantIndex

    tags = hub.refs(repo_id)["tags"]
    assert tags
    for tag in tags:
        files = hub.files(repo_id, tag)
        index = VariantIndex.from_json(files["api_variants.json"].decode())
        [record] = [r for r in index.records.values() if r.tag == tag]
        assert any(p.startswith(f"{record.config_name}/{record.split}-") and p.endswith(".parquet") for p in files), tag
        assert record.preview in files
        card = DatasetCard(files["README.md"].decode())
        assert record.config_name in {c["config_name"] for c in card.data.to_dict()["configs"]}
        assert f"`{record.config_name}`" in card.text


# ----------------------------------------------------------------------------- checks


def check_round_trip_python_api(hub, tiny_clip, source_dir):
    """Two variants pushed through the Python API; each loads back at its tag; the card lists both."""
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    from hf_api_prompt.publishing import VariantIndex
    from hf_api_prompt.publishing.card import check_card
    from publish_fixtures import assert_published_variant

    repo = "me/MMVet-API"
    first = _publish(tiny_clip, source_dir, repo)
    second = _publish(tiny_clip, source_dir, repo, grayscale=128, kernel_size=1)
    assert first["repo_id"] == second["repo_id"] == repo
    assert first["revision"] == first["config_name"] + "-v0.1.0" and first["num_rows"] == 4
    assert first["config_name"] != second["config_name"]
    assert hub.refs(repo)["tags"] == {first["revision"]: first["commit"], second["revision"]: second["commit"]}

    for result, params in ((first, {}), (second, {"grayscale": 128, "kernel_size": 1})):
        source, expected = _expected(tiny_clip, source_dir, **params)
        published = load_dataset(repo, result["config_name"], split="test", revision=result["revision"])
        assert_published_variant(published, source, expected, params.get("grayscale", 0))
    # The first tag was made before the second variant existed: pinned, it does not see it.
    first_files = hub.files(repo, first["revision"])
    assert not any(p.startswith(second["config_name"] + "/") for p in first_files)

    main = hub.files(repo)
    index = VariantIndex.from_json(main["api_variants.json"].decode())
    assert index.names() == sorted([first["config_name"], second["config_name"]])
    record = index[first["config_name"]]
    assert record.tag == first["revision"] and record.source["revision"].startswith("sha256:")
    assert record.prompter["weights_sha256"] and record.num_rows == 4
    card = DatasetCard(main["README.md"].decode())
    card.validate(repo_type="dataset")  # the Hub's validate-yaml endpoint
    assert check_card(card, index, list(main)) == []
    assert card.data.license == "other" and "mmvet" in card.data.tags
    assert f"--tasks mmvet_api_{second['config_name']}" in card.text
    assert f'revision="{first["revision"]}"' in card.text
    _assert_tags_are_whole(hub, repo)


def check_round_trip_cli(hub, tiny_clip, tmp_path):
    """The headline command: ``hf-api-prompt run --benchmark mmvet --push-to-hub REPO``, twice, with MM-Vet on the Hub.

    The preset's dataset (``lmms-lab-encoder/MMVet``, split ``test``) is served by the test Hub, with a
    license in its card: the variants are read from it at its pinned sha and inherit its license.
    """
    from datasets import load_dataset
    from huggingface_hub import DatasetCard, HfApi

    from hf_api_prompt.publishing import VariantIndex
    from publish_fixtures import assert_published_variant, make_mmvet_like

    source_repo, source_token = "lmms-lab-encoder/MMVet", "hf_lmms_lab"
    hub.add_user("lmms-lab-encoder", token=source_token)
    make_mmvet_like(4, seed=1).push_to_hub(source_repo, split="test", token=source_token)
    card = DatasetCard.load(source_repo, repo_type="dataset")
    card.data.license = "cc-by-4.0"
    card.push_to_hub(source_repo, repo_type="dataset", token=source_token)
    source_sha = HfApi().dataset_info(source_repo).sha
    source = load_dataset(source_repo, split="test", revision=source_sha)

    repo = "lab/MMVet-API"
    env = {**os.environ, "HF_TOKEN": TOKEN}
    summaries = []
    for extra in ([], ["--grayscale", "128"]):
        command = [sys.executable, "-m", "hf_api_prompt", "run", "--benchmark", "mmvet", "--backend", "clip",
                   "--model", tiny_clip, "--layer-index", "1", "--push-to-hub", repo, *extra]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        summaries.append(json.loads(done.stdout.strip().splitlines()[-1]))
    for summary, grayscale in zip(summaries, (0, 128)):
        assert set(summary) >= {"repo_id", "config_name", "revision", "num_rows"}
        assert summary["repo_id"] == repo and summary["num_rows"] == 4
        assert summary["revision"] == summary["config_name"] + "-v0.1.0"
        assert hub.refs(repo)["tags"][summary["revision"]] == summary["commit"]
        _, expected = _expected(tiny_clip, source, grayscale=grayscale)
        published = load_dataset(repo, summary["config_name"], split="test", revision=summary["revision"])
        assert_published_variant(published, source, expected, grayscale)
    files = hub.files(repo)
    index = VariantIndex.from_json(files["api_variants.json"].decode())
    assert index.names() == sorted(s["config_name"] for s in summaries)
    for record in index.records.values():
        assert record.source["dataset"] == source_repo and record.source["revision"] == source_sha
        assert record.source["from_hub"] and record.source["license"] == "cc-by-4.0"
    card = DatasetCard(files["README.md"].decode())
    assert card.data.license == "cc-by-4.0" and card.data.source_datasets == [source_repo]
    assert f"https://huggingface.co/datasets/{source_repo}" in card.text and source_sha in card.text
    _assert_tags_are_whole(hub, repo)


def check_lmms_eval_task_from_the_hub(hub, tiny_clip, source_dir, tmp_path):
    """The exported task is loaded by lmms-eval's task manager and reads the variant at its tag."""
    pytest.importorskip("lmms_eval", reason="lmms-eval is the 'eval' extra")
    from lmms_eval.tasks import TaskManager, get_task_dict

    repo = "me/MMVet-API-lmms"
    result = _publish(tiny_clip, source_dir, repo)
    _publish(tiny_clip, source_dir, repo, grayscale=64)  # main moves on; the task stays pinned
    env = {**os.environ, "HF_TOKEN": TOKEN}
    done = subprocess.run([sys.executable, "-m", "hf_api_prompt", "export-lmms-eval", "--repo-id", repo, "--config",
                           result["config_name"], "--output-dir", str(tmp_path / "api_tasks")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    task = f"mmvet_api_{result['config_name']}"
    assert summary["tasks"] == [task]

    manager = TaskManager(include_path=str(tmp_path / "api_tasks"))
    assert task in manager.all_tasks
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", "sk-unused")  # MM-Vet's utils make their GPT judge's client on import; nothing is sent
        config = manager._get_config(task)
        loaded = get_task_dict([task], manager)[task]
    assert (config["dataset_path"], config["dataset_name"]) == (repo, result["config_name"])
    assert config["dataset_kwargs"]["revision"] == result["revision"]
    assert config["test_split"] == "test" and "tag" not in config and "group" not in config
    docs = loaded.test_docs()
    source, expected = _expected(tiny_clip, source_dir)
    assert [d["question_id"] for d in docs] == source["question_id"]
    for doc, want in zip(docs, expected["masked_image"]):
        [visual] = loaded.doc_to_visual(doc)
        assert np.array_equal(np.asarray(visual), np.asarray(want.convert("RGB")))
    assert loaded.doc_to_text(doc).endswith(doc["question"])


def check_no_token_fails_before_compute(hub, tiny_clip, source_dir):
    from hf_api_prompt import ImagePrompter
    from hf_api_prompt.publishing import PublishError, get_benchmark, publish_variant

    before = len(hub.requests)
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    with pytest.raises(PublishError, match="no Hugging Face token"):
        publish_variant(prompter, get_benchmark("mmvet").replace(dataset_id=source_dir), repo_id="me/no-token")
    assert prompter._backend is None  # no model was loaded
    assert hub.requests[before:] == []  # and nothing was sent
    # The command says so too, and exits non-zero.
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "hf_api_prompt", "run", "--benchmark", "mmvet", "--dataset", source_dir,
                           "--model", tiny_clip, "--layer-index", "1", "--push-to-hub", "me/no-token"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no Hugging Face token" in done.stderr
    assert "API masks" not in done.stderr  # the map never started
    assert ("dataset", "me/no-token") not in hub.state.repos


@pytest.mark.parametrize(
    "token, repo, message",
    [
        ("hf_not_a_token", "me/bad", "invalid or expired"),
        (READ_TOKEN, "me/ro", "read-only"),
        (FINE_NO_WRITE, "me/fine", "no 'repo.write' permission"),
        (TOKEN, "someone/else", "neither 'someone' nor a member"),
        (TOKEN, "museum/exhibit", "role 'read' in 'museum'"),
    ],
)
def check_unwritable_targets_fail_before_compute(hub, tiny_clip, source_dir, token, repo, message):
    from hf_api_prompt import ImagePrompter
    from hf_api_prompt.publishing import PublishError, get_benchmark, publish_variant

    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    with pytest.raises(PublishError, match=message):
        publish_variant(prompter, get_benchmark("mmvet").replace(dataset_id=source_dir), repo_id=repo, token=token,
                        retry=fast_retry())
    assert prompter._backend is None
    assert ("dataset", repo) not in hub.state.repos


def check_existing_repo_of_someone_else_fails_before_compute(hub, tiny_clip, source_dir):
    """A repo that exists but that the token cannot write: the Hub's auth check says so, before compute."""
    from huggingface_hub import HfApi

    from hf_api_prompt import ImagePrompter
    from hf_api_prompt.publishing import PublishError, get_benchmark, publish_variant

    HfApi(token=OTHER_TOKEN).create_repo("other/shared", repo_type="dataset")
    hub.state.users["me"]["other"] = "read"  # "me" can see "other"'s repos but not write them
    try:
        prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
        with pytest.raises(PublishError, match="role 'read' in 'other'"):
            publish_variant(prompter, get_benchmark("mmvet").replace(dataset_id=source_dir), repo_id="other/shared",
                            token=TOKEN, retry=fast_retry())
        assert prompter._backend is None
    finally:
        del hub.state.users["me"]["other"]


def check_fine_grained_write_token_works(hub, tiny_clip, source_dir):
    result = _publish(tiny_clip, source_dir, "me/fine-rw", token=FINE_WRITE)
    assert hub.refs("me/fine-rw")["tags"] == {result["revision"]: result["commit"]}


def check_transient_errors_mid_upload_are_retried(hub, tiny_clip, source_dir):
    repo = "me/flaky"
    before = len(hub.requests)
    hub.fail("PUT", r"^/_lfs/", status=500, times=1)  # the parquet upload (retried by huggingface_hub itself)
    hub.fail("POST", rf"^/api/datasets/{repo}/commit/", status=503, times=2)  # the data commit, twice (our retry)
    hub.fail("POST", rf"^/api/datasets/{repo}/tag/", status=502, times=1)
    result = _publish(tiny_clip, source_dir, repo, enhance_coe=3.0)  # parameters no other check uses: new LFS content
    failed = [(m, p, s) for m, p, s in hub.requests[before:] if s >= 500]
    assert ("PUT", "/_lfs/", 500) in [(m, p[:6], s) for m, p, s in failed]
    assert sum(1 for m, p, s in failed if "/commit/" in p) == 2 and sum(1 for m, p, s in failed if "/tag/" in p) == 1
    assert hub.refs(repo)["tags"] == {result["revision"]: result["commit"]}
    _assert_tags_are_whole(hub, repo)


def check_failure_leaves_no_tag_and_a_rerun_publishes_whole(hub, tiny_clip, source_dir):
    from datasets import load_dataset

    from hf_api_prompt.publishing import VariantIndex, variant_name
    from hf_api_prompt import ImagePrompter
    from publish_fixtures import assert_published_variant

    repo = "me/interrupted"
    name = variant_name(ImagePrompter("clip", model=tiny_clip, layer_index=1).config)
    # The data commit lands, then every later commit fails (more often than any retry tries): no card commit.
    hub.fail("POST", rf"^/api/datasets/{repo}/commit/", status=500, times=100, skip=1)
    from hf_api_prompt.publishing import PublishError

    with pytest.raises(PublishError, match="(?s)failed while committing the card.*was not created.*run the same command again") as raised:
        _publish(tiny_clip, source_dir, repo)
    assert "500" in str(raised.value.__cause__)
    assert hub.refs(repo)["tags"] == {}  # nothing to pin: the half-published variant is invisible to pinned evaluations
    main = hub.files(repo)
    assert any(p.startswith(f"{name}/test-") for p in main)  # the data commit did land on main
    assert "api_variants.json" not in main

    hub.state.faults.clear()
    result = _publish(tiny_clip, source_dir, repo)  # the same command again
    assert result["config_name"] == name and hub.refs(repo)["tags"] == {result["revision"]: result["commit"]}
    index = VariantIndex.from_json(hub.files(repo, result["revision"])["api_variants.json"].decode())
    assert index.names() == [name]
    source, expected = _expected(tiny_clip, source_dir)
    assert_published_variant(load_dataset(repo, name, split="test", revision=result["revision"]), source, expected, 0)
    _assert_tags_are_whole(hub, repo)


def check_existing_tag_fails_before_compute(hub, tiny_clip, source_dir):
    from hf_api_prompt import ImagePrompter
    from hf_api_prompt.publishing import PublishError, get_benchmark, publish_variant

    repo = "me/twice"
    first = _publish(tiny_clip, source_dir, repo)
    commits = len(hub.commits(repo))
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    with pytest.raises(PublishError, match="already has tag"):
        publish_variant(prompter, get_benchmark("mmvet").replace(dataset_id=source_dir), repo_id=repo, token=TOKEN)
    assert prompter._backend is None and len(hub.commits(repo)) == commits
    assert hub.refs(repo)["tags"] == {first["revision"]: first["commit"]}


def check_local_folder_uploads_in_one_commit(hub, tiny_clip, source_dir, tmp_path, monkeypatch, capsys):
    """``hf-api-prompt upload``: a folder of two variants lands in one commit; the repo's variant is kept."""
    from datasets import load_dataset

    from hf_api_prompt import ImagePrompter
    from hf_api_prompt.cli import main
    from hf_api_prompt.publishing import get_benchmark, publish_variant
    from publish_fixtures import assert_published_variant

    repo = "me/from-folder"
    existing = _publish(tiny_clip, source_dir, repo, grayscale=200)  # a variant already on the Hub is kept
    folder = tmp_path / "variants"
    local = [publish_variant(ImagePrompter("clip", model=tiny_clip, layer_index=1, **p),
                             get_benchmark("mmvet").replace(dataset_id=source_dir), output_dir=folder)
             for p in ({}, {"kernel_size": 5})]
    commits = len(hub.commits(repo))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    capsys.readouterr()
    assert main(["upload", "--dataset-dir", str(folder), "--repo-id", repo]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(hub.commits(repo)) == commits + 1  # one commit for both variants
    assert sorted(result["config_names"]) == sorted(r["config_name"] for r in local)
    tags = hub.refs(repo)["tags"]
    assert set(tags) == {existing["revision"], *result["revisions"]}
    assert all(tags[t] == result["commit"] for t in result["revisions"])
    source, expected = _expected(tiny_clip, source_dir)
    name = local[0]["config_name"]
    assert_published_variant(load_dataset(repo, name, split="test", revision=f"{name}-v0.1.0"), source, expected, 0)
    from hf_api_prompt.publishing import VariantIndex

    index = VariantIndex.from_json(hub.files(repo)["api_variants.json"].decode())
    assert len(index) == 3 and index[existing["config_name"]].tag == existing["revision"]
    _assert_tags_are_whole(hub, repo)


def check_card_command_rerenders_from_the_variants_file(hub, tiny_clip, source_dir):
    from huggingface_hub import HfApi

    repo = "me/recard"
    result = _publish(tiny_clip, source_dir, repo)
    rendered = hub.files(repo)["README.md"].decode()
    header = rendered.split("\n---\n", 1)[0]
    # Someone edits the card by hand and loses the table.
    HfApi(token=TOKEN).upload_file(path_or_fileobj=(header + "\n---\n\n# hand-edited\n").encode(), path_in_repo="README.md",
                                   repo_id=repo, repo_type="dataset")
    env = {**os.environ, "HF_TOKEN": TOKEN}
    done = subprocess.run([sys.executable, "-m", "hf_api_prompt", "card", "--repo-id", repo], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["variants"] == [result["config_name"]] and summary["commit"] == hub.refs(repo)["branches"]["main"]
    assert hub.files(repo)["README.md"].decode() == rendered  # header kept, body re-rendered from api_variants.json
    assert hub.refs(repo)["tags"] == {result["revision"]: result["commit"]}  # tags never move


CHECKS = sorted(name for name in list(globals()) if name.startswith("check_"))

# ----------------------------------------------------------------------------- wiring

if CHILD:
    for _name in CHECKS:
        globals()["test_" + _name[len("check_"):]] = globals()[_name]
else:

    @pytest.fixture(scope="module")
    def child_results(tmp_path_factory):
        """Run this file's checks once in a fresh interpreter; ``{check name: (outcome, text)}``."""
        report = tmp_path_factory.mktemp("hub_child") / "report.xml"
        env = {**os.environ, "HF_API_PROMPT_HUB_CHILD": "1"}
        command = [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                   f"--junitxml={report}", "-W", "ignore::DeprecationWarning"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800, cwd=TESTS.parent)
        results = {}
        if report.exists():
            for case in ElementTree.parse(report).getroot().iter("testcase"):
                name = "check_" + case.get("name").split("[", 1)[0][len("test_"):]
                outcome, text = "passed", ""
                for child in case:
                    if child.tag in ("failure", "error"):
                        outcome, text = "failed", (child.get("message") or "") + "\n" + (child.text or "")
                    elif child.tag == "skipped" and outcome == "passed":
                        outcome, text = "skipped", child.get("message") or ""
                previous = results.get(name, ("passed", ""))
                if previous[0] == "failed" or (previous[0] == "skipped" and outcome == "passed"):
                    continue
                results[name] = (outcome, text)
        return results, done.stdout[-6000:] + done.stderr[-3000:]

    @pytest.mark.parametrize("check", CHECKS)
    def test_hub(child_results, check):
        results, output = child_results
        if check not in results:
            pytest.fail(f"{check} did not run in the Hub child process:\n{output}")
        outcome, text = results[check]
        if outcome == "skipped":
            pytest.skip(text)
        assert outcome == "passed", text
