"""A local web page to try Attention Prompting on one image: the playground.

Pick a bundled scene or upload an image, ask a question, choose the backend, its
parameters and the prompt style (mask, blur or crop, each with its own parameters),
and see the heatmap, the mask and the masked image side by side,
with the masked image as a PNG to download. ``scripts/playground.py`` starts it;
``pip install 'hf_api_prompt[playground]'`` installs Gradio.

The page is a thin layer: :class:`PlaygroundPredictor` does the work without
Gradio (it keeps one loaded :class:`~hf_api_prompt.ImagePrompter` per distinct
parameter set, a few at most), and :func:`build_app` lays out the Gradio page.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

from . import bundled, encoding
from .backends import available_backends, get_backend
from .config import GEOMETRIES, PROMPT_PARAMETERS, PrompterConfig
from .inputs import check_question, decode_image
from .preview import colorize
from .prompter import ImagePrompter
from .prompts import available_prompts

logger = logging.getLogger(__name__)

#: PIL resampling filters offered for grid -> pixels (any ``Image.Resampling`` name works).
#: The page's starting values of the prompt styles' parameters: each style's own default.
STYLE_DEFAULTS = {field: spec.default for parameters in PROMPT_PARAMETERS.values() for field, spec in parameters.items()}
INTERPOLATIONS = ("LANCZOS", "BICUBIC", "BILINEAR", "HAMMING", "BOX", "NEAREST")


def _gradio():
    try:
        import gradio
    except ImportError as error:
        raise ImportError("the playground needs Gradio: pip install 'hf_api_prompt[playground]'") from error
    return gradio


@dataclasses.dataclass
class PlaygroundResult:
    """One image through the method.

    Attributes:
        heatmap: float32 ``[gh, gw]`` grid mask in [0, 1] (the prompter's heatmap column).
        mask: mode ``"L"`` image of the input's size: the heatmap as the blend uses it.
        masked_image: RGB image, what :class:`~hf_api_prompt.ImagePrompter` writes, as a reader of
            the stored variant sees it: decoded from the JPEG where ``config.image_format`` stores
            one for this source (:func:`hf_api_prompt.encoding.as_stored`).
        answer: the generative backend's own answer (llava), else ``None``.
        config: the prompter config that made it.
    """

    heatmap: np.ndarray
    mask: Image.Image
    masked_image: Image.Image
    answer: Optional[str]
    config: PrompterConfig


class PlaygroundPredictor:
    """Masks one image at a time, keeping the last few prompters (and their models) loaded.

    Calls from several threads (visitors of the page) run one at a time.

    Args:
        max_prompters: how many distinct parameter sets stay loaded; the least
            recently used one is dropped first. A model loads once per distinct
            set (changing any parameter, ``enhance_coe`` included, builds a new
            prompter), so keep this small for large models.

    Example:
        >>> from PIL import Image
        >>> from hf_api_prompt.bundled import DEMO_MODEL, DEMO_MODEL_LAYER
        >>> predictor = PlaygroundPredictor()
        >>> result = predictor(Image.new("RGB", (64, 48), "white"), "Where is it?", "clip",
        ...                    model=DEMO_MODEL, layer_index=DEMO_MODEL_LAYER)
        >>> result.mask.size, result.masked_image.size
        ((64, 48), (64, 48))
    """

    def __init__(self, max_prompters: int = 2):
        if max_prompters < 1:
            raise ValueError(f"max_prompters must be >= 1, got {max_prompters}")
        self.max_prompters = max_prompters
        self._prompters: "collections.OrderedDict[str, ImagePrompter]" = collections.OrderedDict()
        # One prediction at a time: visitors share the loaded models, and a backend call is not
        # re-entrant (llava's attention capture is in use until the call returns).
        self._lock = threading.Lock()

    def prompter(self, backend: str, **params: Any) -> ImagePrompter:
        """The cached prompter for these parameters (built, not yet loaded, on first use).

        Keyed by the requested parameters rather than the resolved config, so a
        cache hit does not re-hash local weights (``resolve_config`` does).
        """
        key = json.dumps({"backend": backend, **params}, sort_keys=True, default=str)
        if key in self._prompters:
            self._prompters.move_to_end(key)
            return self._prompters[key]
        prompter = ImagePrompter(backend, **params)
        self._prompters[key] = prompter
        while len(self._prompters) > self.max_prompters:
            self._prompters.popitem(last=False)
        return prompter

    def __call__(self, image: Any, question: str, backend: str = "clip", **params: Any) -> PlaygroundResult:
        """Mask ``image`` for ``question`` with ``ImagePrompter(backend, **params)``.

        Args:
            image: a PIL image, a path or bytes (any mode; made RGB as the prompter does).
            question: non-empty text.
        Raises:
            ValueError, TypeError, OSError: bad inputs or parameters, unloadable models.
        """
        image, source_format = decode_image(image)
        question = check_question(question)
        with self._lock:
            prompter = self.prompter(backend, **params)
            batch = prompter.prompt([image], [question])  # the prompter's own three stages
        config = prompter.config
        answer = batch.extra_columns[config.answer_column][0] if config.answer_column in batch.extra_columns else None
        prompted = batch.prompted[0]
        masked = encoding.as_stored(prompted.image, config, source_format)
        return PlaygroundResult(batch.grid_masks[0], prompted.weights, masked, answer, config)


def demo_examples() -> List[List[str]]:
    """``[[image path, question], ...]`` for the bundled scenes (``bundled.DEMO_DATA``)."""
    folder = Path(bundled.DEMO_DATA)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    return [[str(folder / row["file_name"]), row["question"]] for row in rows]


def default_layer_index(backend: str, model: Optional[str]) -> int:
    """The bundled model's layer for the bundled model, else the backend's paper default."""
    if model == bundled.DEMO_MODEL:
        return bundled.DEMO_MODEL_LAYER
    return get_backend(backend).defaults["layer_index"]


def predict(
    predictor: PlaygroundPredictor,
    output_dir: Path,
    image: Optional[Image.Image],
    question: str,
    backend: str,
    model: str,
    pretrained: str,
    layer_index: float,
    enhance_coe: float,
    kernel_size: float,
    interpolation: str,
    grayscale: float,
    geometry: str,
    prompt: str = "mask",
    blur_radius: float = STYLE_DEFAULTS["blur_radius"],
    crop_mass: float = STYLE_DEFAULTS["crop_mass"],
    crop_padding: float = STYLE_DEFAULTS["crop_padding"],
    crop_min_size: float = STYLE_DEFAULTS["crop_min_size"],
) -> Dict[str, Any]:
    """What the page's button runs: widget values in, widget values out.

    Empty ``model``/``pretrained`` mean the backend's defaults. Of the prompt styles' parameters,
    only those of ``prompt`` are used. Every failure is raised as ``gradio.Error`` so the page
    shows it and stays usable.

    Returns:
        ``{"heatmap", "mask", "masked_image": PIL images at the input's size,
        "download": path of the masked image as PNG, "answer": str, "config": dict}``.
    """
    gr = _gradio()
    if image is None:
        raise gr.Error("Upload an image or pick one of the examples first.")
    try:
        if layer_index is None:
            raise ValueError("layer_index is empty")
        params: Dict[str, Any] = {
            "layer_index": int(layer_index),
            "enhance_coe": float(enhance_coe),
            "kernel_size": int(kernel_size),
            "interpolation": interpolation,
            "grayscale": int(grayscale),
            "geometry": geometry,
            "prompt": prompt,
        }
        given = {"blur_radius": blur_radius, "crop_mass": crop_mass, "crop_padding": crop_padding, "crop_min_size": crop_min_size}
        params.update({field: float(given[field]) for field in PROMPT_PARAMETERS.get(prompt, {})})
        if model and model.strip():
            params["model"] = model.strip()
        if pretrained and pretrained.strip():
            params["pretrained"] = pretrained.strip()
        result = predictor(image, question, backend, **params)
    except Exception as error:  # the page boundary: show it, keep serving
        logger.warning("playground request failed: %s: %s", type(error).__name__, error)
        raise gr.Error(f"{type(error).__name__}: {error}") from error
    folder = output_dir / uuid.uuid4().hex  # one folder per request: the download keeps a plain name
    folder.mkdir(parents=True)
    download = folder / "masked_image.png"
    result.masked_image.save(download)
    heatmap = colorize(result.heatmap).resize(result.mask.size, Image.Resampling.NEAREST)  # the input's size
    return {
        "heatmap": heatmap,
        "mask": result.mask,
        "masked_image": result.masked_image,
        "download": str(download),
        "answer": result.answer or "",
        "config": result.config.to_dict(),
    }


def build_app(
    *,
    backend: str = "clip",
    model: Optional[str] = None,
    pretrained: Optional[str] = None,
    layer_index: Optional[int] = None,
    max_prompters: int = 2,
):
    """The playground as a ``gradio.Blocks``; start it with ``.launch()``.

    Args:
        backend: the backend selected when the page opens.
        model: its model; ``None`` means the bundled demo model for ``"clip"`` and
            the backend's default otherwise.
        pretrained: weights tag or file (clip); ``None`` leaves it to the prompter.
        layer_index: ``None`` means the bundled model's layer for the bundled
            model, else the backend's default.
        max_prompters: parameter sets kept loaded (see :class:`PlaygroundPredictor`).

    Example:
        >>> app = build_app()  # doctest: +SKIP
        >>> app.launch(server_name="127.0.0.1")  # doctest: +SKIP
    """
    gr = _gradio()
    get_backend(backend)  # unknown backend: fail now, not on the first click
    start = {
        "model": model if model is not None else (bundled.DEMO_MODEL if backend == "clip" else get_backend(backend).defaults["model"]),
        "pretrained": pretrained or "",
    }
    start["layer_index"] = layer_index if layer_index is not None else default_layer_index(backend, start["model"])
    predictor = PlaygroundPredictor(max_prompters)
    # Deleted with the app object (TemporaryDirectory's finalizer); Gradio copies what it serves into its cache.
    downloads = tempfile.TemporaryDirectory(prefix="hf_api_prompt_playground_")
    output_dir = Path(downloads.name)

    with gr.Blocks(title="Attention Prompting on Image: playground", analytics_enabled=False) as app:
        app.hf_api_prompt_downloads = downloads  # lives as long as the app
        gr.Markdown(
            "# Attention Prompting on Image\n"
            "An auxiliary model scores every image patch for relevance to the question; "
            "the mask built from that heatmap dims the rest (Yu, Yu & Wang, ECCV 2024). "
            "Pick an example or upload an image, ask a question, press **Mask**."
        )
        with gr.Row():
            with gr.Column(scale=1):
                # image_mode=None: the upload as decoded, its format kept (a JPEG is stored as one, image_format="source").
                image = gr.Image(type="pil", image_mode=None, label="image", sources=["upload", "clipboard"], elem_id="input-image")
                question = gr.Textbox(label="question", lines=2, elem_id="question")
                submit = gr.Button("Mask", variant="primary", elem_id="submit")
            with gr.Column(scale=1):
                gr.Examples(demo_examples(), inputs=[image, question], label="bundled scenes", elem_id="examples")
            with gr.Column(scale=1):
                backend_box = gr.Dropdown(available_backends(), value=backend, label="backend", elem_id="backend")
                model_box = gr.Textbox(
                    value=start["model"], label="model",
                    info="open_clip name, hf-hub:org/name or local-dir:/path (llava: Hub id or folder)",
                    elem_id="model",
                )
                pretrained_box = gr.Textbox(
                    value=start["pretrained"], label="weights (pretrained)",
                    info="clip only: tag or file, e.g. openai; empty = the model's own (random for a bare name)",
                    elem_id="pretrained",
                )
                layer_box = gr.Number(value=start["layer_index"], precision=0, minimum=0, label="layer_index", elem_id="layer-index")
                with gr.Row():
                    coe_box = gr.Slider(0.5, 20, value=5.0, step=0.5, label="enhance_coe", elem_id="enhance-coe")
                    kernel_box = gr.Slider(1, 9, value=3, step=2, label="kernel_size", elem_id="kernel-size")
                with gr.Row():
                    interpolation_box = gr.Dropdown(list(INTERPOLATIONS), value="LANCZOS", label="interpolation", elem_id="interpolation")
                    grayscale_box = gr.Slider(0, 255, value=0, step=1, label="grayscale", elem_id="grayscale")
                geometry_box = gr.Radio(list(GEOMETRIES), value="paper", label="geometry", elem_id="geometry")
                prompt_box = gr.Radio(available_prompts(), value="mask", label="prompt style", elem_id="prompt",
                                      info="mask: blend to gray; blur: blend to a blurred copy; crop: cut to the relevant box")
                blur_box = gr.Slider(0.005, 0.2, value=STYLE_DEFAULTS["blur_radius"], step=0.005, elem_id="blur-radius",
                                     label="blur_radius (blur: Gaussian sigma / shorter side)")
                with gr.Row():
                    mass_box = gr.Slider(0.05, 1, value=STYLE_DEFAULTS["crop_mass"], step=0.05, label="crop_mass (crop)",
                                         elem_id="crop-mass")
                    padding_box = gr.Slider(0, 1, value=STYLE_DEFAULTS["crop_padding"], step=0.05, label="crop_padding (crop)",
                                            elem_id="crop-padding")
                    min_size_box = gr.Slider(0, 1, value=STYLE_DEFAULTS["crop_min_size"], step=0.05,
                                             label="crop_min_size (crop)", elem_id="crop-min-size")
        with gr.Row():
            heatmap_out = gr.Image(type="pil", format="png", label="heatmap (grid, stretched)", interactive=False, elem_id="heatmap")
            mask_out = gr.Image(type="pil", format="png", image_mode="L", label="mask", interactive=False, elem_id="mask")
            masked_out = gr.Image(type="pil", format="png", label="masked image (crop: the cropped image)", interactive=False, elem_id="masked-image")
        with gr.Row():
            download_out = gr.File(label="download the masked image (PNG)", interactive=False, elem_id="download")
            answer_out = gr.Textbox(label="the backend's own answer (llava)", interactive=False, elem_id="answer")
        with gr.Accordion("prompter config (every parameter of the result)", open=False):
            config_out = gr.JSON(show_label=False, elem_id="config")

        def on_submit(*values):
            out = predict(predictor, output_dir, *values)
            return out["heatmap"], out["mask"], out["masked_image"], out["download"], out["answer"], out["config"]

        def on_backend(name: str):
            if name == backend:
                return start["model"], start["pretrained"], start["layer_index"]
            defaults = get_backend(name).defaults
            return defaults["model"], defaults.get("pretrained") or "", defaults["layer_index"]

        inputs = [image, question, backend_box, model_box, pretrained_box, layer_box, coe_box, kernel_box,
                  interpolation_box, grayscale_box, geometry_box, prompt_box, blur_box, mass_box, padding_box, min_size_box]
        outputs = [heatmap_out, mask_out, masked_out, download_out, answer_out, config_out]
        submit.click(on_submit, inputs, outputs, api_name="mask")
        question.submit(on_submit, inputs, outputs, api_visibility="private")
        backend_box.change(on_backend, backend_box, [model_box, pretrained_box, layer_box], api_visibility="private")
    return app
