"""``ImagePrompter``: the method as a ``datasets.map`` function."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import device_prompt, encoding, masks, parallel, prompts
from .backends import get_backend
from .backends.base import Backend, pick_device
from .config import PrompterConfig
from .inputs import RowError, check_question, decode_image

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Rows:
    """A batch's rows, decoded: the images and questions of the good rows, and why the others are bad."""

    images: List[Any]
    formats: List[Optional[str]]  # each source's format (``Image.format``), for ``image_format="source"``
    questions: List[Optional[str]]
    status: List[str]
    undecodable: List[int]  # Image-feature values ({"bytes", "path"}) that cannot be decoded

    @property
    def good(self) -> List[int]:
        return [i for i, reason in enumerate(self.status) if reason == "ok"]


class _BatchFunction:
    """What the model stages share: a config, a backend loaded once per process, ``datasets.map`` plumbing.

    A subclass declares its columns (:meth:`output_features`) and fills them for the
    good rows (:meth:`_fill`); every declared column is filled on every row.
    """

    config: PrompterConfig
    #: Threads for the image work of a batch (:mod:`hf_api_prompt.parallel`); ``None``: the cores / processes.
    num_threads: Optional[int] = None
    #: Torch device of stage 3's resizing and blending (:mod:`hf_api_prompt.device_prompt`); ``"auto"``: the
    #: backend's; ``None``: the CPU, with Pillow and numpy.
    prompt_device: Optional[str] = None

    # Pickle (and so the datasets fingerprint) = the state's JSON; never the weights.
    def __getstate__(self) -> Dict[str, Any]:
        state = {"config": self.config.to_json()}
        if self.num_threads is not None:
            state["num_threads"] = self.num_threads
        if self.prompt_device is not None:
            state["prompt_device"] = self.prompt_device
        return state

    def __setstate__(self, state: Dict[str, Any]):
        self.config = PrompterConfig.from_json(state["config"])
        self.num_threads = state.get("num_threads")
        self.prompt_device = state.get("prompt_device")
        self._backend = None

    @property
    def threads(self) -> int:
        """The image pool's size in this process: ``num_threads``, or :func:`~hf_api_prompt.parallel.default_threads`."""
        return self.num_threads or parallel.default_threads()

    @property
    def grid_shape(self) -> Tuple[int, int]:
        """``(gh, gw)`` of the model's grid (known without loading the model)."""
        if getattr(self, "_grid_shape", None) is None:
            self._grid_shape = tuple(get_backend(self.config.backend).grid_shape(self.config))
        return self._grid_shape

    def backend(self, rank: Optional[int] = None) -> Backend:
        """The loaded backend of this process (loads it on first use)."""
        if getattr(self, "_backend", None) is None:
            _one_thread_in_forked_worker()
            device = pick_device(self.config.device, rank)
            self._backend = get_backend(self.config.backend)(self.config, device)
        self._backend.threads = self.threads
        return self._backend

    def output_features(self) -> Dict[str, Any]:
        raise NotImplementedError

    def features(self, input_features):
        """Input features plus :meth:`output_features`: pass them to ``map(features=...)``.

        Declared types keep the heatmap an ``Array2D`` (``datasets`` would otherwise
        infer nested lists) and give batches whose rows all failed the right types.
        """
        from datasets import Features

        return Features({**input_features, **self.output_features()})

    def map(self, dataset, *, batch_size: int = 8, **map_kwargs):
        """``dataset.map(self, batched=True, ...)`` with the right features and row numbers.

        Images are read undecoded (``Image(decode=False)``) and decoded here, so an
        undecodable file is reported as a row error (or passed through) instead of
        failing inside ``datasets``. The columns are checked first, before any model
        loads: the inputs must exist and no output may overwrite an existing column.

        Args:
            dataset: a ``datasets.Dataset``, or an ``IterableDataset`` (streaming) with
                known features; either has the image and question columns.
            batch_size: rows per model call.
            **map_kwargs: forwarded to ``map`` (``Dataset.map``: ``num_proc``, ``desc``, ...;
                ``IterableDataset.map`` takes neither). With ``num_proc``, each worker's image
                pool gets its share of the cores (unless ``num_threads`` is set).

        Returns:
            A ``Dataset``, or for an ``IterableDataset`` an ``IterableDataset`` that
            computes while it is iterated.
        """
        if isinstance(getattr(dataset, "column_names", None), dict):  # a DatasetDict: {split: columns}
            raise TypeError(f"map() takes one split, not a DatasetDict: pick one of {list(dataset.column_names)}, as dataset[split]")
        from datasets import Image, IterableDataset

        streaming = isinstance(dataset, IterableDataset)
        if dataset.features is None:
            raise ValueError(
                "the streaming dataset has unknown features, so the prompter cannot check its columns nor type "
                "its output: give them, e.g. dataset.cast(features) or load_dataset(..., features=features)"
            )
        self.check_columns(list(dataset.features))
        column = self.config.image_column
        decoded = isinstance(dataset.features[column], Image) and dataset.features[column].decode
        source = dataset.cast_column(column, Image(decode=False)) if decoded else dataset
        # The input's own image feature: the output decodes as the input did.
        features = self.features(dataset.features)
        if streaming:
            # A typed IterableDataset.map (features=...) yields the rows as the function left
            # them (the input images stay undecoded dicts), and a later cast_column does not
            # change that (datasets 5.2); mapped untyped and then cast, each row is encoded and
            # decoded by `features`. IterableDataset.map has no desc nor num_proc.
            return source.map(self, batched=True, batch_size=batch_size, with_indices=True, **map_kwargs).cast(features)
        map_kwargs.setdefault("desc", self._description())
        if map_kwargs.get("num_proc"):
            map_kwargs.setdefault("with_rank", True)
        with parallel.workers(map_kwargs.get("num_proc")):
            return source.map(
                self, batched=True, batch_size=batch_size, with_indices=True, features=features, **map_kwargs
            )

    def _description(self) -> str:
        return f"API masks ({self.config.backend})"

    def check_columns(self, columns: Sequence[str]):
        """Check a dataset's column names: the inputs exist, no output does (it would be overwritten).

        ``map`` and ``__call__`` run it first; call it to check a dataset before other work.

        Raises:
            KeyError: an input column is missing.
            ValueError: an output column already exists; the message names the config field to change.
        """
        config = self.config
        for field in ("image_column", "question_column"):
            name = getattr(config, field)
            if name not in columns:
                raise KeyError(f"{field}={name!r} is not a column of the dataset (columns: {list(columns)})")
        fields = {getattr(config, field): field for field in config.column_fields()}
        for name in self.output_features():
            if name in columns:
                where = f"set {fields[name]} to another name" if name in fields else f"the {self._kind()} writes it"
                raise ValueError(
                    f"the dataset already has a column {name!r}, which the {self._kind()} would overwrite ({where}, "
                    "or remove the column first)"
                )

    def _kind(self) -> str:
        return "prompter"

    def __call__(self, batch, *args) -> Dict[str, list]:
        indices, rank = _split_map_args(args)
        config = self.config
        self.check_columns(list(batch.keys()))
        raw_images = batch[config.image_column]
        size = len(raw_images)
        labels = list(indices) if indices is not None else [f"{i} of this batch" for i in range(size)]
        rows = _read_rows(raw_images, batch[config.question_column], labels, config, self.threads)
        columns: Dict[str, list] = {name: [None] * size for name in self.output_features()}
        if config.on_error == "passthrough":
            columns[config.status_column] = rows.status
        self._fill(rows, columns, rank)
        if rows.undecodable:
            # Left in place, these bytes would make datasets fail on decoding the row
            # (out[i], iteration, filter); the status column keeps the reason.
            columns[config.image_column] = [None if i in rows.undecodable else raw_images[i] for i in range(size)]
        return columns

    def _fill(self, rows: _Rows, columns: Dict[str, list], rank: Optional[int]):
        raise NotImplementedError

    def _check_extra(self, extra_columns: Dict[str, list]):
        declared = set(get_backend(self.config.backend).extra_features(self.config))
        if set(extra_columns) != declared:
            raise RuntimeError(
                f"backend {self.config.backend!r} returned columns {sorted(extra_columns)} but declares "
                f"{sorted(declared)} (Backend.extra_features)"
            )


