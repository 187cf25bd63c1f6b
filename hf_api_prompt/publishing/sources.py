"""Reading the dataset to mask, and pinning exactly which data it was.

A Hub dataset is pinned by its commit sha (``HfApi().dataset_info(...).sha``) and
read at that sha; a local folder by a sha256 over its files' contents; an
in-memory ``Dataset`` by its ``datasets`` fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Optional

from .. import bundled
from .benchmarks import Benchmark

logger = logging.getLogger(__name__)

DEMO_SOURCE_ID = "hf_api_prompt/demo-scenes"


@dataclasses.dataclass
class Source:
    """A loaded source split and where it came from.

    Attributes:
        dataset: the ``datasets.Dataset`` split.
        dataset_id: Hub id or local path (as given).
        revision: Hub commit sha, ``sha256:...`` of a folder's files, or ``fingerprint:...``.
        from_hub: whether ``dataset_id`` is a Hub dataset.
        license: the source's license (its Hub card's, else the preset's).
    """

    dataset: object
    dataset_id: str
    revision: str
    from_hub: bool
    license: Optional[str]


def folder_fingerprint(path: os.PathLike) -> str:
    """``sha256:<hex>`` over every file below ``path`` (relative path and content, in sorted order).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "a.txt").write_text("x")
    ...     folder_fingerprint(d) == folder_fingerprint(d)
    True
    """
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_source(benchmark: Benchmark, *, revision: Optional[str] = None, token=None) -> Source:
    """Load ``benchmark.split`` of ``benchmark.dataset_id`` and pin its revision.

    ``dataset_id`` may be ``None`` (the bundled demo scenes), a ``save_to_disk``
    folder, a data folder (anything ``load_dataset(folder)`` reads), or a Hub id
    (read at the commit sha that ``dataset_info`` reports for ``revision``).
    """
    from datasets import load_dataset, load_from_disk

    dataset_id = benchmark.dataset_id
    if dataset_id is None:
        dataset = bundled.load_demo_dataset()
        return Source(dataset, DEMO_SOURCE_ID, folder_fingerprint(bundled.DEMO_DATA), False, benchmark.license)
    path = Path(dataset_id)
    if path.is_dir():
        if _is_saved_dataset(path):
            dataset = pick_split(load_from_disk(str(path)), benchmark.split, dataset_id)
        else:
            dataset = load_dataset(str(path), split=benchmark.split)
        return Source(dataset, str(dataset_id), folder_fingerprint(path), False, benchmark.license)
    _check_hub_id(dataset_id, path)

    from huggingface_hub import HfApi

    from .retry import RetryPolicy

    info = RetryPolicy().call("source info", lambda: HfApi().dataset_info(dataset_id, revision=revision, token=token))
    card_license = None
    if info.card_data is not None:
        card_license = info.card_data.get("license")
        if isinstance(card_license, list):
            card_license = card_license[0] if len(card_license) == 1 else "other"
    dataset = load_dataset(dataset_id, split=benchmark.split, revision=info.sha, token=token)
    return Source(dataset, dataset_id, info.sha, True, card_license or benchmark.license)


def in_memory_source(dataset, benchmark: Benchmark) -> Source:
    """A ``Dataset`` passed in directly (of a ``DatasetDict``, ``benchmark.split``): pinned by its ``datasets`` fingerprint."""
    name = benchmark.dataset_id or "in-memory"
    dataset = pick_split(dataset, benchmark.split, name)
    return Source(dataset, name, "fingerprint:" + dataset._fingerprint, False, benchmark.license)


def pick_split(dataset, split: str, name: str):
    """``dataset`` itself, or its split ``split`` if it is a ``DatasetDict`` (a clear error if it has none)."""
    from datasets import DatasetDict

    if not isinstance(dataset, DatasetDict):
        return dataset
    if split not in dataset:
        raise ValueError(f"{name} holds splits {list(dataset)}, not {split!r}: pass --split (nothing was computed)")
    return dataset[split]


def _check_hub_id(dataset_id: str, path: Path):
    """A ``dataset_id`` that is no folder must be a Hub id; say which it is not, before asking the Hub."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if path.exists():
        raise ValueError(f"dataset {dataset_id!r} is a file; give a folder (save_to_disk or data files) or a Hub id")
    try:
        validate_repo_id(dataset_id)
    except HFValidationError:
        raise ValueError(
            f"dataset {dataset_id!r}: no such folder ({path.resolve()} does not exist), and not a Hub dataset id "
            "(namespace/name)"
        ) from None
