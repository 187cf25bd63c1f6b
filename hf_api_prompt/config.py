"""One configuration object per prompter.

The same sorted-JSON dictionary feeds the cache fingerprint (a prompter pickles
as its config), the dataset card and the variant name, so everything that can
change an output lives here and nothing else does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any, Dict, NamedTuple, Optional, Union

from PIL import Image

from ._version import __version__

GEOMETRIES = ("paper", "aligned")
#: Fields added after the first release, with their defaults: at the default they are not part of a
#: variant's identity, so the variants published before them keep their names.
LATER_FIELDS = {"prompt": "mask", "image_format": "png", "jpeg_quality": None, "relative_attention": None,
                "blur_radius": None, "crop_mass": None, "crop_padding": None, "crop_min_size": None}


class StyleParameter(NamedTuple):
    """A prompt style's parameter: its default, its prefix in variant names, and its range (``high`` included)."""

    default: float
    prefix: str
    low: float = 0.0
    high: float = math.inf
    low_included: bool = True


#: The parameter fields of each prompt style (filled by :func:`hf_api_prompt.prompts.register_prompt`):
#: ``{style: {field: StyleParameter}}``. A style's fields take their default when it is selected
#: and left ``None``; the fields of the other styles must be ``None``.
PROMPT_PARAMETERS: Dict[str, Dict[str, StyleParameter]] = {}
#: How a masked image is stored (:mod:`hf_api_prompt.encoding`): lossless PNG, JPEG, or the source's kind of format.
IMAGE_FORMATS = ("png", "jpeg", "source")
#: The authors' setting: their code saves every masked image with PIL's default JPEG quality.
DEFAULT_JPEG_QUALITY = 75
ERROR_POLICIES = ("raise", "passthrough")
_DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}


def canonical_interpolation(name: Any) -> str:
    """Return the PIL resampling name (``"LANCZOS"``) for a case-insensitive name or enum.

    >>> canonical_interpolation("lanczos"), canonical_interpolation(Image.Resampling.BICUBIC)
    ('LANCZOS', 'BICUBIC')
    """
    if isinstance(name, Image.Resampling):
        return name.name
    key = str(name).strip().upper()
    if key not in Image.Resampling.__members__:
        choices = ", ".join(m.lower() for m in Image.Resampling.__members__)
        raise ValueError(f"interpolation {name!r} is not a PIL resampling filter; choose one of: {choices}")
    return key


def canonical_dtype(name: Optional[str]) -> Optional[str]:
    """Map ``"fp16"``/``"bf16"``/``torch.float16``-like names to ``float16``/``bfloat16``/``float32``."""
    if name is None:
        return None
    key = str(name).replace("torch.", "").strip().lower()
    if key not in _DTYPE_ALIASES:
        raise ValueError(f"dtype {name!r} is not supported; use float32, float16 or bfloat16")
    return _DTYPE_ALIASES[key]


def prompt_fields() -> list:
    """Every prompt style's parameter fields, in registration order.

    >>> prompt_fields()
    ['blur_radius', 'crop_mass', 'crop_padding', 'crop_min_size']
    """
    return list(dict.fromkeys(f for parameters in PROMPT_PARAMETERS.values() for f in parameters))


def _finite_real(name: str, value: Any, low: float, high: float, low_included: bool) -> float:
    """``value`` as a float once it is a finite real number in the range (``high`` included), else ``ValueError``."""
    real = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not real or not ((low <= value if low_included else low < value) and value <= high):
        bounds = f"{'[' if low_included else '('}{low:g}, {high:g}{']' if math.isfinite(high) else ')'}"
        raise ValueError(f"{name} must be a finite number in {bounds}, got {value!r} ({type(value).__name__})")
    return float(value)


