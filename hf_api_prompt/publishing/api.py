"""``publish_variant``: benchmark in, published masked variant out (local folder or Hub)."""

from __future__ import annotations

import collections
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from ..prompter import ImagePrompter
from .benchmarks import Benchmark
from ..sharded import CHUNKS_DIR, run_sharded, work_key
from ..stages import MapsPrompter, combinations, maps_prompter_of, remask
from .build import build_maps_variant, build_variant, rows_to_mask
from .hub import HubPublisher, RetryPolicy
from .layout import check_output_folder, write_variant
from .sources import Source, in_memory_source, load_source
from .variants import maps_variant_name, variant_name

logger = logging.getLogger(__name__)


def publish_variant(prompter: ImagePrompter, benchmark: Benchmark, **options) -> dict:
    """Mask ``benchmark`` with ``prompter`` and publish it as a variant.

    With ``repo_id``, everything that can stop the push (token, its role and
    permissions, the namespace, the repo, an existing tag) is checked before the
    source is read or any model runs; then the data is pushed as config
    :func:`variant_name`, the card and picture are committed, and only then is the
    tag ``{config}-v{version}`` created. With ``output_dir``, the same layout is
    written to a folder. :func:`publish_sweep` with one prompter; same options.

    Returns:
        ``{"repo_id" or "output_dir", "config_name", "revision", "num_rows", ..., "summary"}``
        (``revision`` is the tag, ``None`` for a folder).

    Example:
        >>> import tempfile
        >>> from hf_api_prompt.bundled import DEMO_MODEL
        >>> from hf_api_prompt.publishing import custom_benchmark
        >>> prompter = ImagePrompter("clip", model=DEMO_MODEL, layer_index=2)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     result = publish_variant(prompter, custom_benchmark(None), output_dir=folder, limit=2)
        >>> result["num_rows"], result["config_name"].startswith("clip-demo-clip-l2-e5-k3-lanczos-g0-source75-h")
        (2, True)
        >>> result["config_name"].endswith("-first2")
        True
    """
    result = publish_sweep([prompter], benchmark, **options)
    if "variants" not in result:  # not the main process
        return result
    return {**result["variants"][0], "summary": result["summary"]}


