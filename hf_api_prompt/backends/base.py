"""The backend contract: images + questions in, grid masks out."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import torch
from PIL import Image

from ..config import PrompterConfig

logger = logging.getLogger(__name__)

_REGISTRY: Dict[str, Type["Backend"]] = {}

#: How :meth:`Backend.portable_config` names local weights: ``local-dir:<folder name>``.
LOCAL_DIR = "local-dir:"


def register_backend(cls: Type["Backend"]) -> Type["Backend"]:
    """Class decorator: make ``cls`` available as ``ImagePrompter(cls.name)``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_backends() -> List[str]:
    return sorted(_REGISTRY)


def get_backend(name: str) -> Type["Backend"]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; available: {available_backends()}") from None


Box = Tuple[float, float, float, float]


@dataclasses.dataclass
class RawMaps:
    """What the maps stage of a backend returns for a batch (docs/method.md, "Three stages").

    Attributes:
        layers: ``{layer_index: {map name: float32 [B, gh, gw] tensor}}`` for every
            requested layer, with the names of :attr:`Backend.map_names` (row 0 at the top).
        boxes: per image, the grid-coordinate box that the whole image maps to under
            ``geometry="aligned"``, or ``None`` where the backend's preprocessing has none.
        extra_columns: backend-specific per-row outputs (e.g. an answer), exactly the
            columns that :meth:`Backend.extra_features` declares.
    """

    layers: Dict[int, Dict[str, torch.Tensor]]
    boxes: List[Optional[Box]]
    extra_columns: Dict[str, list] = dataclasses.field(default_factory=dict)


def portable_config(config: PrompterConfig) -> PrompterConfig:
    """:meth:`Backend.portable_config` of ``config``'s backend.

    Raises:
        ValueError: local weights without ``weights_sha256`` (build configs with
            :class:`~hf_api_prompt.ImagePrompter`, which fills it).
    """
    portable = get_backend(config.backend).portable_config(config)
    if portable != config and config.weights_sha256 is None:
        raise ValueError(
            f"model {config.model!r} (pretrained {config.pretrained!r}) is local but weights_sha256 is not set: "
            "build the config with ImagePrompter, which hashes the weights"
        )
    return portable


def local_name(path: str) -> str:
    """The name of the folder or file ``path`` points to: ``/a/b/`` -> ``b`` (``.`` -> the current folder's name)."""
    return Path(os.path.abspath(os.path.expanduser(path))).name


def slug(text: str) -> str:
    """``text`` in lower case, every run of other characters than ``a-z0-9`` one ``-``: a piece of a variant name.

    >>> slug("ViT-L-14_336.v2"), slug("org/Name")
    ('vit-l-14-336-v2', 'org-name')
    """
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def lossless(text: str) -> bool:
    """True when the :func:`slug` of ``text`` loses nothing but case and ``_``/``-``/``.`` spelling.

    >>> lossless("ViT-L-14_336.v2"), lossless("org/name"), lossless("-x")
    (True, False, False)
    """
    return slug(text) == re.sub(r"[_.]", "-", text.lower())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- checkpoint folders (transformers layout)
def checkpoint_path(model: str) -> Optional[Path]:
    """The directory ``model`` names (``local-dir:`` prefix or a path), ``None`` for a Hub id; not checked."""
    if model.startswith(LOCAL_DIR):
        return Path(model[len(LOCAL_DIR):]).expanduser()
    if os.path.isdir(os.path.expanduser(model)) or model.startswith(("/", ".", "~")) or model.count("/") > 1:
        return Path(model).expanduser()  # a path, not "org/name"
    return None


def checkpoint_dir(model: str) -> Optional[Path]:
    """The existing directory ``model`` names, ``None`` for a Hub id."""
    path = checkpoint_path(model)
    if path is not None and not path.is_dir():
        raise FileNotFoundError(f"model {model!r}: directory {path} does not exist")
    return path


def weight_files(directory: Path) -> List[Path]:
    """The weight files ``from_pretrained`` reads from ``directory``, in sorted order.

    safetensors win over ``.bin`` (as in transformers); a sharded checkpoint lists
    its shards in its index file.
    """
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (directory / single).is_file():
            return [directory / single]
        if (directory / index).is_file():
            shards = sorted(set(json.loads((directory / index).read_text())["weight_map"].values()))
            missing = [name for name in shards if not (directory / name).is_file()]
            if missing:
                raise FileNotFoundError(f"{directory}: shards named in {index} are missing: {missing}")
            return [directory / name for name in shards]
    raise FileNotFoundError(
        f"{directory} has no weights (expected model.safetensors, pytorch_model.bin or a sharded index)"
    )


def weights_digest(directory: Path) -> str:
    """sha256 of the single weight file, or of the ``sha256sum`` manifest of all shards.

    For shards the digest is ``sha256("".join(f"{sha256(f)}  {f.name}\\n" for f in sorted shards))``,
    i.e. ``sha256sum <shards in sorted order> | sha256sum`` run inside ``directory``.
    """
    files = weight_files(directory)
    if len(files) == 1:
        return sha256_file(files[0])
    manifest = "".join(f"{sha256_file(path)}  {path.name}\n" for path in files)
    return hashlib.sha256(manifest.encode()).hexdigest()


def pick_device(requested: Optional[str], rank: Optional[int]) -> torch.device:
    """An explicit device wins; otherwise ``cuda:{rank % n}`` when GPUs exist, else CPU."""
    if requested is not None:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", (rank or 0) % torch.cuda.device_count())
    return torch.device("cpu")


def pick_dtype(requested: Optional[str], device: torch.device) -> torch.dtype:
    """An explicit dtype wins; float16 on CUDA, float32 elsewhere."""
    if requested is not None:
        return getattr(torch, requested)
    return torch.float16 if device.type == "cuda" else torch.float32


