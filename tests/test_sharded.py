"""Sharded runs under ``accelerate launch`` (2 CPU processes) and resuming after a kill."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, load_dataset
from PIL import Image

from hf_api_prompt.sharded import chunk_ranges

from compare import assert_heatmaps_close, assert_image_lists_close

ROWS = 8
CHUNK = 2


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> str:
    rng = np.random.default_rng(7)
    sizes = [(60, 40), (40, 60), (50, 50), (70, 30), (30, 70), (64, 48), (48, 64), (80, 40)]
    data = {
        "question_id": [f"q{i}" for i in range(ROWS)],
        "image": [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes],
        "question": [f"Where is object number {i}?" for i in range(ROWS)],
    }
    path = tmp_path_factory.mktemp("source") / "ds"
    Dataset.from_dict(data).save_to_disk(str(path))
    return str(path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_args(source_dir, tiny_clip, output_dir):
    return ["run", "--dataset", source_dir, "--output-dir", str(output_dir), "--chunk-size", str(CHUNK),
            "--batch-size", "2", "--model", tiny_clip, "--layer-index", "1", "--preview-rows", "0"]


def _one_process(args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf_api_prompt", *args], capture_output=True, text=True, timeout=300)


def _two_processes(entry, args) -> subprocess.CompletedProcess:
    """``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``: two gloo processes on CPU."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launch, *entry, *args], capture_output=True, text=True, timeout=300, env=env)


def _summary(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout  # only the main process reports
    return json.loads(lines[0])


def _load(output_dir, summary):
    return load_dataset(str(output_dir), summary["config_name"], split="train")


def _assert_same(a, b):
    """Same rows in the same order; masks equal up to float32 reduction order (the processes differ in threads)."""
    assert a.column_names == b.column_names
    assert a["question_id"] == b["question_id"] == [f"q{i}" for i in range(ROWS)]
    assert_image_lists_close(a["image"], b["image"], "masked images")
    assert_heatmaps_close(a["heatmap"], b["heatmap"])


@pytest.fixture(scope="module")
def one_process_result(source_dir, tiny_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    summary = _summary(_one_process(_run_args(source_dir, tiny_clip, out)))
    assert summary["summary"]["processes"] == 1
    return _load(out, summary)


@pytest.mark.slow
def test_two_processes_equal_one(source_dir, tiny_clip, tmp_path, one_process_result):
    summary = _summary(_two_processes(["-m", "hf_api_prompt"], _run_args(source_dir, tiny_clip, tmp_path)))
    assert summary["summary"]["processes"] == 2
    assert summary["summary"]["computed_chunks"] == len(chunk_ranges(ROWS, CHUNK))
    assert summary["num_rows"] == ROWS
    _assert_same(_load(tmp_path, summary), one_process_result)
    assert not (tmp_path / ".api_chunks").exists()  # spent chunks are cleaned up after writing


KILLER = textwrap.dedent(
    """
    # Process 1 kills itself (SIGKILL: no cleanup) right after saving its first chunk.
    import os, signal, sys
    import hf_api_prompt.sharded as sharded

    save = sharded._save_atomically

    def save_then_die(chunk, final):
        save(chunk, final)
        if os.environ.get("RANK") == "1":
            os.kill(os.getpid(), signal.SIGKILL)

    sharded._save_atomically = save_then_die
    from hf_api_prompt.cli import main
    sys.exit(main())
    """
)


@pytest.mark.slow
def test_killed_run_resumes_without_recomputing(source_dir, tiny_clip, tmp_path, one_process_result):
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    out = tmp_path / "out"
    crashed = _two_processes([str(killer)], _run_args(source_dir, tiny_clip, out))
    assert crashed.returncode != 0
    chunk_dirs = sorted(p for p in (out / ".api_chunks").glob("*/rows-*") if ".partial" not in p.name)
    # Process 1 owns rows 4..8; it finished exactly its first chunk before dying.
    assert any(p.name == "rows-000000004-000000006" for p in chunk_dirs)
    assert not any(p.name == "rows-000000006-000000008" for p in chunk_dirs)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in chunk_dirs}

    # Record which chunks the rerun computes (the survivors must not be rewritten).
    summary = _summary(_two_processes(["-m", "hf_api_prompt"], _run_args(source_dir, tiny_clip, out)))
    total = len(chunk_ranges(ROWS, CHUNK))
    assert summary["summary"]["reused_chunks"] == len(before)
    assert summary["summary"]["computed_chunks"] == total - len(before)
    _assert_same(_load(out, summary), one_process_result)


def test_resume_after_kill_keeps_finished_chunks_untouched(source_dir, tiny_clip, tmp_path):
    """Finished chunk folders are reused as they are: same inode and mtime after the rerun."""
    from datasets import load_from_disk

    from hf_api_prompt import ImagePrompter
    from hf_api_prompt.sharded import run_sharded

    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    dataset = load_from_disk(source_dir)
    first, _ = run_sharded(prompter, dataset.select(range(4)), tmp_path, chunk_size=CHUNK)
    # Simulate a crash: drop the second chunk of a 4-row run after the fact.
    chunk_dirs = sorted(Path(tmp_path).glob("*/rows-*"))
    stamp = (chunk_dirs[0].stat().st_ino, chunk_dirs[0].stat().st_mtime_ns)
    import shutil

    shutil.rmtree(chunk_dirs[1])
    again, summary = run_sharded(prompter, dataset.select(range(4)), tmp_path, chunk_size=CHUNK)
    assert (summary.reused_chunks, summary.computed_chunks) == (1, 1)
    assert (chunk_dirs[0].stat().st_ino, chunk_dirs[0].stat().st_mtime_ns) == stamp
    np.testing.assert_array_equal(np.asarray(first["heatmap"]), np.asarray(again["heatmap"]))
