"""``hf-api-prompt run`` and ``publish_variant`` fail before the work, with a message a person understands.

Issue 10, section 4: bad columns, counts and folders are caught before any model
loads ("nothing was computed"); a missing path, a ``DatasetDict``, a failed
download and Ctrl-C end in one clear line instead of a traceback; ``--num-proc``
leaves the model to the worker processes.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hf_api_prompt import ImagePrompter
from hf_api_prompt.bundled import DEMO_MODEL, DEMO_MODEL_LAYER, load_demo_dataset
from hf_api_prompt.cli import main
from hf_api_prompt.publishing import custom_benchmark, publish_variant
from hf_api_prompt.sharded import CHUNKS_DIR

from publish_fixtures import make_mmvet_like

ROOT = Path(__file__).resolve().parents[1]
DEMO = {"model": DEMO_MODEL, "layer_index": DEMO_MODEL_LAYER}


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if any prompter loads its model."""

    def forbidden(self, rank=None):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(ImagePrompter, "backend", forbidden)


def run_cli(capsys, *args) -> tuple:
    """``main(["run", *args])`` -> (exit code, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *map(str, args)])
    return exit_info.value.code, capsys.readouterr().err


# ----------------------------------------------------------------------------- checked before the model loads


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--image-column", "picture"], r"image_column='picture' is not a column of the dataset \(columns: \[.*'image'"),
        (["--question-column", "prompt"], r"question_column='prompt' is not a column of the dataset"),
        (["--limit", "0"], r"limit must be an int >= 1, got 0"),
        (["--limit", "-3"], r"limit must be an int >= 1, got -3"),
        (["--batch-size", "0"], r"batch_size must be an int >= 1, got 0"),
        (["--chunk-size", "0"], r"chunk_size must be an int >= 1, got 0"),
    ],
)
def test_bad_run_options_fail_before_the_model_loads(tmp_path, capsys, no_model, flags, message):
    code, err = run_cli(capsys, "--output-dir", tmp_path / "out", *flags)
    assert code == 2
    assert re.search("^hf-api-prompt: error: .*" + message, err, re.M), err
    assert "(nothing was computed)" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_empty_source_fails_before_the_model_loads(tmp_path, no_model):
    empty = make_mmvet_like(2).select([])
    with pytest.raises(ValueError, match=r"mine \(split 'train'\) has no rows to mask \(nothing was computed\)"):
        publish_variant(ImagePrompter("clip", **DEMO), custom_benchmark("mine"), dataset=empty, output_dir=tmp_path / "out")


def _unwritable_cases(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not ours")
    return a_file, [
        (["--output-dir", a_file], rf"output_dir '{a_file}' cannot be a folder: '{a_file}' is a file"),
        (["--output-dir", a_file / "below"], rf"output_dir '{a_file / 'below'}' cannot be a folder: '{a_file}' is a file"),
        (["--output-dir", tmp_path / "out", "--work-dir", a_file / "chunks"], r"work_dir .* '" + str(a_file) + "' is a file"),
        # sysfs refuses new folders to everyone, root included (a chmod'ed folder would not stop root).
        (["--output-dir", "/sys/hf-api-prompt-test/out"], r"output_dir '/sys/hf-api-prompt-test/out' cannot be written: .* in '/sys'"),
    ]


@pytest.mark.parametrize("case", range(4))
def test_unwritable_folders_fail_before_the_model_loads(tmp_path, capsys, no_model, case):
    a_file, cases = _unwritable_cases(tmp_path)
    flags, message = cases[case]
    code, err = run_cli(capsys, *flags, "--limit", 2)
    assert code == 2
    assert re.search("^hf-api-prompt: error: " + message, err, re.M), err
    assert "(nothing was computed)" in err
    assert a_file.read_text() == "not ours"


def test_publish_variant_checks_columns_before_the_model_loads(tmp_path, no_model):
    prompter = ImagePrompter("clip", **DEMO, image_column="picture")
    with pytest.raises(KeyError, match=r"image_column='picture' is not a column.*\(nothing was computed\)"):
        publish_variant(prompter, custom_benchmark(None, image_column="picture"), output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- clear messages


def test_missing_dataset_path_says_it_does_not_exist(tmp_path, capsys, no_model):
    absent = tmp_path / "no" / "such" / "folder"
    code, err = run_cli(capsys, "--dataset", absent, "--output-dir", tmp_path / "out")
    assert code == 2
    assert f"dataset '{absent}': no such folder ({absent} does not exist)" in err
    assert "Repo id must be" not in err


def test_map_of_a_dataset_dict_asks_for_a_split():
    from datasets import DatasetDict

    splits = DatasetDict({"train": make_mmvet_like(1), "test": make_mmvet_like(1)})
    with pytest.raises(TypeError, match=r"not a DatasetDict: pick one of \['train', 'test'\], as dataset\[split\]"):
        ImagePrompter("clip", **DEMO).map(splits)


def test_publish_variant_takes_the_benchmark_split_of_a_dataset_dict(tmp_path):
    from datasets import DatasetDict

    splits = DatasetDict({"train": make_mmvet_like(3), "test": make_mmvet_like(2, seed=1)})
    prompter = ImagePrompter("clip", **DEMO)
    result = publish_variant(prompter, custom_benchmark("mine", "test"), dataset=splits, output_dir=tmp_path, preview_rows=0)
    assert result["num_rows"] == 2
    with pytest.raises(ValueError, match=r"holds splits \['train', 'test'\], not 'val'"):
        publish_variant(prompter, custom_benchmark("mine", "val"), dataset=splits, output_dir=tmp_path / "other")


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """``HF_HUB_OFFLINE=1`` with an empty cache (huggingface_hub reads both at import, so set its constants too)."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_model_that_cannot_be_downloaded_is_one_line(tmp_path, capsys, offline_hub):
    code, err = run_cli(capsys, "--model", "hf-hub:hf-api-prompt-test/absent-clip", "--layer-index", 0,
                        "--output-dir", tmp_path / "out")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("hf-api-prompt: error: preparing model 'hf-hub:hf-api-prompt-test/absent-clip' failed: ")
    assert "offline mode is enabled" in line
    assert line.endswith("; nothing was published; the same command can be run again to retry")
    assert "Traceback" not in err


