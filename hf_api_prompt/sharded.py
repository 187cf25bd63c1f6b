"""Sharded, resumable runs: one contiguous shard per process, written in chunks.

Works under ``accelerate launch`` (any number of processes, GPUs or CPU) and in
a plain single process. Rows are cut into fixed chunks of the WHOLE dataset;
each process takes a contiguous run of chunks and writes each finished chunk
atomically (a temporary folder renamed into place). A rerun with the same
prompter config, dataset and chunk size skips every chunk already on disk, even
with a different number of processes, so a crash at 90% costs at most the
chunks that were in flight.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Dict, List, Tuple

logger = logging.getLogger(__name__)

ID_COLUMNS = ("question_id", "id", "index")
CHUNKS_DIR = ".api_chunks"


@dataclasses.dataclass
class RunSummary:
    """What a (sharded) run did, summed over processes."""

    rows: int
    computed_rows: int
    reused_chunks: int
    computed_chunks: int
    failures: Dict[str, int]
    seconds: float
    processes: int

    @property
    def rows_per_second(self) -> float:
        return self.computed_rows / self.seconds if self.seconds > 0 else float("nan")

    def __str__(self) -> str:
        failures = ", ".join(f"{n} x {reason}" for reason, n in sorted(self.failures.items())) or "none"
        return (
            f"{self.rows} rows ({self.computed_rows} computed in {self.computed_chunks} chunks, "
            f"{self.reused_chunks} chunks reused) by {self.processes} process(es) in {self.seconds:.1f} s "
            f"({self.rows_per_second:.2f} rows/s computed); failures: {failures}"
        )


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_sharded`; says how many chunks are saved for a rerun to reuse.

    Attributes:
        saved: chunks of this run on disk (by any process), out of ``total``.
        work_dir: the run's chunk folder.
    """

    def __init__(self, saved: int, total: int, work_dir: Path):
        super().__init__(saved, total, work_dir)
        self.saved, self.total, self.work_dir = saved, total, work_dir

    def __str__(self) -> str:
        return (
            f"{self.saved} of {self.total} chunks are saved in {self.work_dir}; a rerun with the same "
            "prompter, rows, chunk size and work dir reuses them"
        )


def chunk_ranges(num_rows: int, chunk_size: int) -> List[Tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(num_rows)`` in order.

    >>> chunk_ranges(5, 2)
    [(0, 2), (2, 4), (4, 5)]
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(start, min(start + chunk_size, num_rows)) for start in range(0, num_rows, chunk_size)]


