"""Turn a source split into a publishable variant that keeps the benchmark's schema.

The masked image goes in the column the benchmark's lmms-eval task reads (the
source's image column), the heatmap is an extra column, and the original image
is dropped unless asked for, so the benchmark's own task works unchanged except
for dataset path, config and revision.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from typing import Optional

import numpy as np

from .._version import __version__
from ..backends.base import portable_config
from ..prompter import ImagePrompter
from ..prompts import writes_box
from .benchmarks import Benchmark
from .sources import Source
from .variants import PREVIEW_DIR, VariantRecord, lmms_eval_task_name, maps_variant_name, variant_name

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class BuiltVariant:
    """A masked split ready to be written: data, record and example picture."""

    dataset: object
    record: VariantRecord
    preview: Optional[object] = None  # PIL image

    @property
    def config_name(self) -> str:
        return self.record.config_name


def original_image_column(image_column: str) -> str:
    return f"original_{image_column}"


def rows_to_mask(prompter: ImagePrompter, source: Source, limit: Optional[int] = None):
    """The source rows to mask (the first ``limit`` if given); ``original_<image>`` must be free."""
    config = prompter.config
    dataset = source.dataset
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    original = original_image_column(config.image_column)
    if original in dataset.column_names:
        raise ValueError(f"the source already has a column {original!r}, where keep_original_image would write")
    return dataset


def build_variant(
    prompter: ImagePrompter,
    source: Source,
    benchmark: Benchmark,
    mapped,
    *,
    limit: Optional[int] = None,
    keep_original_image: bool = False,
    preview_rows: int = 4,
) -> BuiltVariant:
    """Lay out the masked rows ``mapped`` in the benchmark's schema, with record and picture.

    Args:
        prompter: its ``image_column``/``question_column`` must be the benchmark's.
        source: from :func:`~hf_api_prompt.publishing.sources.load_source`.
        benchmark: supplies the split name, license, citation and lmms-eval task.
        mapped: :func:`rows_to_mask` of ``source`` after ``prompter`` ran over it.
        limit: the ``limit`` given to :func:`rows_to_mask` (recorded in the variant's source).
        keep_original_image: keep the unmasked image as ``original_<image column>``; always kept for a style
            that crops (``prompt="crop"``: the model is shown the original and the crop), with the crop's box
            (:data:`~hf_api_prompt.prompts.CROP_BOX_COLUMN`) among the extra columns.
        preview_rows: rows shown in the before/heatmap/after picture (0: none).
    """
    config = prompter.config
    keep_original_image = keep_original_image or writes_box(config.prompt)
    image, masked, heatmap = config.image_column, config.masked_image_column, config.heatmap_column
    outputs = prompter.output_features()
    order = [c for c in mapped.column_names if c not in outputs]  # the source's columns, in its order
    preview = _preview(mapped, config, preview_rows)

    if keep_original_image:
        mapped = mapped.rename_column(image, original_image_column(image))
        order.insert(order.index(image) + 1, original_image_column(image))
    else:
        mapped = mapped.remove_columns(image)
    mapped = mapped.rename_column(masked, image)
    extra = [c for c in mapped.column_names if c not in order]
    mapped = mapped.select_columns(order + extra)

    name = variant_name(config, first_rows=limit)
    record = _record(config, name, source, benchmark, limit, len(mapped), columns={
        "image": image,
        "heatmap": heatmap,
        "original_image": original_image_column(image) if keep_original_image else None,
        "status": config.status_column if config.on_error == "passthrough" else None,
    }, lmms_eval=(
        {"base_task": benchmark.lmms_eval_task, "task": lmms_eval_task_name(benchmark.lmms_eval_task, name)}
        if benchmark.lmms_eval_task
        else None
    ), preview=f"{PREVIEW_DIR}/{name}.png" if preview is not None else None)
    return BuiltVariant(dataset=mapped, record=record, preview=preview)


def build_maps_variant(maps_prompter, source: Source, benchmark: Benchmark, mapped, *, limit: Optional[int] = None) -> BuiltVariant:
    """Lay out a maps dataset (``mapped``: the source rows after ``maps_prompter`` ran) as a publishable variant.

    The source's columns stay as they are (the original image included), the maps
    columns follow; the record's ``prompter`` is the maps' base config and its
    ``maps`` the layers and columns. A variant of any of those layers is made from it
    with :func:`hf_api_prompt.stages.remask` (``hf-api-prompt remask``), without a model.
    """
    from ..stages import maps_columns

    config = maps_prompter.config
    name = maps_variant_name(maps_prompter, first_rows=limit)
    record = _record(config, name, source, benchmark, limit, len(mapped), columns={
        "image": config.image_column,
        "heatmap": None,
        "original_image": None,
        "status": config.status_column if config.on_error == "passthrough" else None,
    }, lmms_eval=None, preview=None)
    record.maps = {"layers": list(maps_prompter.layers), "columns": maps_columns(maps_prompter)}
    return BuiltVariant(dataset=mapped, record=record, preview=None)


def _record(config, name: str, source: Source, benchmark: Benchmark, limit: Optional[int], num_rows: int, *,
            columns: dict, lmms_eval: Optional[dict], preview: Optional[str]) -> VariantRecord:
    return VariantRecord(
        config_name=name,
        split=benchmark.split,
        num_rows=num_rows,
        created=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        library_version=__version__,
        prompter=portable_config(config).to_dict(),  # local weights by name and sha256, not by path
        source={
            "dataset": source.dataset_id,
            "revision": source.revision,
            "from_hub": source.from_hub,
            "split": benchmark.split,
            "rows": f"first {num_rows}" if limit is not None else "all",
            "benchmark": benchmark.name,
            "pretty_name": benchmark.pretty_name or source.dataset_id,
            "license": source.license or benchmark.license,
            "homepage": benchmark.homepage,
            "citation": benchmark.citation,
            "image_column": config.image_column,
            "question_column": config.question_column,
        },
        columns=columns,
        lmms_eval=lmms_eval,
        preview=preview,
    )


def _preview(result, config, rows: int):
    from ..preview import preview_grid

    if rows <= 0 or len(result) == 0:
        return None
    sample = result.select(range(min(rows, len(result))))
    # Reads the heatmap only: the rows left out (passed through) are never decoded.
    sample = sample.filter(lambda heatmap: heatmap is not None, input_columns=config.heatmap_column)
    if len(sample) == 0:
        return None
    return preview_grid(
        sample[config.image_column],
        [np.asarray(h) for h in sample[config.heatmap_column]],
        sample[config.masked_image_column],
        sample[config.question_column],
    )
