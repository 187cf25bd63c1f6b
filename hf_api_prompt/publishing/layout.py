"""The repo layout, on disk: what ``push_to_hub`` would make, written to a local folder.

::

    DIR/README.md                                  dataset card (configs + dataset_info in its YAML header)
    DIR/api_variants.json                          records of every variant (the card's table is made from it)
    DIR/{config}/{split}-00000-of-00001.parquet    one config per variant, images embedded
    DIR/previews/{config}.png                      input | heatmap | masked image
    DIR/.api_lock                                  lock file: one writer at a time

``load_dataset(DIR, config)`` reads it, and :func:`~hf_api_prompt.publishing.hub.upload_folder`
uploads it to the Hub in one commit.

Writers take an exclusive lock on ``DIR/.api_lock`` around the read-modify-write of
``api_variants.json``, the card and the variant's files, and every file is written
to a hidden temporary name and renamed into place, so concurrent runs into one
folder each land whole and readers never see a half-written file. Files this
library did not write are never overwritten (:func:`check_output_folder`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from pathlib import Path
from typing import List, Optional, Tuple

from .build import BuiltVariant
from .card import check_card, is_our_card, render_card
from .variants import PREVIEW_DIR, VARIANTS_FILE, VariantIndex

logger = logging.getLogger(__name__)

README = "README.md"
MAX_SHARD_SIZE = 500 << 20  # push_to_hub's default
LOCK_FILE = ".api_lock"


class ForeignFilesError(ValueError):
    """The output folder holds files this library did not write; nothing is overwritten."""


def check_output_folder(folder, config_name: Optional[str] = None, *, computed: bool = True):
    """Refuse a folder where writing variant ``config_name`` (or only the card) would overwrite files we did not write.

    Ours: ``api_variants.json`` in our format, a ``README.md`` beside it that carries
    our card's marker, and the ``{config}/`` folder and ``previews/{config}.png`` of
    a variant recorded in that ``api_variants.json``. A missing or empty folder is fine.
    The variant's own files are checked under the folder's lock, so another
    writer's half-written variant is never taken for foreign files.

    Args:
        computed: whether masks were already computed (only changes the message).

    Raises:
        ForeignFilesError: naming each foreign file.
    """
    folder = Path(folder)
    _refuse_foreign(folder, None, computed)  # card and records: each written by one rename, safe to read unlocked
    if config_name is not None and folder.is_dir():
        with folder_lock(folder):
            _refuse_foreign(folder, config_name, computed)


def _refuse_foreign(folder: Path, config_name: Optional[str], computed: bool):
    """:func:`check_output_folder`'s checks; the caller holds the lock when ``config_name`` is given."""
    if not folder.exists():
        return
    nothing = "nothing was written" if computed else "nothing was computed or written"
    if not folder.is_dir():
        raise ForeignFilesError(f"output folder {folder} is a file; {nothing}")
    problems = []
    index = None
    if (folder / VARIANTS_FILE).exists():
        try:
            text = (folder / VARIANTS_FILE).read_text(encoding="utf-8")
            if "format_version" not in json.loads(text):
                raise ValueError("no format_version")
            index = VariantIndex.from_json(text)
        except (ValueError, TypeError, AttributeError, OSError) as error:
            problems.append(f"{folder / VARIANTS_FILE} is not an hf_api_prompt variant index ({type(error).__name__}: {error})")
    readme = folder / README
    if readme.exists():
        if index is None:
            problems.append(f"{readme} is not a card written by hf_api_prompt (no {VARIANTS_FILE} beside it)")
        elif not is_our_card(readme.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{readme} is not a card written by hf_api_prompt (it lacks the card's marker)")
    if config_name is not None and (index is None or config_name not in index):
        for path in (folder / config_name, folder / PREVIEW_DIR / f"{config_name}.png"):
            if path.exists():
                problems.append(f"{path} exists but is not a variant recorded in {VARIANTS_FILE}")
    if problems:
        raise ForeignFilesError(
            f"refusing to write {'variant ' + repr(config_name) if config_name else 'the card'} to {folder}: "
            + "; ".join(problems) + f". {nothing.capitalize()}. Choose an empty folder or one that hf_api_prompt "
            "wrote, or move these files away."
        )


@contextlib.contextmanager
def folder_lock(folder):
    """Hold the exclusive lock of the existing layout folder ``folder`` (``.api_lock``, created if missing)."""
    import fcntl

    with open(Path(folder) / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _temporary(path: Path) -> Path:
    """A hidden name beside ``path`` for writing it before the rename (skipped by :func:`list_files`)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _write_text(path: Path, text: str):
    partial = _temporary(path)
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def shard_paths(config_name: str, split: str, num_shards: int) -> List[str]:
    """Repo paths of a split's shards, as ``push_to_hub(config_name=...)`` names them.

    >>> shard_paths("c", "test", 2)
    ['c/test-00000-of-00002.parquet', 'c/test-00001-of-00002.parquet']
    """
    return [f"{config_name}/{split}-{i:05d}-of-{num_shards:05d}.parquet" for i in range(num_shards)]


def write_parquet_shards(dataset, folder: Path, config_name: str, split: str, max_shard_size: int = MAX_SHARD_SIZE) -> Tuple[List[str], int]:
    """Write ``dataset`` as self-contained parquet shards (image bytes embedded, as ``push_to_hub`` does).

    Returns:
        the shards' repo paths and their total size in bytes.
    """
    from datasets.table import embed_table_storage

    try:
        estimate = dataset._estimate_nbytes()
    except Exception:  # noqa: BLE001 (a private helper; the estimate only sizes shards)
        estimate = dataset.data.nbytes
    num_shards = max(1, math.ceil(estimate / max_shard_size))
    paths = shard_paths(config_name, split, num_shards)
    (folder / config_name).mkdir(parents=True, exist_ok=True)
    size = 0
    for index, path in enumerate(paths):
        shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        shard = shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True).with_format(None)
        partial = _temporary(folder / path)
        shard.to_parquet(str(partial))
        os.replace(partial, folder / path)
        size += (folder / path).stat().st_size
    for stale in (folder / config_name).glob(f"{split}-*.parquet"):
        if stale.relative_to(folder).as_posix() not in paths:
            stale.unlink()
    return paths, size


def read_index(folder: Path) -> VariantIndex:
    path = Path(folder) / VARIANTS_FILE
    return VariantIndex.from_json(path.read_text(encoding="utf-8") if path.is_file() else None)


def read_card(folder: Path):
    from huggingface_hub import DatasetCard

    path = Path(folder) / README
    return DatasetCard(path.read_text(encoding="utf-8")) if path.is_file() else None


def card_with_config(existing_card, built: BuiltVariant, data_files: List[str], download_size: int):
    """A card whose header has ``configs``/``dataset_info`` entries for ``built`` (others kept)."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    record = built.record
    card_data = existing_card.data if existing_card is not None else DatasetCardData()
    MetadataConfigs(
        {record.config_name: {"data_files": [{"split": record.split, "path": f"{record.config_name}/{record.split}-*"}]}}
    ).to_dataset_card_data(card_data)
    splits = SplitDict()
    dataset_size = built.dataset.data.nbytes
    splits.add(SplitInfo(name=record.split, num_bytes=dataset_size, num_examples=record.num_rows))
    info = DatasetInfo(
        config_name=record.config_name,
        features=built.dataset.features,
        splits=splits,
        download_size=download_size,
        dataset_size=dataset_size,
    )
    DatasetInfosDict({record.config_name: info}).to_dataset_card_data(card_data)
    return DatasetCard("---\n" + card_data.to_yaml() + "\n---\n")


def write_variant(folder, built: BuiltVariant, *, max_shard_size: int = MAX_SHARD_SIZE) -> dict:
    """Add (or replace) ``built`` in the repo layout at ``folder``; other variants there are kept.

    Holds the folder's lock (:func:`folder_lock`) throughout, so concurrent writers
    into one folder each land; refuses (:func:`check_output_folder`) to overwrite
    files this library did not write.

    Returns:
        ``{"output_dir", "config_name", "revision": None, "num_rows", "files"}``.
    """
    folder = Path(folder)
    record = built.record
    check_output_folder(folder)  # a foreign card or index: refused before the lock file is made
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder):
        _refuse_foreign(folder, record.config_name, computed=True)
        data_files, size = write_parquet_shards(built.dataset, folder, record.config_name, record.split, max_shard_size)
        files = list(data_files)
        if built.preview is not None:
            preview = folder / record.preview
            preview.parent.mkdir(parents=True, exist_ok=True)
            built.preview.save(_temporary(preview), format="PNG")
            os.replace(_temporary(preview), preview)
            files.append(record.preview)
        index = read_index(folder).upsert(record)
        card = card_with_config(read_card(folder), built, data_files, size)
        card = render_card(index, load_path=str(folder), is_hub=False, existing_card=card)
        problems = check_card(card, index, list_files(folder))
        if problems:
            raise ValueError("the generated card does not match the folder: " + "; ".join(problems))
        _write_text(folder / VARIANTS_FILE, index.to_json())
        _write_text(folder / README, str(card))
    logger.info("wrote variant %s (%d rows) to %s", record.config_name, record.num_rows, folder)
    return {"output_dir": str(folder), "config_name": record.config_name, "revision": None,
            "num_rows": record.num_rows, "files": files + [VARIANTS_FILE, README]}


def list_files(folder) -> List[str]:
    """Repo-relative paths of every file in ``folder`` (posix separators, hidden files skipped)."""
    folder = Path(folder)
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def rewrite_card(folder, template_path: Optional[Path] = None) -> Path:
    """Re-render ``folder``'s README from its ``api_variants.json``, keeping its YAML header."""
    folder = Path(folder)
    if not (folder / VARIANTS_FILE).is_file():
        raise ValueError(f"{folder} has no {VARIANTS_FILE}: nothing to render")
    with folder_lock(folder):
        _refuse_foreign(folder, None, computed=True)
        index = read_index(folder)
        card = render_card(index, load_path=str(folder), is_hub=False, existing_card=read_card(folder), template_path=template_path)
        problems = check_card(card, index, list_files(folder))
        if problems:
            raise ValueError("the card does not match the folder: " + "; ".join(problems))
        _write_text(folder / README, str(card))
    return folder / README
