"""``ImagePrompter``: the method as a ``datasets.map`` function."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import masks
from .backends import get_backend
from .backends.base import Backend, pick_device
from .config import PrompterConfig
from .inputs import RowError, check_question, open_image

logger = logging.getLogger(__name__)


class ImagePrompter:
    """Attention Prompting on Image for a ``datasets`` batch.

    Args:
        backend: ``"clip"``; see :func:`hf_api_prompt.backends.available_backends`.
        **params: any :class:`PrompterConfig` field. ``model``, ``pretrained`` and
            ``layer_index`` default to the paper's choice for the backend
            (``pretrained`` only when ``model`` is left at its default too).

    Calling it with a batch (``prompter(batch)``, ``prompter(batch, rank)``,
    ``prompter(batch, indices)`` or ``prompter(batch, indices, rank)``) returns
    the new columns. The model loads on first call, once per process; the
    object pickles and hashes as its config, so ``datasets`` caching and
    ``num_proc`` work without shipping weights.

    Example:
        >>> from datasets import Dataset
        >>> from PIL import Image
        >>> from hf_api_prompt.bundled import DEMO_MODEL
        >>> prompter = ImagePrompter("clip", model=DEMO_MODEL, layer_index=2)
        >>> ds = Dataset.from_dict({"image": [Image.new("RGB", (64, 48))], "question": ["Where is it?"]})
        >>> out = prompter.map(ds)
        >>> out.features["heatmap"], out[0]["masked_image"].size
        (Array2D(shape=(14, 14), dtype='float32'), (64, 48))
    """

    def __init__(self, backend: str = "clip", **params: Any):
        backend_cls = get_backend(backend)
        defaults = dict(backend_cls.defaults)
        if "model" in params:  # the default weights tag belongs to the default model only
            defaults.pop("pretrained", None)
        settings = {"pretrained": None, **defaults, **params}
        if "library_version" in params or "weights_sha256" in params:
            raise TypeError("library_version and weights_sha256 are filled in, not passed")
        self.config = backend_cls.resolve_config(PrompterConfig(backend=backend, **settings))
        self._backend: Optional[Backend] = None

    @classmethod
    def from_config(cls, config: PrompterConfig) -> "ImagePrompter":
        """Rebuild a prompter from a config (e.g. one read back from a dataset card)."""
        params = config.to_dict()
        for filled in ("backend", "library_version", "weights_sha256"):
            params.pop(filled)
        return cls(config.backend, **params)

    # Pickle (and so the datasets fingerprint) = the config; never the weights.
    def __getstate__(self) -> Dict[str, Any]:
        return {"config": self.config.to_json()}

    def __setstate__(self, state: Dict[str, Any]):
        self.config = PrompterConfig.from_json(state["config"])
        self._backend = None

    def __repr__(self) -> str:
        return f"ImagePrompter({self.config.to_json()})"

    @property
    def grid_shape(self) -> Tuple[int, int]:
        return get_backend(self.config.backend).grid_shape(self.config)

    def backend(self, rank: Optional[int] = None) -> Backend:
        """The loaded backend of this process (loads it on first use)."""
        if self._backend is None:
            _one_thread_in_forked_worker()
            device = pick_device(self.config.device, rank)
            self._backend = get_backend(self.config.backend)(self.config, device)
        return self._backend

    def features(self, input_features):
        """Input features plus the columns this prompter writes, with their exact types.

        Pass them to ``map(features=...)`` so the heatmap is stored as ``Array2D``
        (``datasets`` would otherwise infer nested lists) and all-failed first batches
        still get the right types.
        """
        from datasets import Array2D, Features, Image, Value

        features = Features(dict(input_features))
        features[self.config.masked_image_column] = Image()
        features[self.config.heatmap_column] = Array2D(self.grid_shape, "float32")
        if self.config.answer_column is not None:
            features[self.config.answer_column] = Value("string")
        if self.config.on_error == "passthrough":
            features[self.config.status_column] = Value("string")
        return features

    def map(self, dataset, *, batch_size: int = 8, **map_kwargs):
        """``dataset.map(self, batched=True, ...)`` with the right features and row numbers.

        Images are read undecoded (``Image(decode=False)``) and decoded here, so an
        undecodable file is reported as a row error (or passed through) instead of
        failing inside ``datasets``.

        Args:
            dataset: a ``datasets.Dataset`` with the image and question columns.
            batch_size: rows per model call.
            **map_kwargs: forwarded to ``Dataset.map`` (``num_proc``, ``desc``, ...).
        """
        if isinstance(getattr(dataset, "column_names", None), dict):  # a DatasetDict: {split: columns}
            raise TypeError(f"map() takes one split, not a DatasetDict: pick one of {list(dataset.column_names)}, as dataset[split]")
        from datasets import Image

        column = self.config.image_column
        self._check_columns(dataset.column_names)
        decoded = isinstance(dataset.features[column], Image) and dataset.features[column].decode
        source = dataset.cast_column(column, Image(decode=False)) if decoded else dataset
        map_kwargs.setdefault("desc", f"API masks ({self.config.backend})")
        if map_kwargs.get("num_proc"):
            map_kwargs.setdefault("with_rank", True)
        result = source.map(
            self,
            batched=True,
            batch_size=batch_size,
            with_indices=True,
            features=self.features(source.features),
            **map_kwargs,
        )
        return result.cast_column(column, Image()) if decoded else result

    def _check_columns(self, columns: Sequence[str]):
        for role, name in (("image_column", self.config.image_column), ("question_column", self.config.question_column)):
            if name not in columns:
                raise KeyError(f"{role}={name!r} is not a column of the dataset (columns: {list(columns)})")

    def __call__(self, batch, *args) -> Dict[str, list]:
        indices, rank = _split_map_args(args)
        self._check_columns(list(batch.keys()))
        raw_images = batch[self.config.image_column]
        raw_questions = batch[self.config.question_column]
        size = len(raw_images)
        labels = list(indices) if indices is not None else [f"{i} of this batch" for i in range(size)]

        images: List[Any] = [None] * size
        questions: List[Optional[str]] = [None] * size
        status = ["ok"] * size
        for i in range(size):
            try:
                images[i] = open_image(raw_images[i])
                questions[i] = check_question(raw_questions[i])
            except ValueError as error:
                if self.config.on_error == "raise":
                    raise RowError(labels[i], str(error)) from None
                status[i] = str(error)
                logger.warning("row %s passed through unmasked: %s", labels[i], error)

        good = [i for i in range(size) if status[i] == "ok"]
        masked: List[Any] = [images[i] for i in range(size)]
        heatmaps: List[Optional[np.ndarray]] = [None] * size
        extra: Dict[str, list] = {}
        if good:
            output = self.backend(rank)([images[i] for i in good], [questions[i] for i in good])
            boxes = output.boxes if self.config.geometry == "aligned" else [None] * len(good)
            blended = masks.masked_images(
                [images[i] for i in good], output.masks, boxes, self.config.interpolation, self.config.grayscale
            )
            for slot, i in enumerate(good):
                masked[i] = blended[slot]
                heatmaps[i] = output.masks[slot]
            for name, values in output.extra_columns.items():
                extra[name] = [None] * size
                for slot, i in enumerate(good):
                    extra[name][i] = values[slot]

        columns = {self.config.masked_image_column: masked, self.config.heatmap_column: heatmaps, **extra}
        if self.config.on_error == "passthrough":
            columns[self.config.status_column] = status
        return columns


_FORKED = False


def _mark_forked():
    global _FORKED
    _FORKED = True


os.register_at_fork(after_in_child=_mark_forked)


def _one_thread_in_forked_worker():
    """In a forked process (``datasets``' ``num_proc`` workers), use one intra-op torch thread.

    torch's CPU backend (GNU OpenMP) hangs in a forked child whose parent already
    ran parallel regions, e.g. after a single-process ``map``; torch's own
    DataLoader workers do the same. Spawned processes are left alone.
    """
    if _FORKED:
        import torch

        torch.set_num_threads(1)


def _split_map_args(args: Tuple[Any, ...]) -> Tuple[Optional[Sequence[int]], Optional[int]]:
    """Tell ``with_indices`` (a list) from ``with_rank`` (an int or None) arguments."""
    if len(args) == 2:
        return args[0], args[1]
    if len(args) == 1:
        return (args[0], None) if isinstance(args[0], (list, tuple, range, np.ndarray)) else (None, args[0])
    if args:
        raise TypeError(f"ImagePrompter takes (batch[, indices][, rank]), got {len(args) + 1} arguments")
    return None, None