def _is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` would pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class PrompterConfig:
    """Every parameter of an :class:`~hf_api_prompt.ImagePrompter`.

    Args:
        backend: auxiliary model family, ``"clip"`` (see ``hf_api_prompt.backends``).
        model: model identifier understood by the backend.
        pretrained: weights tag or file for the backend; ``None`` means random weights.
        layer_index: 0-based block whose attention is read (docs/method.md).
        enhance_coe: sigmoid sharpening coefficient of the attention map.
        kernel_size: odd size of the mean filter applied on the grid, or ``"auto"`` (the
            prompter sets the size for its grid: :func:`hf_api_prompt.masks.auto_kernel_size`).
        interpolation: PIL filter used to resize the grid mask to the image.
        grayscale: value (0-255) that masked-out pixels are blended towards (``prompt="mask"``; the
            other styles do not read it).
        geometry: ``"paper"`` stretches the grid over the whole image as the authors
            did; ``"aligned"`` maps each cell back onto the pixels the model saw.
        prompt: the visual prompt style (:func:`hf_api_prompt.prompts.available_prompts`):
            ``"mask"``, the paper's soft mask; ``"blur"``, the same blend towards a blurred copy of the
            image; ``"crop"``, the image cut to the box around the mask's mass (docs/method.md).
        blur_radius: ``prompt="blur"`` only: the standard deviation of the Gaussian blur as a fraction of
            the image's shorter side (default 0.05), so one setting suits images of any size.
        crop_mass: ``prompt="crop"`` only: the share of the mask's mass (its weight above the mean) that the box holds (default 0.7).
        crop_padding: ``prompt="crop"`` only: added on each side, as a fraction of the box's side (default 0.1).
        crop_min_size: ``prompt="crop"`` only: the box's least width and height, as fractions of the
            image's (default 0.25).
        image_format: how the masked image is stored (:mod:`hf_api_prompt.encoding`): ``"png"``
            (lossless, zlib's fast level), ``"jpeg"`` (lossy, ``jpeg_quality``) or ``"source"``
            (JPEG at ``jpeg_quality`` where the source image is a JPEG, PNG otherwise).
        jpeg_quality: 1-100, for ``"jpeg"`` and ``"source"`` (default 75, the authors' setting);
            ``None`` with ``"png"``.
        image_column, question_column: input columns.
        masked_image_column, heatmap_column: output columns.
        on_error: ``"raise"`` (a bad row stops the map with an error naming it) or
            ``"passthrough"`` (the row is kept and ``status_column`` says why; its heatmap
            and the backend's own columns, e.g. the answer, are ``None``; its masked image
            is the unmasked image, or ``None`` when the image is missing or undecodable, and
            undecodable image bytes in ``image_column`` are replaced by ``None`` as well, so
            that the result can be read, indexed and filtered row by row).
        status_column: written only with ``on_error="passthrough"``.
        device: ``None`` picks ``cuda:{rank % n_gpus}`` when GPUs exist, else CPU.
        dtype: ``None`` follows the device: float16 on CUDA, float32 on CPU.
        max_new_tokens: generation length of a generative backend (llava); ``None`` elsewhere.
        answer_column: where a generative backend writes its own answer; ``None`` elsewhere.
        relative_attention: a generative backend's map option (ViCrop's relative attention): ``True``
            divides the question's attention by that of a generic instruction on the same image;
            ``None`` (or ``False``, which means the same) is the plain attention; ``None`` elsewhere.
        weights_sha256: content hash of local weights, filled in by the backend.
        library_version: stamped automatically.

    Example:
        >>> cfg = PrompterConfig(backend="clip", model="ViT-B-16", pretrained=None, layer_index=10)
        >>> PrompterConfig.from_json(cfg.to_json()) == cfg
        True
    """

    backend: str
    model: str
    pretrained: Optional[str]
    layer_index: int
    enhance_coe: float = 5.0
    kernel_size: Union[int, str] = 3
    interpolation: str = "LANCZOS"
    grayscale: int = 0
    geometry: str = "paper"
    prompt: str = "mask"
    image_format: str = "source"
    jpeg_quality: Optional[int] = None
    blur_radius: Optional[float] = None
    crop_mass: Optional[float] = None
    crop_padding: Optional[float] = None
    crop_min_size: Optional[float] = None
    image_column: str = "image"
    question_column: str = "question"
    masked_image_column: str = "masked_image"
    heatmap_column: str = "heatmap"
    on_error: str = "raise"
    status_column: str = "api_status"
    device: Optional[str] = None
    dtype: Optional[str] = None
    max_new_tokens: Optional[int] = None
    answer_column: Optional[str] = None
    relative_attention: Optional[bool] = None
    weights_sha256: Optional[str] = None
    library_version: str = __version__

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("interpolation", canonical_interpolation(self.interpolation))
        set_("dtype", canonical_dtype(self.dtype))
        if not _is_int(self.layer_index):
            raise TypeError(f"layer_index must be an int, got {self.layer_index!r}")
        if self.kernel_size != "auto" and (not _is_int(self.kernel_size) or self.kernel_size < 1 or self.kernel_size % 2 == 0):
            raise ValueError(f"kernel_size must be a positive odd int or 'auto', got {self.kernel_size!r}")
        coe = self.enhance_coe  # inf or nan would also reach api_variants.json as invalid JSON
        if isinstance(coe, bool) or not isinstance(coe, numbers.Real) or not math.isfinite(coe) or not coe > 0:
            raise ValueError(f"enhance_coe must be a finite number > 0, got {coe!r} ({type(coe).__name__})")
        set_("enhance_coe", float(coe))
        if not _is_int(self.grayscale) or not 0 <= self.grayscale <= 255:
            raise ValueError(f"grayscale must be an int in [0, 255], got {self.grayscale!r}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")
        if self.image_format == "png":
            if self.jpeg_quality is not None:
                raise ValueError(f"jpeg_quality={self.jpeg_quality!r} has no meaning with image_format='png' (lossless); leave it None")
        elif self.jpeg_quality is None:
            set_("jpeg_quality", DEFAULT_JPEG_QUALITY)
        elif not _is_int(self.jpeg_quality) or not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be an int in [1, 100], got {self.jpeg_quality!r}")
        own = PROMPT_PARAMETERS.get(self.prompt, {})
        for field in prompt_fields():
            value = getattr(self, field)
            if field not in own:
                if value is not None:
                    owner = next(name for name, parameters in PROMPT_PARAMETERS.items() if field in parameters)
                    raise ValueError(f"{field}={value!r} is a parameter of prompt style {owner!r}, not of "
                                     f"prompt={self.prompt!r}; leave it None")
                continue
            spec = own[field]
            set_(field, _finite_real(field, spec.default if value is None else value, spec.low, spec.high, spec.low_included))
        if self.on_error not in ERROR_POLICIES:
            raise ValueError(f"on_error must be one of {ERROR_POLICIES}, got {self.on_error!r}")
        # An output named like an input would overwrite it (answer_column="question"
        # replaced the questions with the answers); outputs named alike overwrite each other.
        named = {}
        for field in self.column_fields():
            name = getattr(self, field)
            if name in named:
                raise ValueError(
                    f"column names must be distinct: {named[name]} and {field} are both {name!r}; rename one of them"
                )
            named[name] = field

    def column_fields(self) -> list:
        """The config fields naming the columns a prompter reads and writes, inputs first.

        ``answer_column`` counts when set, ``status_column`` under ``on_error="passthrough"``.

        >>> PrompterConfig(backend="clip", model="m", pretrained=None, layer_index=0).column_fields()
        ['image_column', 'question_column', 'masked_image_column', 'heatmap_column']
        """
        fields = ["image_column", "question_column", "masked_image_column", "heatmap_column"]
        if self.answer_column is not None:
            fields.append("answer_column")
        if self.on_error == "passthrough":
            fields.append("status_column")
        return fields

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Sorted, compact JSON: stable across runs, so it can key caches."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> "PrompterConfig":
        """The config of a dictionary from :meth:`to_dict`, of this version or an earlier one.

        A field added later (:data:`LATER_FIELDS`) that ``data`` lacks takes the value every
        earlier version had, e.g. ``image_format="png"``, not today's default.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PrompterConfig keys: {unknown}")
        return cls(**{**LATER_FIELDS, **data})

    @classmethod
    def from_json(cls, text: str) -> "PrompterConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "PrompterConfig":
        """This config with ``changes``, validated again.

        ``image_format="png"`` drops the ``jpeg_quality`` of the format it replaces (PNG has none;
        the quality a default config holds is 75), unless ``changes`` give one, which is refused;
        a JPEG format keeps the quality it is given or the config had. A new ``prompt`` likewise drops the
        parameters of the style it replaces and takes its own defaults, unless ``changes`` give them.

        >>> cfg = PrompterConfig(backend="clip", model="m", pretrained=None, layer_index=0, jpeg_quality=90)
        >>> cfg.replace(image_format="png").jpeg_quality is None, cfg.replace(image_format="jpeg").jpeg_quality
        (True, 90)
        """
        if changes.get("image_format") == "png":
            changes.setdefault("jpeg_quality", None)
        if "prompt" in changes:
            for field in prompt_fields():
                changes.setdefault(field, None)
        return dataclasses.replace(self, **changes)
