"""The ``doc_to_visual`` of lmms-eval tasks exported for a maps dataset: the image is masked when lmms-eval reads the doc.

A maps dataset keeps the original image and the raw maps of some layers
(:mod:`hf_api_prompt.stages`), so the mask recipe (layer, coefficient, kernel,
interpolation, grayscale, geometry) can be chosen at evaluation time, without the
model. ``export-lmms-eval`` writes, next to each such task's YAML, a small module
that binds one recipe::

    doc_to_visual = MaskedDocToVisual("lmms_eval.tasks.mme.utils.mme_doc_to_visual", '{"backend": "clip", ...}')

and the YAML points its ``doc_to_visual`` at it (``!function {task}.doc_to_visual``,
which lmms-eval imports from the YAML's folder). For every doc, the base task's own
``doc_to_visual`` runs on a copy of the doc whose image column holds the masked
image, so whatever the task does with the image (RGB conversion, several image
columns) stays the task's. lmms-eval is not imported here: the base function is
imported by name, as lmms-eval's ``!function`` does for a dotted name.

A recipe with ``prompt="crop"`` shows the model two images, the original and then the
crop (ViCrop): the base function's visuals of the doc as it is, followed by those of
the doc with the crop. A materialized crop variant keeps its original image
(``original_<image column>``), and its task's ``doc_to_visual`` is
:class:`OriginalAndCropDocToVisual`, which feeds the same two images.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from .config import PrompterConfig
from .prompts import writes_box
from .stages import masked_image_from_row


def import_function(reference: str) -> Callable:
    """The function a dotted ``module.name`` names (``llava-in-the-wild``: module names need not be identifiers).

    >>> import_function("json.dumps")([1])
    '[1]'
    """
    module, _, name = reference.rpartition(".")
    return getattr(importlib.import_module(module), name)


class MaskedDocToVisual:
    """A task's ``doc_to_visual`` fed the doc with ``config.image_column`` replaced by its masked image.

    Args:
        base: dotted name of the base task's ``doc_to_visual``.
        config: JSON of the single-layer :class:`~hf_api_prompt.PrompterConfig` whose recipe masks the image.

    lmms-eval passes ``lmms_eval_specific_kwargs`` to a ``doc_to_visual`` of two
    parameters (lmms-eval 0.7.3, ``ConfigurableTask.doc_to_visual``), so this object
    shows the base function's signature and hands it whatever lmms-eval passes. Its
    ``repr`` names the base function and the recipe: lmms-eval writes it into the
    results file's ``configs`` (``TaskConfig.to_dict`` prints callables with ``str``).
    """

    def __init__(self, base: str, config: str):
        self.base_name = base
        self.base = import_function(base)
        self.config = PrompterConfig.from_json(config)
        self.__signature__ = inspect.signature(self.base)

    def __call__(self, doc: dict, *args: Any):
        masked = masked_image_from_row(doc, self.config)
        visuals = self.base({**doc, self.config.image_column: masked}, *args)
        if writes_box(self.config.prompt):  # the original first, then the crop
            return list(self.base(doc, *args)) + list(visuals)
        return visuals

    def __repr__(self) -> str:
        return f"hf_api_prompt.lmms_visual.MaskedDocToVisual({self.base_name!r}, {self.config.to_json()!r})"


class OriginalAndCropDocToVisual:
    """A materialized crop variant's ``doc_to_visual``: the base task's visuals of the original image, then of the crop.

    Args:
        base: dotted name of the base task's ``doc_to_visual``.
        image_column: the column the base task reads, which holds the crop in the variant.
        original_column: the column holding the original image (``original_<image column>``).
    """

    def __init__(self, base: str, image_column: str, original_column: str):
        self.base_name, self.image_column, self.original_column = base, image_column, original_column
        self.base = import_function(base)
        self.__signature__ = inspect.signature(self.base)

    def __call__(self, doc: dict, *args: Any):
        original = self.base({**doc, self.image_column: doc[self.original_column]}, *args)
        return list(original) + list(self.base(doc, *args))

    def __repr__(self) -> str:
        return (f"hf_api_prompt.lmms_visual.OriginalAndCropDocToVisual({self.base_name!r}, {self.image_column!r}, "
                f"{self.original_column!r})")