class ImagePrompter(_BatchFunction):
    """Attention Prompting on Image for a ``datasets`` batch.

    Args:
        backend: ``"clip"``; see :func:`hf_api_prompt.backends.available_backends`.
        num_threads: threads for each batch's image work (decoding, preprocessing,
            resizing, blending, encoding); ``None``: the cores this process may use,
            shared with the other processes of the run (:mod:`hf_api_prompt.parallel`).
            It never changes an output, so it is not part of the config.
        prompt_device: a torch device (``"cuda"``, ``"cuda:1"``, ...) for stage 3's resizing and blending, or
            ``"auto"`` for the backend's device; ``None`` (default): the CPU, with Pillow and numpy. The images
            are the same bit for bit (:mod:`hf_api_prompt.device_prompt`), so it is not part of the config
            either; only ``prompt="mask"`` runs on a device.
        **params: any :class:`PrompterConfig` field. ``model``, ``pretrained`` and
            ``layer_index`` default to the paper's choice for the backend
            (``pretrained`` only when ``model`` is left at its default too).
            ``kernel_size="auto"`` scales the paper's 3 on a 24 x 24 grid to this
            backend's grid (:func:`hf_api_prompt.masks.auto_kernel_size`).
            ``image_format`` says how the masked images are stored (:mod:`hf_api_prompt.encoding`).

    Calling it with a batch (``prompter(batch)``, ``prompter(batch, rank)``,
    ``prompter(batch, indices)`` or ``prompter(batch, indices, rank)``) returns
    the new columns. The model loads on first call, once per process; the
    object pickles and hashes as its config, so ``datasets`` caching and
    ``num_proc`` work without shipping weights. The three stages of
    docs/method.md run in :meth:`prompt`.

    Example:
        >>> from datasets import Dataset
        >>> from PIL import Image
        >>> from hf_api_prompt.bundled import DEMO_MODEL
        >>> prompter = ImagePrompter("clip", model=DEMO_MODEL, layer_index=2)
        >>> ds = Dataset.from_dict({"image": [Image.new("RGB", (64, 48))], "question": ["Where is it?"]})
        >>> out = prompter.map(ds)
        >>> out.features["heatmap"], out[0]["masked_image"].size
        (Array2D(shape=(14, 14), dtype='float32'), (64, 48))
        >>> cropped = ImagePrompter("clip", model=DEMO_MODEL, layer_index=2, prompt="crop").map(ds)
        >>> left, top, right, bottom = cropped[0]["api_crop_box"]  # pixels of the source image
        >>> cropped[0]["masked_image"].size == (right - left, bottom - top)
        True
    """

    def __init__(self, backend: str = "clip", *, num_threads: Optional[int] = None, prompt_device: Optional[str] = None,
                 **params: Any):
        if num_threads is not None and (not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1):
            raise ValueError(f"num_threads must be an int >= 1 or None, got {num_threads!r}")
        backend_cls = get_backend(backend)
        defaults = dict(backend_cls.defaults)
        if "model" in params:  # the default weights tag belongs to the default model only
            defaults.pop("pretrained", None)
        settings = {"pretrained": None, **defaults, **params}
        if "library_version" in params or "weights_sha256" in params:
            raise TypeError("library_version and weights_sha256 are filled in, not passed")
        config = backend_cls.resolve_config(PrompterConfig(backend=backend, **settings))
        prompts.check_prompt(config.prompt)
        prompt_device = _check_prompt_device(prompt_device, config.prompt)
        if config.kernel_size == "auto":
            config = config.replace(kernel_size=masks.auto_kernel_size(backend_cls.grid_shape(config)))
        self.config, self.num_threads, self.prompt_device = config, num_threads, prompt_device
        self._backend: Optional[Backend] = None

    @classmethod
    def without_model(cls, config: PrompterConfig, grid_shape: Tuple[int, int]) -> "ImagePrompter":
        """A prompter for ``config`` as recorded (e.g. with a portable model name), for stages 2 and 3 only.

        Used to remask a maps dataset where the model's files are not at hand: the
        config is not resolved again, ``kernel_size="auto"`` is set from ``grid_shape``,
        and loading its backend fails with the model's own error.
        """
        prompter = cls.__new__(cls)
        prompts.check_prompt(config.prompt)
        if config.kernel_size == "auto":
            config = config.replace(kernel_size=masks.auto_kernel_size(grid_shape))
        prompter.config, prompter._backend, prompter._grid_shape = config, None, tuple(grid_shape)
        return prompter

    @classmethod
    def from_config(cls, config: PrompterConfig) -> "ImagePrompter":
        """Rebuild a prompter from a config (e.g. one read back from a dataset card)."""
        params = config.to_dict()
        for filled in ("backend", "library_version", "weights_sha256"):
            params.pop(filled)
        return cls(config.backend, **params)

    def __repr__(self) -> str:
        return f"ImagePrompter({self.config.to_json()})"

    def output_features(self) -> Dict[str, Any]:
        """The columns this prompter writes, in order, with their ``datasets`` feature types.

        The one declaration of the output: :meth:`features` declares these columns to
        ``datasets`` and ``__call__`` fills every one of them on every row (``None``
        where a row has no value). The backend adds its own columns through
        :meth:`~hf_api_prompt.backends.base.Backend.extra_features` (llava: the answer).

        Example:
            >>> from hf_api_prompt.bundled import DEMO_MODEL
            >>> list(ImagePrompter("clip", model=DEMO_MODEL, layer_index=2, on_error="passthrough").output_features())
            ['masked_image', 'heatmap', 'api_status']
        """
        return dict(_declared_outputs(self.config, self.grid_shape))

    def prompt(self, images: Sequence[Any], questions: Sequence[str], rank: Optional[int] = None,
               source_formats: Optional[Sequence[Optional[str]]] = None) -> "PromptedBatch":
        """The three stages for decoded images and questions: maps (model), recipe, prompt.

        With ``source_formats`` (each image's source format), the prompted images are also
        encoded for storing (``Prompted.stored``).
        """
        config = self.config
        raw = self.backend(rank).maps(images, questions, [config.layer_index])
        self._check_extra(raw.extra_columns)
        grid = grid_masks(config, raw.layers[config.layer_index])
        device = device_prompt.stage3_device(self.prompt_device, config.prompt, lambda: self.backend(rank).device)
        prompted = prompts.apply_prompt(config, images, grid, raw.boxes, threads=self.threads, source_formats=source_formats,
                                        device=device)
        return PromptedBatch(grid, prompted, raw.extra_columns)

    def _fill(self, rows: _Rows, columns: Dict[str, list], rank: Optional[int]):
        config = self.config
        good = rows.good
        prompted: Dict[int, prompts.Prompted] = {}
        if good:
            batch = self.prompt([rows.images[i] for i in good], [rows.questions[i] for i in good], rank,
                                source_formats=[rows.formats[i] for i in good])
            for slot, i in enumerate(good):
                prompted[i] = batch.prompted[slot]
                columns[config.heatmap_column][i] = batch.grid_masks[slot]
                if prompts.writes_box(config.prompt):
                    columns[prompts.CROP_BOX_COLUMN][i] = list(batch.prompted[slot].box)
                for name, values in batch.extra_columns.items():
                    columns[name][i] = values[slot]
        columns[config.masked_image_column] = stored_images(config, rows.images, rows.formats, prompted, self.threads)