class Backend:
    """Base class: a subclass sets ``name`` and ``defaults`` and implements the hooks.

    Construction must be cheap and must validate everything that can be checked
    without loading weights; ``load`` happens lazily, once per process.
    """

    name: ClassVar[str]
    #: paper defaults for ``model``, ``pretrained`` and ``layer_index``.
    defaults: ClassVar[dict]
    #: the raw maps the maps stage returns per layer, in order (the keys :meth:`recipe` reads).
    map_names: ClassVar[Tuple[str, ...]]

    #: Threads for per-image work before the model (preprocessing); the prompter sets its pool size.
    threads: int = 1

    def __init__(self, config: PrompterConfig, device: torch.device):
        self.config = config
        self.device = device
        self.dtype = pick_dtype(config.dtype, device)

    @classmethod
    def resolve_config(cls, config: PrompterConfig) -> PrompterConfig:
        """Validate ``config`` without loading weights; may fill ``weights_sha256``.

        Here: :meth:`check_options`. An override calls ``super().resolve_config(config)`` first.
        """
        cls.check_options(config)
        return config

    @classmethod
    def model_names_weights(cls, config: PrompterConfig) -> bool:
        """Whether ``config.model`` alone names the weights (a checkpoint repo or folder).

        Then ``pretrained=None`` does not mean random weights, and a variant is
        named by its model (and, for local weights, their sha256).
        """
        return False

    @classmethod
    def portable_config(cls, config: PrompterConfig) -> PrompterConfig:
        """``config`` as it identifies a run wherever the checkout lives.

        Local weights are named ``local-dir:<folder name>`` (or by their file name)
        and identified by ``weights_sha256``, never by their absolute path. Used for
        variant names, their records and cards, and the keys of resumable chunks.
        Pure string work: it also applies to records whose folders are gone.
        """
        return config

    @classmethod
    def grid_shape(cls, config: PrompterConfig) -> Tuple[int, int]:
        """``(gh, gw)`` of the heatmap this config produces."""
        raise NotImplementedError

    @classmethod
    def extra_features(cls, config: PrompterConfig) -> dict:
        """The backend's own output columns and their ``datasets`` feature types (none by default).

        They are part of :meth:`hf_api_prompt.ImagePrompter.output_features`, so they are
        declared to ``datasets`` and filled (``None``) on rows the backend never saw.
        """
        return {}

    @classmethod
    def recipe(cls, maps: Dict[str, torch.Tensor], enhance_coe: float, kernel_size: int) -> torch.Tensor:
        """Stage 2 (pure): one layer's raw maps ``{name: [B, gh, gw]}`` -> the grid masks ``[B, gh, gw]`` in [0, 1]."""
        raise NotImplementedError

    def maps(self, images: Sequence[Image.Image], questions: Sequence[str], layers: Sequence[int]) -> RawMaps:
        """Stage 1: the raw maps of every layer in ``layers`` from ONE forward pass over the batch."""
        raise NotImplementedError

    #: The ``PrompterConfig`` fields that only this backend reads (``None`` means unset, so they default to ``None``).
    #: Every other backend refuses them (:meth:`check_options`).
    option_fields: ClassVar[Tuple[str, ...]] = ()
    #: Those of :attr:`option_fields` that name a column: like the other column names, not part of a variant's identity.
    column_option_fields: ClassVar[Tuple[str, ...]] = ()
    #: Those of :attr:`option_fields` that :meth:`name_parts` spells out exactly in a variant's name.
    name_fields: ClassVar[Tuple[str, ...]] = ()

    @classmethod
    def check_options(cls, config: PrompterConfig) -> None:
        """Refuse the options of other backends: a field another registered backend owns, set in ``config``.

        Example:
            >>> from hf_api_prompt.backends import get_backend
            >>> cfg = PrompterConfig(backend="clip", model="m", pretrained=None, layer_index=0, max_new_tokens=5)
            >>> get_backend("clip").check_options(cfg)
            Traceback (most recent call last):
            ...
            ValueError: max_new_tokens applies to backend 'llava', not to 'clip'
        """
        for field in dataclasses.fields(PrompterConfig):
            if field.name in cls.option_fields or getattr(config, field.name) is None:
                continue
            owners = [name for name, other in sorted(_REGISTRY.items()) if field.name in other.option_fields]
            if owners:
                raise ValueError(
                    f"{field.name} applies to backend{'s' if len(owners) > 1 else ''} "
                    f"{', '.join(map(repr, owners))}, not to {cls.name!r}"
                )

    @classmethod
    def model_name_part(cls, config: PrompterConfig) -> Tuple[str, bool]:
        """The model's piece of a variant name for a :meth:`portable_config`, and whether it is exact.

        Exact: it spells ``config.model`` up to case and ``_``/``-``/``.`` (:func:`lossless`).
        Here: local weights (``local-dir:<name>``) by the slug of their name (``local`` if
        nothing is left), never exact (their ``weights_sha256`` identifies them); any other
        model by its slug.

        >>> local = PrompterConfig(backend="x", model="local-dir:My_Model", pretrained=None, layer_index=0)
        >>> Backend.model_name_part(local), Backend.model_name_part(local.replace(model="ViT-B-16"))
        (('my-model', False), ('vit-b-16', True))
        """
        if config.model.startswith(LOCAL_DIR):
            return slug(config.model[len(LOCAL_DIR):]) or "local", False
        return slug(config.model), lossless(config.model)

    @classmethod
    def name_parts(cls, config: PrompterConfig) -> List[str]:
        """This backend's own pieces of a variant name, after the common ones: exactly the :attr:`name_fields`."""
        return []
