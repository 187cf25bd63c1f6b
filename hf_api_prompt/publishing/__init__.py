"""Publishing masked benchmark variants: presets, variant names, cards, Hub pushes, lmms-eval tasks.

One call turns a benchmark into a masked variant that anyone can load by name and
evaluate with lmms-eval, with a card that says exactly how it was made:

    >>> from hf_api_prompt.publishing import get_benchmark
    >>> get_benchmark("mmvet").lmms_eval_task
    'mmvet'

Layers (each module imports only those above it in this list):

- ``benchmarks``: presets (``benchmarks.json``) and custom datasets.
- ``variants``: config names, tags, ``VariantRecord`` / ``api_variants.json``.
- ``retry``: retrying transient Hub errors.
- ``sources``: loading the source and pinning its revision.
- ``build``: masking a source into the benchmark's schema.
- ``card``: the dataset card, from ``cards/api_variants.md``.
- ``layout``: the repo layout in a local folder.
- ``hub``: fail-fast checks, retried pushes, tags, one-commit folder uploads.
- ``lmms_export``: lmms-eval task YAMLs derived from the benchmark's own task.
- ``api``: ``publish_variant``, the whole job.
"""

from .api import publish_remask, publish_sweep, publish_variant
from .benchmarks import Benchmark, available_benchmarks, custom_benchmark, get_benchmark
from .card import render_card
from .hub import HubPublisher, PublishError, upload_folder
from .lmms_export import export_lmms_eval
from .retry import RetryPolicy
from .variants import VariantIndex, VariantRecord, variant_name, variant_tag

__all__ = [
    "Benchmark",
    "HubPublisher",
    "PublishError",
    "RetryPolicy",
    "VariantIndex",
    "VariantRecord",
    "available_benchmarks",
    "custom_benchmark",
    "export_lmms_eval",
    "get_benchmark",
    "publish_remask",
    "publish_sweep",
    "publish_variant",
    "render_card",
    "upload_folder",
    "variant_name",
    "variant_tag",
]
