"""Dataset cards for repos of masked variants, rendered from ``cards/api_variants.md``.

The card is made with ``huggingface_hub``'s ``DatasetCard.from_template`` and
``DatasetCardData``: the YAML header keeps the ``configs`` and ``dataset_info``
that ``datasets`` writes and adds license, task categories, tags and source
datasets; the body's variant table is rendered from ``api_variants.json``, so a
second variant updates the table instead of replacing it.
"""

from __future__ import annotations

import fnmatch
import logging
import sys
from pathlib import Path
from typing import Iterable, List, Optional

from .._version import __version__
from ..config import PROMPT_PARAMETERS
from ..encoding import describe as describe_format
from .lmms_export import judge_note
from .variants import VARIANTS_FILE, VariantIndex, VariantRecord, random_weights

logger = logging.getLogger(__name__)

TEMPLATE_NAME = "api_variants.md"
TASK_CATEGORIES = ["visual-question-answering"]
BASE_TAGS = ["attention-prompting", "visual-prompting", "masked-images", "hf-api-prompt"]
API_CITATION = """@inproceedings{yu2024api,
  title     = {API: Attention Prompting on Image for Large Vision-Language Models},
  author    = {Yu, Runpeng and Yu, Weihao and Wang, Xinchao},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024}
}"""


#: Written into every card (an HTML comment, invisible on the Hub): how a folder's README is known to be ours.
CARD_MARKER = "<!-- hf_api_prompt: this card is rendered from api_variants.json -->"


def is_our_card(text: str) -> bool:
    """Whether a README's text is a card this library rendered (it carries :data:`CARD_MARKER`)."""
    return CARD_MARKER in text


def default_template_path() -> Path:
    """``cards/api_variants.md`` of a checkout (or editable install), else the copy a wheel installs under ``share/``."""
    candidates = [
        Path(__file__).resolve().parents[2] / "cards" / TEMPLATE_NAME,
        Path(sys.prefix) / "share" / "hf_api_prompt" / "cards" / TEMPLATE_NAME,
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"dataset card template {TEMPLATE_NAME} not found (looked in {[str(p) for p in candidates]})")


def _source_url(dataset_id: Optional[str], is_hub_source: bool) -> Optional[str]:
    return f"https://huggingface.co/datasets/{dataset_id}" if dataset_id and is_hub_source else None


def _weights(config) -> str:
    if config.weights_sha256:
        return f"sha256 `{config.weights_sha256[:12]}`"
    if random_weights(config):
        return "random"
    return f"`{config.pretrained or config.model}`"


def _row(record: VariantRecord) -> dict:
    from ..backends.base import get_backend, portable_config

    prompter, source = record.prompter, record.source
    config = portable_config(record.config)  # records of older versions may hold absolute paths
    backend = get_backend(config.backend)
    other = []
    for key in (*(f for f in backend.option_fields if f not in backend.column_option_fields), "dtype"):
        if prompter.get(key) is not None:
            other.append(f"{key}={prompter[key]}")
    if prompter.get("on_error") != "raise":
        other.append(f"on_error={prompter.get('on_error')}")
    if config.prompt != "mask":
        other.append(f"prompt={config.prompt}")
        other += [f"{field}={getattr(config, field)!r}" for field in PROMPT_PARAMETERS.get(config.prompt, {})]
    row = {
        "name": record.config_name,
        "tag": record.tag,
        "backend": prompter.get("backend"),
        "model": config.model,
        "weights": _weights(config),
        "layer_index": prompter.get("layer_index"),
        "enhance_coe": repr(config.enhance_coe),  # exact: 5.000001 is not 5
        "kernel_size": prompter.get("kernel_size"),
        "interpolation": prompter.get("interpolation"),
        "grayscale": prompter.get("grayscale"),
        "geometry": prompter.get("geometry"),
        "images": describe_format(config),
        "other": ", ".join(other) or "-",
        "split": record.split,
        "num_rows": record.num_rows,
        "library_version": record.library_version,
        "created": record.created[:10],
        "source_id": source.get("dataset"),
        "source_url": _source_url(source.get("dataset"), source.get("from_hub", False)),
        "source_split": source.get("split"),
        "source_revision": source.get("revision"),
        "license": source.get("license") or "other",
        "preview": record.preview,
        "lmms_task": (record.lmms_eval or {}).get("task"),
        "judge_note": judge_note((record.lmms_eval or {}).get("base_task")),
    }
    if record.maps:  # a maps dataset: its layers; the recipe and prompt are chosen when remasking
        row.update(layer_index=", ".join(map(str, record.maps["layers"])), enhance_coe="open", kernel_size="open",
                   interpolation="open", grayscale="open", geometry="open", images="open", other=", ".join(["raw maps"] + other))
    return row


def _sources(records: Iterable[VariantRecord]) -> List[dict]:
    seen = {}
    for record in records:
        source = record.source
        key = source.get("dataset")
        if key in seen:
            continue
        seen[key] = {
            "id": key,
            "pretty_name": source.get("pretty_name") or key,
            "url": _source_url(key, source.get("from_hub", False)) or source.get("homepage") or "#source",
            "citation": source.get("citation"),
        }
    return list(seen.values())


