"""Compute once, sweep everything: the maps stage as a dataset, remasking, parameter products.

docs/method.md, "Three stages": only stage 1 (maps) touches a model, and one
forward pass yields the raw maps of every requested layer. A *maps dataset* is
the source split plus those maps as typed columns (and the backend's own
columns, e.g. llava's answer); any variant of its layers is then made from it
without a model by :func:`remask`, and equals the same parameter set run
directly with :class:`~hf_api_prompt.ImagePrompter`.

Example (the bundled model, two layers, 2 x 2 x 2 = 8 variants from one pass):
    >>> from datasets import Dataset
    >>> from PIL import Image
    >>> from hf_api_prompt.bundled import DEMO_MODEL
    >>> ds = Dataset.from_dict({"image": [Image.new("RGB", (64, 48), "red")], "question": ["Where is it?"]})
    >>> prompters = sweep("clip", model=DEMO_MODEL, layer_index=[1, 2], enhance_coe=[1, 5], grayscale=[0, 200])
    >>> [maps_prompter] = MapsPrompter.for_prompters(prompters)
    >>> maps = maps_prompter.map(ds)              # the model runs here, once
    >>> maps_prompter.layers, [c for c in maps.column_names if c.startswith("api_")][:3]
    ((1, 2), ['api_maps_config', 'api_grid_box', 'api_source_format'])
    >>> variant = remask(maps, prompters[0])       # no model
    >>> variant.column_names
    ['image', 'question', 'masked_image', 'heatmap']
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import device_prompt, encoding, parallel, prompts
from .backends import get_backend
from .config import PrompterConfig
from .inputs import decode_image
from .prompter import ImagePrompter, _BatchFunction, _Rows, grid_masks, stored_images

#: The JSON of the maps' base config and layers, the same on every row (so any copy of a row can be remasked).
MAPS_CONFIG_COLUMN = "api_maps_config"
#: Per row, the grid box of the image (``geometry="aligned"``), or ``None`` when the backend has none.
BOX_COLUMN = "api_grid_box"
#: Per row, the source image's format as decoded for the model (``"JPEG"``, ``"PNG"``, ...; ``None`` for an image
#: made in memory), for ``image_format="source"``: a reader that decodes the image column may lose it (``datasets``
#: drops it from a JPEG it turns upright by its EXIF orientation). Maps made before this column read it from the bytes.
FORMAT_COLUMN = "api_source_format"
#: Config fields a maps dataset leaves open: which of its layers, the recipe, the prompt and the output columns.
OPEN_FIELDS = ("layer_index", "enhance_coe", "kernel_size", "interpolation", "grayscale", "geometry", "prompt",
               "blur_radius", "crop_mass", "crop_padding", "crop_min_size", "image_format", "jpeg_quality",
               "masked_image_column", "heatmap_column")
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PrompterConfig)}


def maps_column(name: str, layer: int) -> str:
    """The column of raw map ``name`` of layer ``layer``: ``api_{name}_l{layer}``.

    >>> maps_column("attention", 22)
    'api_attention_l22'
    """
    return f"api_{name}_l{layer}"


def maps_base(config: PrompterConfig) -> PrompterConfig:
    """``config`` with the fields a maps dataset leaves open at their defaults (``layer_index`` 0).

    Two configs with the same base are served by one model pass.
    """
    return config.replace(layer_index=0, **{f: _FIELD_DEFAULTS[f] for f in OPEN_FIELDS if f != "layer_index"})


def sweep(backend: str = "clip", **params: Any) -> List[ImagePrompter]:
    """The Cartesian product of parameter values, one validated :class:`ImagePrompter` per combination.

    A list or tuple value is several values; any other value is one. The order is
    the product's in the order the parameters are given; combinations that resolve
    to the same config (e.g. ``kernel_size="auto"`` and the size it stands for) are kept once.

    Raises:
        ValueError: a parameter with no value, or an invalid combination (before any model loads).

    >>> from hf_api_prompt.bundled import DEMO_MODEL
    >>> [(p.config.layer_index, p.config.grayscale) for p in sweep("clip", model=DEMO_MODEL, layer_index=[1, 2], grayscale=[0, 9])]
    [(1, 0), (1, 9), (2, 0), (2, 9)]
    """
    prompters: Dict[PrompterConfig, ImagePrompter] = {}
    for combination in combinations(params):
        prompter = ImagePrompter(backend, **combination)
        prompters.setdefault(prompter.config, prompter)
    return list(prompters.values())


def combinations(params: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The Cartesian product of ``params``: a list or tuple value is several values, any other value one.

    >>> combinations({"enhance_coe": [1, 5], "grayscale": 0})
    [{'enhance_coe': 1, 'grayscale': 0}, {'enhance_coe': 5, 'grayscale': 0}]
    """
    choices = [list(value) if isinstance(value, (list, tuple)) else [value] for value in params.values()]
    for name, values in zip(params, choices):
        if not values:
            raise ValueError(f"{name} has no value to sweep over")
    return [dict(zip(params, combination)) for combination in itertools.product(*choices)]


