"""Benchmark presets: where a benchmark lives and which columns its lmms-eval task reads.

The presets are data (``benchmarks.json`` beside this file), not code: each names
the Hub dataset, split, image and question columns, license, citation, the
lmms-eval base task, as lmms-eval 0.7.3's task YAMLs read them, and whether that
task's metric needs an LLM judge. Any other dataset works by naming its columns
(:func:`custom_benchmark`).

Example:
    >>> get_benchmark("mmvet").dataset_id, get_benchmark("mmvet").lmms_eval_task
    ('lmms-lab-encoder/MMVet', 'mmvet')
    >>> "textvqa" in available_benchmarks()
    True
    >>> task_judge("mmvet"), task_judge("mme")
    ('gpt', None)
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

PRESETS_FILE = Path(__file__).resolve().parent / "benchmarks.json"


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A dataset to mask and how to read it.

    Args:
        name: preset name (``"mmvet"``) or ``"custom"``.
        dataset_id: Hub dataset id, ``save_to_disk`` folder or data folder.
        split: split to read (and the split name the variant is published under).
        image_column, question_column: the columns the benchmark's task reads.
        license: license id of the source (the variant inherits it).
        lmms_eval_task: name of lmms-eval's task for the source, if it has one.
        judge: the LLM judge that task's metric calls, or ``None`` for a local metric.
            ``"gpt"``: lmms-eval's OpenAI judge (``OPENAI_API_KEY``, network; MM-Vet, LLaVA-Bench).
        pretty_name, homepage, citation, note: for the dataset card.
    """

    name: str
    dataset_id: Optional[str]
    split: str
    image_column: str = "image"
    question_column: str = "question"
    license: str = "other"
    lmms_eval_task: Optional[str] = None
    judge: Optional[str] = None
    pretty_name: str = ""
    homepage: Optional[str] = None
    citation: Optional[str] = None
    note: Optional[str] = None
    aliases: Tuple[str, ...] = ()

    def replace(self, **changes) -> "Benchmark":
        """A copy with the given fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["aliases"] = list(self.aliases)
        return data


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


@lru_cache(maxsize=1)
def _presets() -> Dict[str, Benchmark]:
    raw = json.loads(PRESETS_FILE.read_text(encoding="utf-8"))
    return {
        name: Benchmark(name=name, **{**fields, "aliases": tuple(fields.get("aliases", ()))})
        for name, fields in raw.items()
        if not name.startswith("_")
    }


def available_benchmarks() -> List[str]:
    """Names of the bundled presets."""
    return sorted(_presets())


def get_benchmark(name: str) -> Benchmark:
    """The preset called ``name`` (case-insensitive; ``_`` and ``-`` are the same; aliases work)."""
    key = _normalise(name)
    for preset in _presets().values():
        if key == preset.name or key in (_normalise(a) for a in preset.aliases):
            return preset
    raise ValueError(f"unknown benchmark {name!r}; presets: {available_benchmarks()} (or pass --dataset and its columns)")


def task_judge(lmms_eval_task: Optional[str]) -> Optional[str]:
    """The judge of the preset whose lmms-eval task is ``lmms_eval_task`` (``None``: local metric or not a preset)."""
    for preset in _presets().values():
        if lmms_eval_task is not None and preset.lmms_eval_task == lmms_eval_task:
            return preset.judge
    return None


def custom_benchmark(
    dataset_id: Optional[str],
    split: Optional[str] = None,
    image_column: Optional[str] = None,
    question_column: Optional[str] = None,
    **fields,
) -> Benchmark:
    """A benchmark that is not a preset: name the dataset and its columns.

    >>> custom_benchmark("me/my-vqa", "test", "picture", "prompt").image_column
    'picture'
    """
    return Benchmark(
        name="custom",
        dataset_id=dataset_id,
        split=split or "train",
        image_column=image_column or "image",
        question_column=question_column or "question",
        **fields,
    )