@pytest.mark.slow
def test_unreachable_hub_endpoint_is_one_line(tmp_path):
    """A Hub that refuses connections (a closed port on loopback): one line, exit 2, no traceback.

    huggingface_hub reads HF_ENDPOINT at import, hence the subprocess. The
    connection error is an httpx error, not an OSError: it used to end in a traceback.
    """
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf-home"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_DATASETS_CACHE", "HF_HUB_CACHE"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "hf_api_prompt", "run", "--dataset", "hf-api-prompt-test/absent",
                           "--output-dir", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("hf-api-prompt: error: masking 'hf-api-prompt-test/absent' ") and "ConnectError" in line, line
    assert line.endswith("; nothing was published; the same command can be run again to retry"), line


def test_weights_that_cannot_be_downloaded_are_one_line(tmp_path, capsys, offline_hub, tiny_clip):
    # The model's config is in the cache (so the prompter is built), its weights are not:
    # the weights download fails when the model loads, before any row is masked.
    snapshot = offline_hub / "models--hf-api-prompt-test--tiny-clip" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (offline_hub / "models--hf-api-prompt-test--tiny-clip" / "refs").mkdir()
    (offline_hub / "models--hf-api-prompt-test--tiny-clip" / "refs" / "main").write_text("0" * 40)
    config = Path(tiny_clip[len("local-dir:"):]) / "open_clip_config.json"
    (snapshot / "open_clip_config.json").write_text(config.read_text())
    code, err = run_cli(capsys, "--model", "hf-hub:hf-api-prompt-test/tiny-clip", "--layer-index", 0,
                        "--output-dir", tmp_path / "out")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("hf-api-prompt: error: masking the bundled demo scenes with model 'hf-hub:hf-api-prompt-test/tiny-clip' failed: ")
    assert "offline mode is enabled" in line and "Traceback" not in err
    assert line.endswith("; nothing was published; the same command can be run again to retry")
    assert not (tmp_path / "out" / "api_variants.json").exists()


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--enhance-coe", "inf", r"error: enhance_coe must be a finite number > 0, got inf"),
        ("--enhance-coe", "nan", r"error: enhance_coe must be a finite number > 0, got nan"),
        ("--enhance-coe", "five", r"argument --enhance-coe: invalid float value: 'five'"),
        ("--kernel-size", "3.0", r"argument --kernel-size: invalid int value: '3.0'"),
        ("--layer-index", "one", r"argument --layer-index: invalid int value: 'one'"),
        ("--grayscale", "300", r"error: grayscale must be an int in \[0, 255\], got 300"),
        ("--relative-attention", "yes", r"argument --relative-attention: invalid bool value: 'yes'"),
        # a bool flag's value is parsed, not truth-tested: "false" reaches the backend check as False
        ("--relative-attention", "false", r"error: relative_attention applies to backend 'llava', not to 'clip'"),
    ],
)
def test_bad_numbers_on_the_command_line(tmp_path, capsys, no_model, flag, value, message):
    code, err = run_cli(capsys, "--output-dir", tmp_path / "out", flag, value)
    assert code == 2
    assert re.search(message, err), err