def publish_sweep(
    prompters: Sequence[ImagePrompter],
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
    maps_only: bool = False,
) -> dict:
    """Publish one variant per prompter, with one model pass per group that shares a model (all its layers at once).

    Prompters that differ only in ``layer_index``, the recipe (``enhance_coe``,
    ``kernel_size``) or the prompt (``interpolation``, ``grayscale``, ``geometry``)
    share one maps run (:class:`~hf_api_prompt.stages.MapsPrompter`); each variant is
    then made from the maps with no model (:func:`~hf_api_prompt.stages.remask`) and
    published as an ordinary variant: its own config, tag, card row and record, the
    same as :func:`publish_variant` of that prompter alone. Every name, the folder or
    the Hub repo and the source are checked before any model runs.

    Args:
        prompters: e.g. :func:`hf_api_prompt.stages.sweep`; their columns must be the benchmark's.
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
        chunk_size, work_dir: rows per resumable chunk of the maps run and where chunks are kept
            (default: ``<output_dir>/.api_chunks``, or the ``datasets`` cache for a push);
            see :func:`hf_api_prompt.sharded.run_sharded`. Under ``accelerate launch``
            every process computes a contiguous shard and the main process publishes.
        maps_only: publish the maps datasets themselves (one per model pass, named by
            :func:`maps_variant_name`), to be remasked later (:func:`publish_remask`).

    Returns:
        ``{"variants": [publish result per variant or maps dataset], "model_passes": n,
        "num_variants": m, "summary": {...}}`` on the main process.
    """
    prompters = list(prompters)
    if not prompters:
        raise ValueError("no prompter to publish (nothing was computed)")
    if (output_dir is None) == (repo_id is None):
        raise ValueError("give exactly one of output_dir (local folder) and repo_id (Hub)")
    _check_counts(batch_size=batch_size, chunk_size=chunk_size, limit=limit, num_proc=num_proc)
    chunks = Path(work_dir) if work_dir is not None else Path(output_dir or default_work_dir()) / CHUNKS_DIR
    for name, folder in (("output_dir", output_dir), ("work_dir", chunks)):
        if folder is not None:
            _check_writable(Path(folder), name)
    for prompter in prompters:
        config = prompter.config
        if (config.image_column, config.question_column) != (benchmark.image_column, benchmark.question_column):
            raise ValueError(
                f"the prompter reads ({config.image_column!r}, {config.question_column!r}) but the benchmark's columns "
                f"are ({benchmark.image_column!r}, {benchmark.question_column!r}) (nothing was computed)"
            )
    groups = [(maps, [p for p in prompters if maps.serves(p.config) is None]) for maps in MapsPrompter.for_prompters(prompters)]
    names = ([maps_variant_name(maps, first_rows=limit) for maps, _ in groups] if maps_only
             else [variant_name(p.config, first_rows=limit) for p in prompters])
    if output_dir is not None:  # never overwrite files we did not write; checked before any compute
        for name in names:
            check_output_folder(output_dir, name, computed=False)
    state = _process_state()
    publisher = None
    # The main process goes first: it creates the repo and fills the download cache,
    # and if it fails the launcher stops the others before any compute.
    with state.main_process_first():
        if repo_id is not None:
            publisher = HubPublisher(repo_id, token=token, private=private, retry=retry)
            for name in names:
                publisher.preflight(name)  # before any compute
        source = in_memory_source(dataset, benchmark) if dataset is not None else load_source(benchmark, revision=revision, token=token)
    rows = rows_to_mask(prompters[0], source, limit)
    for maps, _ in groups:
        _check_rows(maps, rows, source, benchmark)
    results, summaries = [], []
    for maps, members in groups:
        mapped, summary = run_sharded(
            maps, rows, chunks, chunk_size=chunk_size, batch_size=batch_size, state=state,
            map_kwargs={"num_proc": num_proc} if num_proc else None,
        )
        summaries.append(summary)
        if mapped is None:  # not the main process: the main one writes
            continue
        if maps_only:
            builds = [build_maps_variant(maps, source, benchmark, mapped, limit=limit)]
        else:
            builds = (build_variant(member, source, benchmark, remask(mapped, member, maps_prompter=maps, batch_size=batch_size),
                                    limit=limit, keep_original_image=keep_original_image, preview_rows=preview_rows)
                      for member in members)
        for built in builds:
            results.append(publisher.publish(built) if publisher is not None else write_variant(output_dir, built))
        shutil.rmtree(chunks / work_key(maps, rows, chunk_size), ignore_errors=True)  # published: chunks are spent
    if chunks.is_dir() and not any(chunks.iterdir()):
        chunks.rmdir()
    total = _sum_summaries(summaries)
    if not state.is_main_process:
        return {"process_index": state.process_index, "summary": total}
    logger.info("%d model pass(es), %d variant(s) published", len(groups), len(results))
    return {"variants": results, "model_passes": len(groups), "num_variants": len(results), "summary": total}


def publish_remask(
    maps,
    *,
    maps_config: Optional[str] = None,
    revision: str = "main",
    output_dir=None,
    repo_id: Optional[str] = None,
    token: Optional[str] = None,
    private: Optional[bool] = None,
    batch_size: int = 8,
    keep_original_image: bool = False,
    preview_rows: int = 4,
    retry: Optional[RetryPolicy] = None,
    **params,
) -> dict:
    """Publish variants made from a published maps dataset, with no model (``hf-api-prompt remask``).

    Each combination of ``params`` (a list is several values, as in
    :func:`hf_api_prompt.stages.sweep`) is published as the ordinary variant that
    :func:`publish_variant` of that parameter set on the same source would publish:
    same name, same data, same record (but its date).

    Args:
        maps: a local folder or a Hub dataset repo holding a maps dataset
            (``publish_sweep(..., maps_only=True)``, ``hf-api-prompt run --maps-only``).
        maps_config: which maps dataset, when the folder or repo holds several.
        revision: where ``api_variants.json`` is read on the Hub.
        output_dir, repo_id: where the variants go (exactly one).
        **params: the fields the maps leave open (:data:`hf_api_prompt.stages.OPEN_FIELDS`);
            ``layer_index`` defaults to every layer of the maps.

    Returns:
        as :func:`publish_sweep` (``model_passes`` is 0).
    """
    if (output_dir is None) == (repo_id is None):
        raise ValueError("give exactly one of output_dir (local folder) and repo_id (Hub)")
    _check_counts(batch_size=batch_size)
    if output_dir is not None:
        _check_writable(Path(output_dir), "output_dir")
    record, dataset = _load_maps(maps, maps_config, revision, token)
    maps_prompter = maps_prompter_of(dataset)
    params.setdefault("layer_index", list(maps_prompter.layers))
    prompters = {}
    for combination in combinations(params):
        prompter = maps_prompter.prompter(**combination)
        prompters.setdefault(prompter.config, prompter)
    source = Source(dataset, record.source.get("dataset"), record.source.get("revision"),
                    bool(record.source.get("from_hub")), record.source.get("license"))
    benchmark = _benchmark_of(record)
    limit = None if record.source.get("rows", "all") == "all" else record.num_rows
    names = [variant_name(p.config, first_rows=limit) for p in prompters.values()]
    publisher = None
    if output_dir is not None:
        for name in names:
            check_output_folder(output_dir, name, computed=False)
    else:
        publisher = HubPublisher(repo_id, token=token, private=private, retry=retry)
        for name in names:
            publisher.preflight(name)
    results = []
    for prompter in prompters.values():
        mapped = remask(dataset, prompter, maps_prompter=maps_prompter, batch_size=batch_size)
        built = build_variant(prompter, source, benchmark, mapped, limit=limit, keep_original_image=keep_original_image,
                              preview_rows=preview_rows)
        results.append(publisher.publish(built) if publisher is not None else write_variant(output_dir, built))
    logger.info("%d variant(s) remasked from %s without a model", len(results), record.config_name)
    return {"variants": results, "model_passes": 0, "num_variants": len(results), "maps": record.config_name}


