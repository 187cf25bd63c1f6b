"""Variant identity: a readable config name per parameter set, and the record of each variant.

A *variant* is one masked version of a benchmark: one ``PrompterConfig`` applied
to one source dataset. It is published as its own ``datasets`` config, named by
:func:`variant_name`, and tagged ``{config_name}-v{library_version}`` once all of
its files are committed. :class:`VariantRecord` holds everything docs/method.md
("What every run records") asks for; the records of every variant
in a repo live in ``api_variants.json``, from which the card's table is rendered.

Example:
    >>> from hf_api_prompt import PrompterConfig
    >>> paper = PrompterConfig(backend="clip", model="ViT-L-14-336", pretrained="openai", layer_index=22)
    >>> variant_name(paper)  # stored as JPEG q75 where the source is a JPEG, else PNG
    'clip-vit-l-14-336-l22-e5-k3-lanczos-g0-source75'
    >>> variant_name(paper.replace(geometry="aligned", enhance_coe=2.5, image_format="jpeg", jpeg_quality=90))
    'clip-vit-l-14-336-l22-e2p5-k3-lanczos-g0-aligned-jpeg90'
    >>> variant_name(paper.replace(image_format="png"))  # PNG, as every variant before the format choice
    'clip-vit-l-14-336-l22-e5-k3-lanczos-g0'
    >>> variant_name(paper.replace(prompt="blur", blur_radius=0.02))
    'clip-vit-l-14-336-l22-e5-k3-lanczos-g0-blur-r0p02-source75'
    >>> variant_tag("clip-vit-l-14-336-l22-e5-k3-lanczos-g0", "0.1.0")
    'clip-vit-l-14-336-l22-e5-k3-lanczos-g0-v0.1.0'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Set

from .._version import __version__
from ..config import LATER_FIELDS, PROMPT_PARAMETERS, PrompterConfig, prompt_fields

VARIANTS_FILE = "api_variants.json"
PREVIEW_DIR = "previews"
#: Config fields that ``variant_name`` spells out for every backend (a backend adds its ``Backend.name_fields``);
#: any other identity field that differs from its default adds the hash.
_READABLE = {"backend", "model", "pretrained", "layer_index", "enhance_coe", "kernel_size", "interpolation", "grayscale",
             "geometry", "prompt", "image_format", "jpeg_quality"}
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PrompterConfig)}


def _not_identity() -> Set[str]:
    """Config fields that say nothing about the method: where it ran, the version, and every column name.

    The column names are ``PrompterConfig``'s own (all that ``column_fields`` can list) and those
    any backend adds (``Backend.column_option_fields``).

    >>> sorted(_not_identity())  # doctest: +NORMALIZE_WHITESPACE
    ['answer_column', 'device', 'heatmap_column', 'image_column', 'library_version', 'masked_image_column',
     'question_column', 'status_column']
    """
    from ..backends import available_backends, get_backend

    every_column = PrompterConfig(backend="", model="", pretrained=None, layer_index=0, on_error="passthrough")
    backend_columns = {f for name in available_backends() for f in get_backend(name).column_option_fields}
    return {"device", "library_version", *every_column.column_fields(), *backend_columns}


def _number(value: float) -> str:
    """An exact spelling of a float: its ``repr`` (the shortest text that reads back as the same float).

    ``.`` becomes ``p``, ``-`` becomes ``m``, the ``+`` of an exponent and a trailing ``.0`` are dropped;
    each step is reversible, so two floats never share a spelling.

    >>> [_number(x) for x in (5.0, 5.000001, 2.5, 2.50000001, 1e-07, 1e16)]
    ['5', '5p000001', '2p5', '2p50000001', '1em07', '1e16']
    """
    text = repr(float(value))
    if text.endswith(".0"):
        text = text[:-2]
    return text.replace(".", "p").replace("-", "m").replace("+", "")


def random_weights(config: PrompterConfig) -> bool:
    """Whether ``config`` runs on random weights: no ``pretrained``, and a model id that does not name weights."""
    from ..backends import get_backend

    return config.pretrained is None and not get_backend(config.backend).model_names_weights(config)


def identity(config: PrompterConfig) -> Dict[str, Any]:
    """The fields of ``config`` that change the masks (everything but device, version and column names).

    Local weights count by their file or folder name and ``weights_sha256``, not by
    where they are (:func:`~hf_api_prompt.backends.base.portable_config`), so the
    same weights give the same identity in every checkout.
    """
    from ..backends.base import portable_config

    skip = _not_identity()
    return {k: v for k, v in sorted(portable_config(config).to_dict().items())
            if k not in skip and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}


def config_hash(config: PrompterConfig, length: int = 8) -> str:
    """Short sha256 of :func:`identity`, as sorted JSON."""
    text = json.dumps(identity(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def variant_name(config: PrompterConfig, first_rows: Optional[int] = None) -> str:
    """Deterministic, readable config name for a parameter set; two parameter sets never share one.

    ``{backend}-{model}[-{pretrained}]-l{layer}-e{coe}-k{kernel}-{interpolation}-g{gray}[-{geometry}][-{prompt}][-{format}][-{own}][-h{hash}][-first{n}]``.
    ``model`` is the backend's ``model_name_part`` (by default the slug of the id;
    local weights by their folder name; clip's ``hf-hub:org/name`` as ``org-name``).
    ``pretrained`` appears unless it is the backend's default for its default model
    or the model id names the weights (``random`` for random weights); ``prompt`` unless it is
    ``"mask"``, followed by the style's parameters (``blur-r0p05``, ``crop-m0p7-p0p1-s0p25``: each
    :func:`~hf_api_prompt.prompts.register_prompt` prefix and its exact value); ``geometry``
    unless it is ``"paper"``; ``format`` unless it is ``"png"`` (the stored images: ``jpeg75``,
    ``source75``, i.e. the ``image_format`` and its ``jpeg_quality``; PNG, lossless, is what every
    version stored before the choice existed). ``own`` are the backend's ``name_parts`` (llava:
    ``t{max_new_tokens}``). ``coe`` is spelled exactly (see :func:`_number`). A
    hash of the full :func:`identity` is appended whenever the readable part does
    not spell out every identity field exactly: local model folders or weight files
    (named by their folder or file name, identified by their sha256), names that
    lose characters in the slug, ``on_error="passthrough"``, an explicit ``dtype``.
    ``first_rows`` marks a variant made of the first rows of the source only
    (``--limit``), so it never takes the name (and tag) of the whole benchmark's.

    Example:
        >>> cfg = PrompterConfig(backend="clip", model="local-dir:/tmp/m", pretrained=None, layer_index=2,
        ...                      weights_sha256="ab" * 64)
        >>> variant_name(cfg).startswith("clip-m-l2-e5-k3-lanczos-g0-source75-h")
        True
        >>> variant_name(cfg) == variant_name(cfg.replace(model="local-dir:/elsewhere/m/"))  # same weights
        True
    """
    from ..backends import get_backend
    from ..backends.base import lossless, portable_config, slug

    config = portable_config(config)
    backend = get_backend(config.backend)
    model_part, model_exact = backend.model_name_part(config)
    parts = [slug(config.backend), model_part]
    exact = lossless(config.backend) and model_exact

    model, pretrained = config.model, config.pretrained
    if backend.model_names_weights(config):
        exact &= pretrained is None  # a pretrained the loader ignores still counts, through the hash
    elif random_weights(config):
        parts.append("random")
    elif (model, pretrained) != (backend.defaults.get("model"), backend.defaults.get("pretrained")):
        if config.weights_sha256 is not None:  # a weights file, by its name (its sha256 is in the hash)
            parts.append(slug(os.path.splitext(pretrained)[0]) or "weights")
        else:
            parts.append(slug(pretrained))
            exact &= lossless(pretrained) and slug(pretrained) != "random"

    parts += [
        f"l{config.layer_index}",
        f"e{_number(config.enhance_coe)}",
        f"k{config.kernel_size}",
        config.interpolation.lower(),
        f"g{config.grayscale}",
    ]
    if config.geometry != "paper":
        parts.append(config.geometry)
    if config.prompt != LATER_FIELDS["prompt"]:
        parts.append(slug(config.prompt))
        exact &= lossless(config.prompt)
        parts += [f"{spec.prefix}{_number(getattr(config, field))}"
                  for field, spec in PROMPT_PARAMETERS.get(config.prompt, {}).items()]
    if config.image_format != LATER_FIELDS["image_format"]:
        parts.append(f"{config.image_format}{config.jpeg_quality}")
    parts += backend.name_parts(config)
    readable = _READABLE | set(backend.name_fields) | set(prompt_fields())
    unspelled = {k: v for k, v in identity(config).items() if k not in readable and v != _FIELD_DEFAULTS[k]}
    if unspelled or not exact:
        parts.append("h" + config_hash(config))
    if first_rows is not None:
        parts.append(f"first{first_rows}")
    return "-".join(p for p in parts if p)


def maps_variant_name(maps_prompter, first_rows: Optional[int] = None) -> str:
    """The config name of a maps dataset: the variant name with ``-maps-l{a}-{b}-...`` for its recipe and prompt.

    The layers are spelled, the recipe, prompt and image format are left open (they are chosen when remasking).

    Example:
        >>> from hf_api_prompt.stages import MapsPrompter
        >>> paper = PrompterConfig(backend="clip", model="ViT-L-14-336", pretrained="openai", layer_index=22)
        >>> maps_variant_name(MapsPrompter(paper, [20, 21, 22]))
        'clip-vit-l-14-336-maps-l20-21-22'
    """
    config = maps_prompter.config.replace(image_format=LATER_FIELDS["image_format"], jpeg_quality=None)  # left open
    layers = maps_prompter.layers
    # The base config's open fields are at their defaults, which variant_name spells as this part:
    open_part = f"-l{config.layer_index}-e{_number(config.enhance_coe)}-k{config.kernel_size}-{config.interpolation.lower()}-g{config.grayscale}"
    name = variant_name(config, first_rows=first_rows)
    head, _, tail = name.partition(open_part)
    return f"{head}-maps-l{'-'.join(map(str, layers))}{tail}"


def variant_tag(config_name: str, library_version: str = __version__) -> str:
    """The git tag that pins a published variant: ``{config_name}-v{library_version}``."""
    return f"{config_name}-v{library_version}"


def lmms_eval_task_name(base_task: str, config_name: str) -> str:
    """Task name of a variant in lmms-eval: ``{base_task}_api_{config_name}``.

    >>> lmms_eval_task_name("mmvet", "clip-vit-l-14-336-l22-e5-k3-lanczos-g0")
    'mmvet_api_clip-vit-l-14-336-l22-e5-k3-lanczos-g0'
    """
    return f"{base_task}_api_{config_name}"


@dataclasses.dataclass
class VariantRecord:
    """Everything a published variant must record (docs/method.md), as stored in ``api_variants.json``.

    Attributes:
        config_name: the ``datasets`` config (see :func:`variant_name`).
        tag: git tag pinning the variant (``None`` until tagged, and in local folders).
        split: split name the variant is stored under.
        num_rows: rows in that split.
        created: UTC date and time of the run (ISO 8601).
        library_version: ``hf_api_prompt`` version that made it.
        prompter: the full ``PrompterConfig`` (backend, model, weights id and sha256, every parameter), local
            weights by their folder or file name and sha256, never by their path (``portable_config``).
        source: ``dataset`` id, ``revision`` (Hub commit sha or content fingerprint), ``split``,
            ``benchmark`` preset, ``license``, ``image_column``, ``question_column``.
        columns: ``image`` (masked image, in the source's image column), ``heatmap``,
            ``original_image`` (``None`` unless kept), ``status`` (passthrough only).
        lmms_eval: ``base_task`` and ``task`` names, or ``None``.
        preview: path of the before/heatmap/after picture in the repo.
        maps: for a maps dataset (:func:`maps_variant_name`), its ``layers`` and maps ``columns``;
            ``None`` for a masked variant.
    """

    config_name: str
    split: str
    num_rows: int
    created: str
    library_version: str
    prompter: Dict[str, Any]
    source: Dict[str, Any]
    columns: Dict[str, Optional[str]]
    lmms_eval: Optional[Dict[str, str]] = None
    preview: Optional[str] = None
    tag: Optional[str] = None
    maps: Optional[Dict[str, Any]] = None

    @property
    def config(self) -> PrompterConfig:
        return PrompterConfig.from_dict(self.prompter)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "VariantRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class VariantIndex:
    """The records of all variants in one repo or folder, keyed by config name (``api_variants.json``).

    Example:
        >>> index = VariantIndex.from_json("")
        >>> index.names()
        []
    """

    format_version = 1

    def __init__(self, records: Optional[Dict[str, VariantRecord]] = None):
        self.records: Dict[str, VariantRecord] = dict(records or {})

    @classmethod
    def from_json(cls, text: Optional[str]) -> "VariantIndex":
        if not text or not text.strip():
            return cls()
        data = json.loads(text)
        return cls({name: VariantRecord.from_dict(record) for name, record in data.get("variants", {}).items()})

    def to_json(self) -> str:
        data = {
            "format_version": self.format_version,
            "variants": {name: self.records[name].to_dict() for name in sorted(self.records)},
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def upsert(self, record: VariantRecord) -> "VariantIndex":
        """A new index with ``record`` added or replacing the record of the same config."""
        return VariantIndex({**self.records, record.config_name: record})

    def merged(self, other: "VariantIndex") -> "VariantIndex":
        """This index updated with every record of ``other``."""
        return VariantIndex({**self.records, **other.records})

    def names(self) -> List[str]:
        return sorted(self.records)

    def __getitem__(self, name: str) -> VariantRecord:
        try:
            return self.records[name]
        except KeyError:
            raise KeyError(f"no variant {name!r} here; variants: {self.names()}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.records

    def __len__(self) -> int:
        return len(self.records)