# ----------------------------------------------------------------------------- Ctrl-C

# The CLI with a model slowed to about half a second per call, so the test can interrupt between chunks.
# SIGINT gets Python's own handler: a child of a shell's background job starts with SIGINT ignored
# (as CI may run this suite), and a terminal's Ctrl-C is what the test stands for.
SLOW_CLI = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from hf_api_prompt.backends.clip import ClipBackend
real_call = ClipBackend.__call__
def slow_call(self, images, questions):
    time.sleep(0.5)
    return real_call(self, images, questions)
ClipBackend.__call__ = slow_call
from hf_api_prompt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def saved_chunks(output_dir: Path) -> list:
    return sorted(p.name for p in output_dir.glob(f"{CHUNKS_DIR}/*/rows-*") if p.is_dir() and ".partial" not in p.name)


@pytest.mark.slow
def test_ctrl_c_exits_130_saying_how_many_chunks_are_saved_and_a_rerun_reuses_them(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["run", "--output-dir", str(out), "--chunk-size", "1", "--preview-rows", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not saved_chunks(out) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.poll() is None, "the run ended before the test could interrupt it"
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130, err
    on_disk = saved_chunks(out)
    match = re.search(r"hf-api-prompt: interrupted: (\d+) of 6 chunks are saved in (\S+); .*nothing was published", err)
    assert match, err
    assert int(match.group(1)) == len(on_disk) and 1 <= len(on_disk) < 6
    assert "Traceback" not in err

    assert main(args) == 0  # the rerun computes only the missing chunks
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
    assert summary["reused_chunks"] == len(on_disk) and summary["computed_chunks"] == 6 - len(on_disk)


# ----------------------------------------------------------------------------- --num-proc


def test_num_proc_leaves_the_model_to_the_workers(tmp_path, capsys, monkeypatch):
    from datasets import load_dataset

    parent, loads_in_parent = os.getpid(), []
    real_backend = ImagePrompter.backend

    def spy(self, rank=None):
        if os.getpid() == parent:
            loads_in_parent.append(rank)
        return real_backend(self, rank)

    monkeypatch.setattr(ImagePrompter, "backend", spy)
    assert main(["run", "--output-dir", str(tmp_path), "--num-proc", "2", "--preview-rows", "0"]) == 0
    assert loads_in_parent == []  # the forked datasets workers loaded their own
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    published = load_dataset(str(tmp_path), summary["config_name"], split="train")

    expected = ImagePrompter("clip", **DEMO).map(load_demo_dataset())
    assert published["question_id"] == expected["question_id"]
    for got, want in zip(published["heatmap"], expected["heatmap"]):
        # Another process may sum in another order: float32 rounding, far below any visible change.
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)
    for got, want in zip(published["image"], expected["masked_image"]):
        difference = np.abs(np.asarray(got, dtype=np.int16) - np.asarray(want, dtype=np.int16))
        assert difference.max() <= 1  # a product on a k/255 boundary may round the other way