@dataclasses.dataclass
class PromptedBatch:
    """:meth:`ImagePrompter.prompt` of a batch: grid masks ``[B, gh, gw]``, prompted images, backend columns."""

    grid_masks: np.ndarray
    prompted: List[prompts.Prompted]
    extra_columns: Dict[str, list]


def grid_masks(config: PrompterConfig, layer_maps: Dict[str, Any]) -> np.ndarray:
    """Stage 2: one layer's raw maps ``{name: [B, gh, gw]}`` (tensors or arrays) -> float32 grid masks.

    The backend's recipe (clip: the soft union; llava: the enhanced attention) with
    ``enhance_coe`` and ``kernel_size``.
    """
    import torch

    tensors = {name: torch.as_tensor(np.asarray(value, dtype=np.float32)) for name, value in layer_maps.items()}
    recipe = get_backend(config.backend).recipe
    return recipe(tensors, config.enhance_coe, config.kernel_size).cpu().numpy().astype(np.float32, copy=False)


def stored_images(config: PrompterConfig, images: Sequence[Any], formats: Sequence[Optional[str]],
                  prompted: Dict[int, prompts.Prompted], threads: int) -> list:
    """A batch's masked-image column: each prompted row's ``stored`` bytes, every other row's image
    (passed through unmasked; ``None`` stays ``None``) encoded in the same format, on ``threads`` threads."""
    def one(i):
        if i in prompted:
            return prompted[i].stored
        return None if images[i] is None else encoding.encode(images[i], config, formats[i])

    return parallel.thread_map(one, list(range(len(images))), threads)


