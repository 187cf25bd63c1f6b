"""``publish_variant``: benchmark in, published masked variant out (local folder or Hub)."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from ..prompter import ImagePrompter
from .benchmarks import Benchmark
from ..sharded import CHUNKS_DIR, run_sharded, work_key
from .build import build_variant, rows_to_mask
from .hub import HubPublisher, RetryPolicy
from .layout import check_output_folder, write_variant
from .sources import in_memory_source, load_source
from .variants import variant_name

logger = logging.getLogger(__name__)


def publish_variant(
    prompter: ImagePrompter,
    benchmark: Benchmark,
    *,
    output_dir=None,
    repo_id: Optional[str] = None,
    dataset=None,
    revision: Optional[str] = None,
    token: Optional[str] = None,
    private: Optional[bool] = None,
    batch_size: int = 8,
    limit: Optional[int] = None,
    keep_original_image: bool = False,
    preview_rows: int = 4,
    num_proc: Optional[int] = None,
    retry: Optional[RetryPolicy] = None,
    chunk_size: int = 256,
    work_dir=None,
) -> dict:
    """Mask ``benchmark`` with ``prompter`` and publish it as a variant.

    With ``repo_id``, everything that can stop the push (token, its role and
    permissions, the namespace, the repo, an existing tag) is checked before the
    source is read or any model runs; then the data is pushed as config
    :func:`variant_name`, the card and picture are committed, and only then is the
    tag ``{config}-v{version}`` created. With ``output_dir``, the same layout is
    written to a folder.

    Args:
        prompter: an :class:`ImagePrompter` whose ``image_column``/``question_column``
            are the benchmark's.
        benchmark: a preset (:func:`get_benchmark`) or :func:`custom_benchmark`.
        output_dir: local folder (exclusive with ``repo_id``).
        repo_id: Hub dataset repo (exclusive with ``output_dir``).
        dataset: an already loaded split to use instead of ``benchmark.dataset_id``.
        revision: revision of a Hub source (default: its main branch, pinned by sha).
        token: Hugging Face token (default: the logged-in one).
        private: visibility of a repo that has to be created.
        batch_size: rows per model call.
        num_proc: ``datasets`` worker processes per chunk (the accelerate-free way to use several GPUs).
        limit, keep_original_image, preview_rows: see :func:`build_variant`.
        retry: how transient Hub errors are retried.
        chunk_size, work_dir: rows per resumable chunk and where chunks are kept
            (default: ``<output_dir>/.api_chunks``, or the ``datasets`` cache for a push);
            see :func:`hf_api_prompt.sharded.run_sharded`. Under ``accelerate launch``
            every process masks a contiguous shard and the main process publishes.

    Returns:
        ``{"repo_id" or "output_dir", "config_name", "revision", "num_rows", ...}``
        (``revision`` is the tag, ``None`` for a folder).

    Example:
        >>> import tempfile
        >>> from hf_api_prompt.bundled import DEMO_MODEL
        >>> from hf_api_prompt.publishing import custom_benchmark
        >>> prompter = ImagePrompter("clip", model=DEMO_MODEL, layer_index=2)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     result = publish_variant(prompter, custom_benchmark(None), output_dir=folder, limit=2)
        >>> result["num_rows"], result["config_name"].startswith("clip-demo-clip-l2-e5-k3-lanczos-g0-h")
        (2, True)
        >>> result["config_name"].endswith("-first2")
        True
    """
    if (output_dir is None) == (repo_id is None):
        raise ValueError("give exactly one of output_dir (local folder) and repo_id (Hub)")
    _check_counts(batch_size=batch_size, chunk_size=chunk_size, limit=limit, num_proc=num_proc)
    chunks = Path(work_dir) if work_dir is not None else Path(output_dir or default_work_dir()) / CHUNKS_DIR
    for name, folder in (("output_dir", output_dir), ("work_dir", chunks)):
        if folder is not None:
            _check_writable(Path(folder), name)
    config = prompter.config
    if (config.image_column, config.question_column) != (benchmark.image_column, benchmark.question_column):
        raise ValueError(
            f"the prompter reads ({config.image_column!r}, {config.question_column!r}) but the benchmark's columns are "
            f"({benchmark.image_column!r}, {benchmark.question_column!r})"
        )
    name = variant_name(config, first_rows=limit)
    if output_dir is not None:  # never overwrite files we did not write; checked before any compute
        check_output_folder(output_dir, name, computed=False)
    state = _process_state()
    publisher = None
    # The main process goes first: it creates the repo and fills the download cache,
    # and if it fails the launcher stops the others before any compute.
    with state.main_process_first():
        if repo_id is not None:
            publisher = HubPublisher(repo_id, token=token, private=private, retry=retry)
            publisher.preflight(name)  # before any compute
        source = in_memory_source(dataset, benchmark) if dataset is not None else load_source(benchmark, revision=revision, token=token)
    rows = rows_to_mask(prompter, source, limit)
    _check_rows(prompter, rows, source, benchmark)
    mapped, summary = run_sharded(
        prompter, rows, chunks, chunk_size=chunk_size, batch_size=batch_size, state=state,
        map_kwargs={"num_proc": num_proc} if num_proc else None,
    )
    if mapped is None:  # not the main process: the main one writes
        return {"process_index": state.process_index, "summary": dataclasses.asdict(summary)}
    built = build_variant(
        prompter, source, benchmark, mapped, limit=limit, keep_original_image=keep_original_image, preview_rows=preview_rows
    )
    result = publisher.publish(built) if publisher is not None else write_variant(output_dir, built)
    shutil.rmtree(chunks / work_key(prompter, rows, chunk_size), ignore_errors=True)  # published: chunks are spent
    if chunks.is_dir() and not any(chunks.iterdir()):
        chunks.rmdir()
    logger.info("summary: %s", summary)
    return {**result, "summary": {**dataclasses.asdict(summary), "rows_per_second": summary.rows_per_second}}


def _check_counts(**counts):
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an int >= 1, got {value!r} (nothing was computed)")


def _check_writable(folder: Path, name: str):
    """``folder`` is, or can be made, a folder this process may write: checked now, not after the first chunk."""
    existing = folder
    while not existing.exists():  # a path through a file does not exist either
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{name} {str(folder)!r} cannot be a folder: {str(existing)!r} is a file (nothing was computed)")
    try:  # permissions, read-only mounts, ACLs: ask the file system itself
        os.rmdir(tempfile.mkdtemp(prefix=".hf_api_prompt-write-check-", dir=existing))
    except OSError as error:
        raise ValueError(
            f"{name} {str(folder)!r} cannot be written: {error.strerror} in {str(existing)!r} (nothing was computed)"
        ) from None


def _check_rows(prompter: ImagePrompter, rows, source, benchmark: Benchmark):
    """The rows to mask exist and have the prompter's columns (the model is not loaded yet)."""
    where = f"{source.dataset_id} (split {benchmark.split!r})"
    if len(rows) == 0:
        raise ValueError(f"{where} has no rows to mask (nothing was computed)")
    try:
        prompter.check_columns(rows.column_names)
    except (KeyError, ValueError) as error:
        raise type(error)(f"{where}: {error.args[0]} (nothing was computed)") from None


def default_work_dir() -> Path:
    """Where Hub pushes keep their resumable chunks: the ``datasets`` cache."""
    from datasets import config as datasets_config

    return Path(datasets_config.HF_DATASETS_CACHE) / "hf_api_prompt"


def _process_state():
    """accelerate's process state: the launcher's processes, or this one alone (CPU without CUDA)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