def work_key(prompter, dataset, chunk_size: int) -> str:
    """Identifies a run's chunks: prompter config, input data and chunking.

    Local weights count by name and sha256, not by path
    (:func:`~hf_api_prompt.backends.base.portable_config`): another checkout of the
    same weights reuses the chunks.
    """
    from .backends.base import portable_config

    identity = portable_config(prompter.config).to_json()
    if hasattr(prompter, "layers"):  # a MapsPrompter: its maps are of these layers
        identity += f"\nlayers={list(prompter.layers)}"
    text = "\n".join([identity, dataset._fingerprint, str(len(dataset)), str(chunk_size)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _chunk_dir(root: Path, start: int, stop: int) -> Path:
    return root / f"rows-{start:09d}-{stop:09d}"


def _statuses(chunk, prompter) -> collections.Counter:
    column = prompter.config.status_column
    if prompter.config.on_error != "passthrough":
        return collections.Counter()
    return collections.Counter(s for s in chunk[column] if s != "ok")


def run_sharded(prompter, dataset, work_dir, *, chunk_size: int = 256, batch_size: int = 8, state=None, map_kwargs=None):
    """Map ``dataset`` with ``prompter`` across the processes of ``state``, resumably.

    Args:
        prompter: an :class:`~hf_api_prompt.ImagePrompter`.
        dataset: the input ``datasets.Dataset`` (the same on every process).
        work_dir: folder for the chunks; reuse it to resume.
        chunk_size: rows per chunk (the unit of resumption).
        batch_size: rows per model call.
        state: an ``accelerate.PartialState``; created (``cpu=True`` without CUDA) if None.
        map_kwargs: more arguments for :meth:`ImagePrompter.map` (e.g. ``num_proc``).

    Returns:
        ``(dataset, summary)`` on the main process (rows in the original order,
        count and ids checked), ``(None, summary)`` on the others.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from datasets import concatenate_datasets, load_from_disk
    from datasets.utils.tqdm import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled
    from tqdm.auto import tqdm

    if state is None:
        state = PartialState(cpu=not torch.cuda.is_available())
    root = Path(work_dir) / work_key(prompter, dataset, chunk_size)
    chunks = chunk_ranges(len(dataset), chunk_size)
    with state.split_between_processes(list(range(len(chunks)))) as mine:
        mine = list(mine)
    counts = {"computed_rows": 0, "reused": 0, "computed": 0}
    failures: collections.Counter = collections.Counter()
    todo_rows = sum(chunks[i][1] - chunks[i][0] for i in mine)
    bar = tqdm(total=todo_rows, desc=f"process {state.process_index}", unit="rows", position=state.process_index, dynamic_ncols=True)
    bars_were_on = is_progress_bar_enabled()
    disable_progress_bars()  # one bar per process instead of one per chunk
    try:
        # Load the model on this process's device before any work (accelerate's own device choice).
        # Not with num_proc > 1: each datasets worker loads its own, and one loaded here would be
        # forked into every worker (CUDA does not survive a fork; on CPU it is wasted memory).
        if ((map_kwargs or {}).get("num_proc") or 1) <= 1:
            prompter.backend(rank=state.local_process_index if torch.cuda.is_available() else None)
        started = time.perf_counter()
        for index in mine:
            start, stop = chunks[index]
            final = _chunk_dir(root, start, stop)
            if final.is_dir():
                counts["reused"] += 1
                failures.update(_statuses(load_from_disk(str(final)), prompter))
            else:
                chunk = prompter.map(
                    dataset.select(range(start, stop)), batch_size=batch_size, keep_in_memory=True, **(map_kwargs or {})
                )
                _save_atomically(chunk, final)
                failures.update(_statuses(chunk, prompter))
                counts["computed"] += 1
                counts["computed_rows"] += stop - start
            bar.update(stop - start)
    except KeyboardInterrupt:
        saved = sum(_chunk_dir(root, start, stop).is_dir() for start, stop in chunks)
        raise RunInterrupted(saved, len(chunks), root) from None
    finally:
        bar.close()
        if bars_were_on:
            enable_progress_bars()
    elapsed = time.perf_counter() - started

    reports = gather_object([{"counts": counts, "failures": dict(failures), "seconds": elapsed}])
    summary = RunSummary(
        rows=len(dataset),
        computed_rows=sum(r["counts"]["computed_rows"] for r in reports),
        reused_chunks=sum(r["counts"]["reused"] for r in reports),
        computed_chunks=sum(r["counts"]["computed"] for r in reports),
        failures=dict(sum((collections.Counter(r["failures"]) for r in reports), collections.Counter())),
        seconds=max(r["seconds"] for r in reports),
        processes=state.num_processes,
    )
    state.wait_for_everyone()
    if not state.is_main_process:
        return None, summary
    result = concatenate_datasets([load_from_disk(str(_chunk_dir(root, a, b))) for a, b in chunks])
    _check_same_rows(dataset, result)
    logger.info("%s", summary)
    return result, summary


def _save_atomically(chunk, final: Path):
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(final.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    chunk.save_to_disk(str(partial))
    try:
        os.replace(partial, final)
    except OSError:
        if not final.is_dir():
            raise
        # Another process wrote the same chunk (same key: same rows, same config) first: keep theirs.
        logger.info("chunk %s was written by another process; keeping it", final.name)
        shutil.rmtree(partial, ignore_errors=True)


def _check_same_rows(source, result):
    if len(result) != len(source):
        raise RuntimeError(f"sharded run produced {len(result)} rows for {len(source)} input rows")
    for column in ID_COLUMNS:
        if column in source.column_names and column in result.column_names:
            if source[column] != result[column]:
                raise RuntimeError(f"sharded run changed the order of column {column!r}")
            break