def _check_prompt_device(device: Optional[str], prompt: str) -> Optional[str]:
    """``device`` as given, once it is ``None``, ``"auto"`` or a torch device's name, and ``prompt`` can use it."""
    if device_prompt.check_device(device) is None:
        return None
    if prompt != "mask":
        raise ValueError(f"prompt style {prompt!r} runs on the CPU only: prompt_device is for prompt='mask'")
    return device


def _read_one(pair) -> Tuple[Any, Optional[str], Optional[str], Optional[str]]:
    """``(image, format, question, problem)`` of one row; what could be read is kept beside the problem."""
    raw_image, raw_question = pair
    image = source_format = None
    try:
        image, source_format = decode_image(raw_image)
        return image, source_format, check_question(raw_question), None
    except ValueError as error:
        return image, source_format, None, str(error)


def _read_rows(raw_images: Sequence[Any], raw_questions: Sequence[Any], labels: Sequence[Any], config: PrompterConfig,
               threads: int = 1) -> _Rows:
    """Decode a batch's rows on ``threads`` threads; with ``on_error="raise"`` the first bad row (in order) raises."""
    size = len(raw_images)
    read = parallel.thread_map(_read_one, list(zip(raw_images, raw_questions)), threads)
    rows = _Rows(images=[r[0] for r in read], formats=[r[1] for r in read], questions=[r[2] for r in read],
                 status=["ok"] * size, undecodable=[])
    for i, (image, _, _, problem) in enumerate(read):
        if problem is None:
            continue
        if config.on_error == "raise":
            raise RowError(labels[i], problem)
        rows.status[i] = problem
        if image is None and isinstance(raw_images[i], dict):
            rows.undecodable.append(i)
        logger.warning("row %s passed through unmasked: %s", labels[i], problem)
    return rows