class MapsPrompter(_BatchFunction):
    """Stage 1 as a ``datasets.map`` function: the raw maps of several layers from one model pass.

    Adds :data:`MAPS_CONFIG_COLUMN`, :data:`BOX_COLUMN`, :data:`FORMAT_COLUMN`, one ``Array2D`` column per
    raw map and layer (:func:`maps_column`), the backend's own columns and, with
    ``on_error="passthrough"``, the status column. Bad rows follow the prompter's
    policy; their maps are ``None``.

    Args:
        config: any config of the group (its open fields are ignored: :func:`maps_base`).
        layers: the layers to read, each valid for the model.
    """

    def __init__(self, config: PrompterConfig, layers: Sequence[int], grid_shape: Optional[Tuple[int, int]] = None):
        self.layers = tuple(sorted(set(layers)))
        if not self.layers:
            raise ValueError("a maps run needs at least one layer")
        base = maps_base(config)
        # The deepest layer is the one the backend is validated and built for; the others lie below it.
        self.config = base.replace(layer_index=self.layers[-1])
        self._backend = None
        self._grid_shape = None if grid_shape is None else tuple(grid_shape)

    def prompter(self, **params: Any) -> ImagePrompter:
        """The prompter of one variant these maps serve: the base config with ``params`` (open fields only).

        Built without the model (:meth:`ImagePrompter.without_model`), so it can remask
        maps whose model is not at hand.

        Raises:
            ValueError: a field the maps fix, a layer they lack, or an invalid value.
        """
        fixed = sorted(set(params) - set(OPEN_FIELDS))
        if fixed:
            raise ValueError(f"{fixed} are fixed by the maps (only {list(OPEN_FIELDS)} can be chosen when remasking)")
        prompter = ImagePrompter.without_model(self.config.replace(**params), self.grid_shape)
        check_remask(self, prompter)
        return prompter

    @classmethod
    def for_prompters(cls, prompters: Sequence[ImagePrompter]) -> List["MapsPrompter"]:
        """One maps run per group of prompters that share a model pass (same :func:`maps_base`), in first-seen order."""
        groups: Dict[PrompterConfig, List[int]] = {}
        for prompter in prompters:
            groups.setdefault(maps_base(prompter.config), []).append(prompter.config.layer_index)
        return [cls(base, layers) for base, layers in groups.items()]

    def __getstate__(self) -> Dict[str, Any]:
        return {"config": self.config.to_json(), "layers": list(self.layers)}

    def __setstate__(self, state: Dict[str, Any]):
        super().__setstate__(state)
        self.layers = tuple(state["layers"])

    def __repr__(self) -> str:
        return f"MapsPrompter({self.config.to_json()}, layers={list(self.layers)})"

    def _description(self) -> str:
        return f"API maps ({self.config.backend}, layers {', '.join(map(str, self.layers))})"

    def _kind(self) -> str:
        return "maps run"

    def serves(self, config: PrompterConfig) -> Optional[str]:
        """Why ``config`` cannot be made from these maps, or ``None`` when it can."""
        from .backends.base import portable_config

        # Portable: maps read back from a dataset name local weights by folder name and sha256.
        mine, theirs = (maps_base(portable_config(c)).to_dict() for c in (self.config, config))
        differ = sorted(k for k, v in theirs.items() if mine[k] != v and k != "library_version")
        if differ:
            return f"the maps were made with other settings ({', '.join(differ)} differ)"
        if config.layer_index not in self.layers:
            return f"layer_index {config.layer_index} is not among the maps' layers {list(self.layers)}"
        return None

    def output_features(self) -> Dict[str, Any]:
        from datasets import Array2D, Sequence as SequenceFeature, Value

        backend = get_backend(self.config.backend)
        grid = self.grid_shape
        columns: Dict[str, Any] = {MAPS_CONFIG_COLUMN: Value("string"), BOX_COLUMN: SequenceFeature(Value("float64"), length=4),
                                   FORMAT_COLUMN: Value("string")}
        for layer in self.layers:
            for name in backend.map_names:
                columns[maps_column(name, layer)] = Array2D(grid, "float32")
        columns.update(backend.extra_features(self.config))
        if self.config.on_error == "passthrough":
            columns[self.config.status_column] = Value("string")
        return columns

    def to_json(self) -> str:
        """The value of :data:`MAPS_CONFIG_COLUMN`: sorted JSON of the (portable) base config and the layers."""
        from .backends.base import portable_config

        # Portable (local weights by name and sha256): the column is published with the maps.
        config = portable_config(self.config).to_dict()
        return json.dumps({"config": config, "layers": list(self.layers)}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "MapsPrompter":
        data = json.loads(text)
        return cls(PrompterConfig.from_dict(data["config"]), data["layers"])

    def _fill(self, rows: _Rows, columns: Dict[str, list], rank: Optional[int]):
        columns[MAPS_CONFIG_COLUMN] = [self.to_json()] * len(rows.status)
        columns[FORMAT_COLUMN] = list(rows.formats)
        good = rows.good
        if not good:
            return
        raw = self.backend(rank).maps([rows.images[i] for i in good], [rows.questions[i] for i in good], self.layers)
        self._check_extra(raw.extra_columns)
        for slot, i in enumerate(good):
            box = raw.boxes[slot]
            columns[BOX_COLUMN][i] = None if box is None else [float(x) for x in box]
            for layer, maps in raw.layers.items():
                for name, value in maps.items():
                    columns[maps_column(name, layer)][i] = value[slot].numpy()
            for name, values in raw.extra_columns.items():
                columns[name][i] = values[slot]


def maps_prompter_of(dataset) -> MapsPrompter:
    """The :class:`MapsPrompter` that made a maps dataset (its :data:`MAPS_CONFIG_COLUMN`; the grid from its features)."""
    columns = dataset.column_names
    if isinstance(columns, dict):  # a DatasetDict: {split: columns}
        raise TypeError(f"a maps dataset is one split, not a DatasetDict: pick one of {list(columns)}, as dataset[split]")
    if MAPS_CONFIG_COLUMN not in columns:
        raise ValueError(f"not a maps dataset: it has no {MAPS_CONFIG_COLUMN!r} column (columns: {list(columns)})")
    if len(dataset) == 0:
        raise ValueError("the maps dataset has no rows")
    maps = MapsPrompter.from_json(dataset.select_columns([MAPS_CONFIG_COLUMN])[0][MAPS_CONFIG_COLUMN])
    name = get_backend(maps.config.backend).map_names[0]
    feature = dataset.features.get(maps_column(name, maps.layers[0]))
    if feature is None:
        raise ValueError(f"the maps dataset lacks the column {maps_column(name, maps.layers[0])!r}")
    return MapsPrompter(maps.config, maps.layers, grid_shape=feature.shape)


def maps_columns(maps_prompter: MapsPrompter) -> List[str]:
    """The columns a maps run adds that a remasked variant does not keep."""
    backend = get_backend(maps_prompter.config.backend)
    return [MAPS_CONFIG_COLUMN, BOX_COLUMN, FORMAT_COLUMN] + [maps_column(n, l) for l in maps_prompter.layers for n in backend.map_names]


def masked_image_from_row(row: Dict[str, Any], config: PrompterConfig):
    """Stages 2 and 3 for one row of a maps dataset: its masked image under ``config`` (no model).

    ``config`` is one of the variants the maps serve (:meth:`MapsPrompter.prompter`).
    A row without maps (passed through) gives its image unmasked, or ``None`` without one.
    This is what :func:`remask` writes (decoded as stored: a lossy ``image_format`` shows its
    losses), and what lmms-eval's on-the-fly masking shows the model.
    """
    masked, _, formats, _ = _remask_batch({name: [value] for name, value in row.items()}, config, threads=1, store=False)
    return None if masked[0] is None else encoding.as_stored(masked[0], config, formats[0])


def _remask_batch(batch: Dict[str, list], config: PrompterConfig, threads: int, store: bool = True,
                  device: Optional[str] = None) -> Tuple[list, list, list, list]:
    """``(images, grid masks, source formats, crop boxes)`` of a maps batch: one recipe and one prompt call over its
    rows with maps.

    The images are the prompted ones, encoded for storing (``store``) or as PIL images. A row without
    maps (passed through) keeps its image unmasked (``None`` without one) and has no grid mask nor box
    (nor has any row of a style that does not crop).
    """
    names = get_backend(config.backend).map_names
    layer = {name: batch[maps_column(name, config.layer_index)] for name in names}
    decoded = parallel.thread_map(lambda value: (None, None) if value is None else decode_image(value),
                                  batch[config.image_column], threads)
    images = [d[0] for d in decoded]
    formats = batch[FORMAT_COLUMN] if FORMAT_COLUMN in batch else [d[1] for d in decoded]
    grids: List[Any] = [None] * len(images)
    good = [i for i, image in enumerate(images) if image is not None and all(layer[n][i] is not None for n in names)]
    prompted: Dict[int, prompts.Prompted] = {}
    if good:
        grid = grid_masks(config, {n: np.stack([np.asarray(layer[n][i], dtype=np.float32) for i in good]) for n in names})
        boxes = [None if batch[BOX_COLUMN][i] is None else tuple(batch[BOX_COLUMN][i]) for i in good]
        made = prompts.apply_prompt(config, [images[i] for i in good], grid, boxes, threads=threads,
                                    source_formats=[formats[i] for i in good] if store else None, device=device)
        for slot, i in enumerate(good):
            prompted[i], grids[i] = made[slot], grid[slot]
    boxes_out = [None if i not in prompted or prompted[i].box is None else list(prompted[i].box) for i in range(len(images))]
    if store:
        return stored_images(config, images, formats, prompted, threads), grids, formats, boxes_out
    return [prompted[i].image if i in prompted else image for i, image in enumerate(images)], grids, formats, boxes_out


class _Remask:
    """Stages 2 and 3 over a maps dataset's batch (a ``datasets.map`` function; pickles as its config)."""

    def __init__(self, config: PrompterConfig):
        self.config = config

    def __getstate__(self):
        return {"config": self.config.to_json()}

    def __setstate__(self, state):
        self.config = PrompterConfig.from_json(state["config"])

    def __call__(self, batch) -> Dict[str, list]:
        device = device_prompt.stage3_device(None, self.config.prompt)
        masked, heatmaps, _, boxes = _remask_batch(batch, self.config, parallel.default_threads(), device=device)
        columns = {self.config.masked_image_column: masked, self.config.heatmap_column: heatmaps}
        if prompts.writes_box(self.config.prompt):
            columns[prompts.CROP_BOX_COLUMN] = boxes
        return columns


def check_remask(maps_prompter: MapsPrompter, prompter: ImagePrompter):
    """Raise ``ValueError`` when ``prompter``'s variant cannot be made from these maps (nothing is computed)."""
    problem = maps_prompter.serves(prompter.config)
    if problem:
        raise ValueError(f"cannot remask with {prompter!r}: {problem}")


def remask(maps_dataset, prompter: ImagePrompter, *, batch_size: int = 8, maps_prompter: Optional[MapsPrompter] = None,
           **map_kwargs):
    """The variant of ``prompter`` made from a maps dataset, with no model: what ``prompter.map(source)`` returns.

    Same columns in the same order (the source's, then :meth:`ImagePrompter.output_features`),
    heatmaps equal to the direct run's (the maps are stored as float32, exactly).

    Args:
        maps_dataset: from :meth:`MapsPrompter.map` (or a saved or published copy of it).
        prompter: its config must share the maps' base (:func:`maps_base`) and use one of their layers.
        maps_prompter: the maps' run, if known (read from the dataset otherwise).
        **map_kwargs: forwarded to ``Dataset.map`` (``num_proc``, ``desc``, ...).
    """
    from datasets import Features, Image

    maps_prompter = maps_prompter or maps_prompter_of(maps_dataset)
    check_remask(maps_prompter, prompter)
    config = prompter.config
    # Maps made before FORMAT_COLUMN existed lack it; the format is then read from the image bytes.
    extra = [c for c in maps_columns(maps_prompter) if c != FORMAT_COLUMN or c in maps_dataset.column_names]
    missing = [c for c in extra + [config.image_column] if c not in maps_dataset.column_names]
    if missing:
        raise ValueError(f"the maps dataset lacks the columns {missing}")
    outputs = prompter.output_features()
    source_columns = [c for c in maps_dataset.column_names if c not in extra and c not in outputs]
    clash = [c for c in (config.masked_image_column, config.heatmap_column) if c in maps_dataset.column_names]
    if clash:
        raise ValueError(f"the maps dataset already has the columns {clash}, which remasking would overwrite")
    column = config.image_column
    feature = maps_dataset.features[column]
    source = maps_dataset.cast_column(column, Image(decode=False)) if isinstance(feature, Image) and feature.decode else maps_dataset
    features = {name: feature for name, feature in maps_dataset.features.items() if name not in extra}
    features.update(outputs)

    map_kwargs.setdefault("desc", f"API remask ({config.backend}, layer {config.layer_index})")
    with parallel.workers(map_kwargs.get("num_proc")):
        remasked = source.map(
            _Remask(config), batched=True, batch_size=batch_size,
            remove_columns=extra, features=Features(features), **map_kwargs,
        )
    return remasked.select_columns(source_columns + list(outputs))


__all__ = ["MAPS_CONFIG_COLUMN", "BOX_COLUMN", "FORMAT_COLUMN", "MapsPrompter", "check_remask", "maps_base", "maps_column",
           "maps_prompter_of", "masked_image_from_row", "remask", "sweep"]
