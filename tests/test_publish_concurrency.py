"""Concurrent writers into one output folder, and of one chunk, each land or fail clearly; nothing is lost."""

import multiprocessing
import re

import pytest

from hf_api_prompt import PrompterConfig

from publish_fixtures import make_mmvet_like, tiny_built_variant

BASE = PrompterConfig(backend="clip", model="ViT-B-16", pretrained="openai", layer_index=10)
WRITERS, ROUNDS = 3, 4
SHARED = 255


def _write_variants(folder, writer: int, barrier, errors):
    """One process: ROUNDS variants of its own (grayscale = writer * ROUNDS + round), each write started together."""
    from hf_api_prompt.publishing.layout import write_variant

    try:
        for round_ in range(ROUNDS):
            built = tiny_built_variant(BASE.replace(grayscale=writer * ROUNDS + round_), preview=round_ % 2 == 0)
            barrier.wait(timeout=60)
            write_variant(folder, built)
        barrier.wait(timeout=60)
        write_variant(folder, tiny_built_variant(BASE.replace(grayscale=SHARED)))  # the same variant, by every writer
    except BaseException as error:  # reported to the test, which fails on it
        errors.put(f"writer {writer}: {type(error).__name__}: {error}")
        barrier.abort()
        raise


def _run_processes(target, args_of, count):
    context = multiprocessing.get_context("spawn")
    barrier, errors = context.Barrier(count), context.Queue()
    processes = [context.Process(target=target, args=(*args_of(i), barrier, errors)) for i in range(count)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    return [p.exitcode for p in processes], reported


@pytest.mark.slow  # three spawned processes import torch and datasets: about a minute on 2 busy cores
def test_concurrent_writers_into_one_folder_keep_every_variant(tmp_path):
    from datasets import load_dataset

    from hf_api_prompt.publishing.card import check_card
    from hf_api_prompt.publishing.layout import list_files, read_card, read_index
    from hf_api_prompt.publishing.variants import variant_name

    exit_codes, errors = _run_processes(_write_variants, lambda i: (tmp_path, i), WRITERS)
    assert errors == [] and exit_codes == [0] * WRITERS
    expected = sorted(variant_name(BASE.replace(grayscale=g)) for g in [*range(WRITERS * ROUNDS), SHARED])
    index = read_index(tmp_path)
    assert index.names() == expected  # no write lost another's record
    card = read_card(tmp_path)
    assert check_card(card, index, list_files(tmp_path)) == []
    assert sorted(re.findall(r"^\| `([^`]+)`", card.text, flags=re.M)) == expected  # the table lists all
    assert sorted(c["config_name"] for c in card.data.to_dict()["configs"]) == expected
    for gray in (0, WRITERS * ROUNDS - 1, SHARED):
        rows = load_dataset(str(tmp_path), variant_name(BASE.replace(grayscale=gray)), split="test")
        assert rows[0]["image"].getpixel((0, 0)) == (gray,) * 3
    assert not [p for p in tmp_path.rglob(".*tmp-*")]  # no temporary file left behind


def test_a_half_written_variant_of_another_writer_is_not_foreign(tmp_path):
    """The check of a variant's files waits for the writer holding the lock instead of calling its files foreign."""
    import threading

    from hf_api_prompt.publishing.layout import check_output_folder, folder_lock
    from hf_api_prompt.publishing.variants import VariantIndex

    built = tiny_built_variant(BASE)
    outcome = []

    def check():
        try:
            check_output_folder(tmp_path, built.config_name)
            outcome.append("ok")
        except ValueError as error:
            outcome.append(str(error))

    with folder_lock(tmp_path):  # another writer, between its data files and its record
        (tmp_path / built.config_name).mkdir()
        checker = threading.Thread(target=check)
        checker.start()
        checker.join(timeout=0.5)
        assert checker.is_alive() and outcome == []  # waits for the lock
        (tmp_path / "api_variants.json").write_text(VariantIndex().upsert(built.record).to_json())
    checker.join(timeout=30)
    assert outcome == ["ok"]


def _run_same_chunk(tiny_clip, work_dir, out, barrier, errors):
    """One process of two identical runs; both finish computing the only chunk before either saves it."""
    from hf_api_prompt import ImagePrompter
    from hf_api_prompt.sharded import run_sharded

    try:
        prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
        compute = prompter.map

        def map_then_wait(*args, **kwargs):
            result = compute(*args, **kwargs)
            barrier.wait(timeout=120)
            return result

        prompter.map = map_then_wait
        result, summary = run_sharded(prompter, make_mmvet_like(2), work_dir, chunk_size=2)
        result.save_to_disk(str(out))
    except BaseException as error:
        errors.put(f"{type(error).__name__}: {error}")
        barrier.abort()
        raise


@pytest.mark.slow  # two spawned processes load a tiny CLIP
def test_two_identical_runs_write_one_chunk_without_error(tmp_path, tiny_clip):
    import numpy as np
    from datasets import load_from_disk

    work = tmp_path / "chunks"
    exit_codes, errors = _run_processes(_run_same_chunk, lambda i: (tiny_clip, work, tmp_path / f"out{i}"), 2)
    assert errors == [] and exit_codes == [0, 0]
    (key,) = [p for p in work.iterdir()]
    assert [p.name for p in key.iterdir()] == ["rows-000000000-000000002"]  # one chunk, no partial left
    a, b = load_from_disk(str(tmp_path / "out0")), load_from_disk(str(tmp_path / "out1"))
    assert len(a) == len(b) == 2
    np.testing.assert_allclose(np.asarray(a["heatmap"]), np.asarray(b["heatmap"]), atol=1e-6)