def card_data_for(index: VariantIndex, existing=None):
    """``DatasetCardData`` for the repo: the existing header (``configs``, ``dataset_info``) plus our metadata.

    Args:
        index: all variants of the repo.
        existing: the current ``DatasetCardData`` (e.g. what ``push_to_hub`` wrote), or ``None``.
    """
    from huggingface_hub import DatasetCardData

    data = existing.to_dict() if existing is not None else {}
    records = [index[name] for name in index.names()]
    licenses = sorted({r.source.get("license") or "other" for r in records})
    sources = sorted({r.source["dataset"] for r in records if r.source.get("from_hub") and r.source.get("dataset")})
    benchmarks = sorted({r.source["benchmark"] for r in records if r.source.get("benchmark") not in (None, "custom")})
    pretty = sorted({r.source.get("pretty_name") for r in records if r.source.get("pretty_name")})
    data.update(
        license=licenses[0] if len(licenses) == 1 else "other",
        task_categories=TASK_CATEGORIES,
        tags=sorted(set(data.get("tags") or []) | set(BASE_TAGS) | set(benchmarks)),
        pretty_name=(" / ".join(pretty) + " (API-masked)") if pretty else "API-masked images",
    )
    if sources:
        data["source_datasets"] = sources
    # Our metadata and the configs first, the long per-config dataset_info last.
    dataset_info = data.pop("dataset_info", None)
    ordered = {**data, "configs": data.pop("configs", None), "tags": data.pop("tags")}
    if dataset_info is not None:
        ordered["dataset_info"] = dataset_info
    return DatasetCardData(**{k: v for k, v in ordered.items() if v is not None})


def render_card(
    index: VariantIndex,
    *,
    load_path: str,
    is_hub: bool,
    existing_card=None,
    template_path: Optional[Path] = None,
):
    """Render the dataset card of a repo or folder holding the variants of ``index``.

    Args:
        index: all variants (``api_variants.json``).
        load_path: what ``load_dataset`` takes: the repo id, or the folder.
        is_hub: whether ``load_path`` is a Hub repo (then the commands pin tags).
        existing_card: the current ``DatasetCard`` (its ``configs``/``dataset_info`` are kept).
        template_path: Jinja template; defaults to ``cards/api_variants.md``.

    Returns:
        ``huggingface_hub.DatasetCard``.
    """
    from huggingface_hub import DatasetCard

    if len(index) == 0:
        raise ValueError("no variants to describe")
    records = [index[name] for name in index.names()]
    rows = [_row(r) for r in records]
    card_data = card_data_for(index, existing_card.data if existing_card is not None else None)
    columns = [r.columns for r in records]
    card = DatasetCard.from_template(
        card_data,
        template_path=str(template_path or default_template_path()),
        title=card_data.pretty_name,
        sources=_sources(records),
        variants=rows,
        variants_file=VARIANTS_FILE,
        load_path=load_path,
        is_hub=is_hub,
        any_lmms=any(r["lmms_task"] for r in rows),
        image_columns=sorted({c["image"] for c in columns}),
        heatmap_columns=sorted({c["heatmap"] for c in columns if c.get("heatmap")}),
        any_masked=any(not r.maps for r in records),
        maps_variants=[r.config_name for r in records if r.maps],
        original_columns=sorted({c["original_image"] for c in columns if c.get("original_image")}),
        any_original=any(c.get("original_image") for c in columns),
        api_citation=API_CITATION,
        library_version=__version__,
        card_marker=CARD_MARKER,
    )
    if not is_our_card(card.text):
        raise ValueError(f"the card template {template_path or default_template_path()} does not write {{{{ card_marker }}}}")
    return card


def check_card(card, index: VariantIndex, files: Iterable[str]) -> List[str]:
    """Problems that would make the card wrong for the repo's files (empty list: none).

    Checks that the header parses into ``configs`` with one entry per variant whose
    ``data_files`` patterns match files in ``files``, that a license and task
    categories are set, and that the body lists every variant.
    """
    from huggingface_hub import DatasetCard

    problems = []
    reparsed = DatasetCard(str(card))
    data = reparsed.data.to_dict()
    configs = {c.get("config_name"): c for c in data.get("configs") or []}
    files = list(files)
    for name in index.names():
        config = configs.get(name)
        if config is None:
            problems.append(f"variant {name!r} has no entry in the card's configs")
            continue
        for data_file in config.get("data_files") or []:
            patterns = data_file["path"] if isinstance(data_file["path"], list) else [data_file["path"]]
            for pattern in patterns:
                if not any(fnmatch.fnmatch(f, pattern) for f in files):
                    problems.append(f"variant {name!r}: data_files pattern {pattern!r} matches no file")
        if f"`{name}`" not in reparsed.text:
            problems.append(f"variant {name!r} is missing from the card's table")
        preview = index[name].preview
        if preview and preview not in files:
            problems.append(f"variant {name!r}: preview {preview!r} is not in the repo")
    for key in ("license", "task_categories"):
        if not data.get(key):
            problems.append(f"card header has no {key}")
    return problems