def _one_thread_in_forked_worker():
    """In a worker that ``datasets`` forked for ``num_proc``, use one intra-op torch thread.

    torch's CPU backend (GNU OpenMP) hangs in a forked child whose parent already
    ran parallel regions, e.g. after a single-process ``map``; torch's own
    DataLoader workers run one thread too. Only such a worker
    (:func:`~hf_api_prompt.parallel.forked_datasets_worker`) is changed; any other
    child keeps the thread count it inherited.
    """
    if not parallel.forked_datasets_worker():
        return
    import torch

    if torch.get_num_threads() != 1:
        logger.info("forked num_proc worker %d: torch intra-op threads %d -> 1 (GNU OpenMP hangs after fork)",
                    os.getpid(), torch.get_num_threads())
        torch.set_num_threads(1)


@functools.lru_cache(maxsize=64)
def _declared_outputs(config: PrompterConfig, grid_shape: Tuple[int, int]) -> Tuple[Tuple[str, Any], ...]:
    """:meth:`ImagePrompter.output_features` as pairs; cached because every batch reads it."""
    from datasets import Array2D, Image, Sequence as SequenceFeature, Value

    backend = get_backend(config.backend)
    columns = {
        config.masked_image_column: Image(),
        config.heatmap_column: Array2D(grid_shape, "float32"),
    }
    if prompts.writes_box(config.prompt):
        columns[prompts.CROP_BOX_COLUMN] = SequenceFeature(Value("int64"), length=4)
    columns.update(backend.extra_features(config))
    if config.on_error == "passthrough":
        columns[config.status_column] = Value("string")
    return tuple(columns.items())


def _split_map_args(args: Tuple[Any, ...]) -> Tuple[Optional[Sequence[int]], Optional[int]]:
    """Tell ``with_indices`` (a list) from ``with_rank`` (an int or None) arguments."""
    if len(args) == 2:
        return args[0], args[1]
    if len(args) == 1:
        return (args[0], None) if isinstance(args[0], (list, tuple, range, np.ndarray)) else (None, args[0])
    if args:
        raise TypeError(f"ImagePrompter takes (batch[, indices][, rank]), got {len(args) + 1} arguments")
    return None, None