def _load_maps(maps, maps_config: Optional[str], revision: str, token: Optional[str]):
    """``(record, dataset)`` of the maps dataset in a local folder or a Hub repo."""
    from datasets import load_dataset

    from .layout import read_index

    local = Path(maps).is_dir()
    if local:
        index = read_index(Path(maps))
    else:
        hub = HubPublisher(maps, token=token)
        index = hub.index(revision)
    candidates = [name for name in index.names() if index[name].maps]
    if maps_config is not None:
        if maps_config not in candidates:
            raise ValueError(f"{maps!r} has no maps dataset {maps_config!r}; its maps datasets: {candidates} (nothing was computed)")
        name = maps_config
    elif len(candidates) == 1:
        [name] = candidates
    else:
        raise ValueError(
            f"{maps!r} holds {'no' if not candidates else len(candidates)} maps datasets"
            f"{': ' + ', '.join(candidates) + '; choose one with maps_config (--maps-config)' if candidates else ' (make one with run --maps-only)'}"
            " (nothing was computed)"
        )
    record = index[name]
    if local:
        dataset = load_dataset(str(maps), name=name, split=record.split)
    else:
        dataset = load_dataset(maps, name=name, split=record.split, revision=record.tag or revision, token=token)
    return record, dataset


def _benchmark_of(record) -> Benchmark:
    """The benchmark a record's source was read as (its preset's lmms-eval task included)."""
    from .benchmarks import available_benchmarks, get_benchmark

    source = record.source
    name = source.get("benchmark") or "custom"
    base = get_benchmark(name) if name in available_benchmarks() else Benchmark(name=name, dataset_id=None, split=record.split)
    return base.replace(
        dataset_id=source.get("dataset"), split=record.split, image_column=source.get("image_column", base.image_column),
        question_column=source.get("question_column", base.question_column), license=source.get("license") or base.license,
        pretty_name=source.get("pretty_name") or base.pretty_name, homepage=source.get("homepage"),
        citation=source.get("citation"),
    )


def _sum_summaries(summaries) -> dict:
    """The runs' summaries added up (their seconds too: the runs are one after the other)."""
    total = {
        "rows": sum(s.rows for s in summaries),
        "computed_rows": sum(s.computed_rows for s in summaries),
        "reused_chunks": sum(s.reused_chunks for s in summaries),
        "computed_chunks": sum(s.computed_chunks for s in summaries),
        "failures": dict(sum((collections.Counter(s.failures) for s in summaries), collections.Counter())),
        "seconds": sum(s.seconds for s in summaries),
        "processes": max(s.processes for s in summaries),
    }
    total["rows_per_second"] = total["computed_rows"] / total["seconds"] if total["seconds"] > 0 else float("nan")
    return total


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


def _check_rows(prompter, rows, source, benchmark: Benchmark):
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
