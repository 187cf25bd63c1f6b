"""The repo layout, on disk: what ``push_to_hub`` would make, written to a local folder.

::

    DIR/README.md                                  dataset card (configs + dataset_info in its YAML header)
    DIR/api_variants.json                          records of every variant (the card's table is made from it)
    DIR/{config}/{split}-00000-of-00001.parquet    one config per variant, images embedded
    DIR/previews/{config}.png                      input | heatmap | masked image

``load_dataset(DIR, config)`` reads it, and :func:`~hf_api_prompt.publishing.hub.upload_folder`
uploads it to the Hub in one commit.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import List, Optional, Tuple

from .build import BuiltVariant
from .card import check_card, render_card
from .variants import VARIANTS_FILE, VariantIndex

logger = logging.getLogger(__name__)

README = "README.md"
MAX_SHARD_SIZE = 500 << 20  # push_to_hub's default


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
    for stale in (folder / config_name).glob(f"{split}-*.parquet"):
        stale.unlink()
    size = 0
    for index, path in enumerate(paths):
        shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        shard = shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True).with_format(None)
        shard.to_parquet(str(folder / path))
        size += (folder / path).stat().st_size
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

    Returns:
        ``{"output_dir", "config_name", "revision": None, "num_rows", "files"}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = built.record
    data_files, size = write_parquet_shards(built.dataset, folder, record.config_name, record.split, max_shard_size)
    files = list(data_files)
    if built.preview is not None:
        (folder / record.preview).parent.mkdir(parents=True, exist_ok=True)
        built.preview.save(folder / record.preview)
        files.append(record.preview)
    index = read_index(folder).upsert(record)
    card = card_with_config(read_card(folder), built, data_files, size)
    card = render_card(index, load_path=str(folder), is_hub=False, existing_card=card)
    problems = check_card(card, index, list_files(folder))
    if problems:
        raise ValueError("the generated card does not match the folder: " + "; ".join(problems))
    (folder / VARIANTS_FILE).write_text(index.to_json(), encoding="utf-8")
    (folder / README).write_text(str(card), encoding="utf-8")
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
    index = read_index(folder)
    card = render_card(index, load_path=str(folder), is_hub=False, existing_card=read_card(folder), template_path=template_path)
    problems = check_card(card, index, list_files(folder))
    if problems:
        raise ValueError("the card does not match the folder: " + "; ".join(problems))
    (folder / README).write_text(str(card), encoding="utf-8")
    return folder / README
