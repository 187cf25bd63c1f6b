"""Backend "clip": open_clip ViT, [CLS] attention decomposition at one or several blocks.

docs/method.md, "Backend clip". Only the requested blocks are examined, and the
forward pass stops after the deepest one: the maps of block L are scored against
``u = ln_post.weight * (proj @ t)``, and everything the reference code applies
after block L (later blocks' contributions are not part of either map; ln_post's
centering and scale, the embedding norm) adds a per-image constant or a positive
per-image factor, which the min-max normalisation removes. So the result is the
authors' mask at the cost of ``L + 1`` blocks, and the maps of every block up to
the deepest requested one come from the same pass.

A CLIP checkpoint in transformers layout (a ``CLIPModel`` folder or Hub id) is read
by converting its weights into the equivalent open_clip model, so both layouts go
through the same decomposition (docs/method.md, "Backend clip").
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from PIL import Image

from .. import masks, parallel
from ..config import PrompterConfig
from .base import (
    LOCAL_DIR, Backend, RawMaps, checkpoint_dir, checkpoint_path, local_name, register_backend, sha256_file, slug,
    weights_digest,
)

logger = logging.getLogger(__name__)

HF_HUB = "hf-hub:"
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _read_local_config(path: str) -> dict:
    config_path = Path(path) / "open_clip_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"model 'local-dir:{path}' has no open_clip_config.json (expected {config_path}) "
            "nor a transformers config.json"
        )
    return json.loads(config_path.read_text())


def _local_weights(path: str) -> Path:
    for name in _WEIGHT_FILES:
        if (Path(path) / name).is_file():
            return Path(path) / name
    raise FileNotFoundError(f"model 'local-dir:{path}' has no weights file (expected one of {list(_WEIGHT_FILES)})")


# ----------------------------------------------------------------------------- transformers layout
#: The tokenizer files a transformers CLIP checkpoint folder must hold (either set).
_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
#: PIL resample codes of ``preprocessor_config.json`` -> open_clip's interpolation names.
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def transformers_source(model: str) -> Optional[str]:
    """The folder or Hub id of a CLIP checkpoint in transformers layout that ``model`` names, ``None`` for open_clip's.

    open_clip names have no ``/`` (built-in), ``hf-hub:`` or ``local-dir:`` with an
    ``open_clip_config.json``; anything else with a ``/`` is transformers': a
    ``local-dir:`` or plain folder holding ``config.json``, or an ``org/name`` Hub id.
    """
    if model.startswith(HF_HUB):
        return None
    if model.startswith(LOCAL_DIR):
        folder = Path(model[len(LOCAL_DIR):]).expanduser()
        transformers_layout = not (folder / "open_clip_config.json").is_file() and (folder / "config.json").is_file()
        return str(folder) if transformers_layout else None
    if "/" not in model and os.sep not in model and not os.path.isdir(model):
        return None
    directory = checkpoint_dir(model)
    if directory is None:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(model)
        return model
    return str(directory)


def _checkpoint_json(source: str, name: str) -> dict:
    """One JSON file of a transformers checkpoint (a folder, or fetched from the Hub)."""
    if os.path.isdir(source):
        path = Path(source) / name
        if not path.is_file():
            raise FileNotFoundError(f"CLIP checkpoint {source} has no {name} (expected {path})")
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(source, name))
    return json.loads(path.read_text())


def _converted_preprocess(source: str, image_size: int) -> dict:
    """open_clip's ``preprocess_cfg`` for a checkpoint's ``preprocessor_config.json`` (CLIPImageProcessor).

    CLIP's processing (resize the short side to ``shortest_edge``, center-crop
    ``crop_size``, scale by 1/255, normalise) is open_clip's ``shortest`` mode when
    the edge, the crop and the model's input size agree; other settings are refused.
    """
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # CLIPImageProcessor's defaults too

    settings = _checkpoint_json(source, "preprocessor_config.json")
    size, crop = settings.get("size", image_size), settings.get("crop_size", image_size)
    edge = size.get("shortest_edge") if isinstance(size, dict) else size
    crop = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (crop, crop)
    problems = []
    if not (settings.get("do_resize", True) and settings.get("do_center_crop", True)) or edge != image_size or crop != (image_size, image_size):
        problems.append(f"resize to {size} and crop {settings.get('crop_size')} (needed: short side and crop {image_size})")
    if not settings.get("do_normalize", True) or not settings.get("do_rescale", True) or abs(settings.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
        problems.append("no 1/255 rescale and normalisation")
    resample = settings.get("resample", 3)
    if resample not in _RESAMPLE:
        problems.append(f"resample {resample} (supported: {sorted(_RESAMPLE)})")
    if problems:
        raise ValueError(f"backend 'clip' cannot follow the image processing of {source}: {'; '.join(problems)}")
    return {"size": image_size, "mode": "RGB", "mean": list(settings.get("image_mean", OPENAI_DATASET_MEAN)),
            "std": list(settings.get("image_std", OPENAI_DATASET_STD)), "interpolation": _RESAMPLE[resample],
            "resize_mode": "shortest", "fill_color": 0}


def _converted_config(source: str) -> dict:
    """``{"model_cfg", "preprocess_cfg"}`` of the open_clip model equivalent to a transformers ``CLIPModel`` checkpoint."""
    from transformers import AutoConfig

    if os.path.isdir(source) and not (Path(source) / "config.json").is_file():
        hint = " (it holds open_clip_config.json: name it 'local-dir:' + the path)" \
            if (Path(source) / "open_clip_config.json").is_file() else ""
        raise FileNotFoundError(f"CLIP checkpoint {source} has no config.json (expected {Path(source) / 'config.json'}){hint}")
    config = AutoConfig.from_pretrained(source)
    if getattr(config, "model_type", None) != "clip":
        raise ValueError(
            f"backend 'clip' reads transformers checkpoints of model_type 'clip' (CLIPModel); "
            f"{source} has model_type {getattr(config, 'model_type', None)!r}"
        )
    vision, text = config.vision_config, config.text_config
    activations = {vision.hidden_act, text.hidden_act}
    if len(activations) > 1 or not activations <= {"quick_gelu", "gelu"}:
        raise ValueError(f"backend 'clip' needs both towers on quick_gelu or both on gelu; {source} uses {sorted(activations)}")
    if {vision.layer_norm_eps, text.layer_norm_eps} != {1e-5}:
        raise ValueError(f"backend 'clip' needs layer_norm_eps 1e-5 (open_clip's); {source} uses "
                         f"{vision.layer_norm_eps} and {text.layer_norm_eps}")

    def tower(tower_config) -> dict:
        return {"layers": tower_config.num_hidden_layers, "width": tower_config.hidden_size,
                "mlp_ratio": tower_config.intermediate_size / tower_config.hidden_size}

    model_cfg = {
        "embed_dim": config.projection_dim,
        "quick_gelu": activations == {"quick_gelu"},
        "vision_cfg": {**tower(vision), "image_size": vision.image_size, "patch_size": vision.patch_size,
                       "head_width": vision.hidden_size // vision.num_attention_heads},
        "text_cfg": {**tower(text), "heads": text.num_attention_heads, "context_length": text.max_position_embeddings,
                     "vocab_size": text.vocab_size},
    }
    return {"model_cfg": model_cfg, "preprocess_cfg": _converted_preprocess(source, vision.image_size)}


def open_clip_state_dict(state: Dict[str, torch.Tensor], vision_layers: int, text_layers: int) -> Dict[str, torch.Tensor]:
    """A transformers ``CLIPModel`` state dict in open_clip's ``CLIP`` names.

    Per block, the query, key and value projections become one ``in_proj``
    (``nn.MultiheadAttention``'s, in that order); the projections are transposed
    (open_clip multiplies ``x @ proj``).
    """
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    out = {}

    def blocks(source: str, target: str, count: int):
        for index in range(count):
            src, dst = f"{source}.encoder.layers.{index}.", f"{target}.resblocks.{index}."
            for part in ("weight", "bias"):
                out[dst + "attn.in_proj_" + part] = torch.cat([state[f"{src}self_attn.{n}_proj.{part}"] for n in "qkv"])
                for old, new in names.items():
                    out[f"{dst}{new}.{part}"] = state[f"{src}{old}.{part}"]

    blocks("vision_model", "visual.transformer", vision_layers)
    blocks("text_model", "transformer", text_layers)
    for part in ("weight", "bias"):
        out[f"visual.ln_pre.{part}"] = state[f"vision_model.pre_layrnorm.{part}"]
        out[f"visual.ln_post.{part}"] = state[f"vision_model.post_layernorm.{part}"]
        out[f"ln_final.{part}"] = state[f"text_model.final_layer_norm.{part}"]
    out.update({
        "visual.class_embedding": state["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": state["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": state["vision_model.embeddings.position_embedding.weight"],
        "visual.proj": state["visual_projection.weight"].T,
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "text_projection": state["text_projection.weight"].T,
        "logit_scale": state["logit_scale"],
    })
    return {name: tensor.contiguous() for name, tensor in out.items()}


class CheckpointTokenizer:
    """A checkpoint's own transformers tokenizer, called as open_clip's: texts -> ``[N, context]`` ids, 0-padded.

    A text longer than the context is cut to it with the end-of-text token last (as
    open_clip cuts). The text tower pools at the largest id (argmax), which is the
    end-of-text token's only where that token has the largest id (as in OpenAI's vocabulary).
    """

    def __init__(self, tokenizer, context_length: int, source: str):
        eos = tokenizer.eos_token_id
        if eos is None or eos != max(tokenizer.get_vocab().values()):
            raise ValueError(
                f"backend 'clip' pools the text tower at the largest token id; the end-of-text token of {source} "
                f"({tokenizer.eos_token!r}, id {eos}) is not the largest id"
            )
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: Sequence[str], context_length: Optional[int] = None) -> torch.Tensor:
        context = context_length or self.context_length
        ids = self.tokenizer(list(texts), max_length=context, truncation=True)["input_ids"]
        tokens = torch.zeros(len(ids), context, dtype=torch.long)
        for row, sequence in zip(tokens, ids):
            row[:len(sequence)] = torch.tensor(sequence)
        return tokens


def _load_transformers(source: str, precision: str, device: torch.device):
    """The open_clip model, image transform and tokenizer of a transformers CLIP checkpoint."""
    import open_clip
    from open_clip.model import convert_weights_to_lp, get_cast_dtype
    from transformers import AutoTokenizer, CLIPModel

    converted = _converted_config(source)
    model_cfg, preprocess_cfg = converted["model_cfg"], converted["preprocess_cfg"]
    checkpoint = CLIPModel.from_pretrained(source, dtype=torch.float32)
    state = open_clip_state_dict(checkpoint.state_dict(), model_cfg["vision_cfg"]["layers"], model_cfg["text_cfg"]["layers"])
    del checkpoint
    model = open_clip.CLIP(**model_cfg, cast_dtype=get_cast_dtype(precision))
    model.load_state_dict(state)
    model.eval().to(device=device)
    if precision != "fp32":
        convert_weights_to_lp(model, dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[precision])
    model.visual.preprocess_cfg = preprocess_cfg
    transform = open_clip.image_transform(
        preprocess_cfg["size"], is_train=False, mean=preprocess_cfg["mean"], std=preprocess_cfg["std"],
        resize_mode=preprocess_cfg["resize_mode"], interpolation=preprocess_cfg["interpolation"],
    )
    tokenizer = CheckpointTokenizer(AutoTokenizer.from_pretrained(source), model_cfg["text_cfg"]["context_length"], source)
    return model, transform, tokenizer


# ----------------------------------------------------------------------------- open_clip configs
def open_clip_config(model: str, pretrained: Optional[str] = None) -> dict:
    """``{"model_cfg": ..., "preprocess_cfg": ...}`` for a model name, without loading weights.

    For a built-in name, the preprocessing comes from the model config and, when
    ``pretrained`` is a known tag, from that tag's settings (as open_clip does). A
    transformers checkpoint gives the config of its equivalent open_clip model.
    """
    import open_clip

    source = transformers_source(model)
    if source is not None:
        return _converted_config(source)
    if model.startswith(LOCAL_DIR):
        return _read_local_config(model[len(LOCAL_DIR):])
    if model.startswith(HF_HUB):
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(model[len(HF_HUB):], "open_clip_config.json")).read_text())
    model_cfg = open_clip.get_model_config(model)
    if model_cfg is None:
        raise ValueError(
            f"unknown open_clip model {model!r}: not in open_clip.list_models(); "
            "use a listed name, 'hf-hub:org/name' or 'local-dir:/path'"
        )
    preprocess = {"size": model_cfg.get("vision_cfg", {}).get("image_size", 224), "resize_mode": "shortest"}
    preprocess.update(model_cfg.get("preprocess_cfg") or {})
    tag = open_clip.get_pretrained_cfg(model, pretrained) if pretrained else {}
    preprocess.update({k: v for k, v in tag.items() if k in ("mean", "std", "interpolation", "resize_mode")})
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess}


def _aligned_problem(preprocess_cfg: dict) -> Optional[str]:
    """Why ``geometry="aligned"`` cannot invert this preprocessing, or ``None`` when it can."""
    size = preprocess_cfg.get("size", 224)
    square = isinstance(size, int) or size[0] == size[1]
    if preprocess_cfg.get("resize_mode", "shortest") not in ("shortest", "squash") or not square:
        return f"geometry='aligned' supports square 'shortest' or 'squash' preprocessing, not {preprocess_cfg}"
    return None


def _vision_cfg(model: str) -> dict:
    vision = open_clip_config(model)["model_cfg"].get("vision_cfg", {})
    if "timm_model_name" in vision and vision["timm_model_name"] or not isinstance(vision.get("layers"), int):
        raise ValueError(f"backend 'clip' needs an open_clip VisionTransformer; {model!r} has a different image tower")
    return vision


@register_backend
class ClipBackend(Backend):
    """open_clip ViT with a [CLS] token (see module docstring)."""

    name = "clip"
    defaults = {"model": "ViT-L-14-336", "pretrained": "openai", "layer_index": 22}
    map_names = ("attention", "tokens")

    @classmethod
    def resolve_config(cls, config: PrompterConfig) -> PrompterConfig:
        import open_clip

        config = super().resolve_config(config)
        source = transformers_source(config.model)
        if source is not None:
            return cls._resolve_transformers(config, source)
        cls._check_model(config)
        digest = None
        if config.model.startswith(LOCAL_DIR):
            digest = sha256_file(_local_weights(config.model[len(LOCAL_DIR):]))
        elif config.model.startswith(HF_HUB):
            pass  # the repo id is the identifier; weights come from the Hub cache
        elif config.pretrained is None:
            warnings.warn(
                f"{config.model} with pretrained=None has RANDOM weights: masks show the arithmetic, not relevance",
                UserWarning,
                stacklevel=3,  # resolve_config <- ImagePrompter.__init__ <- caller
            )
        elif os.path.isfile(config.pretrained):
            digest = sha256_file(Path(config.pretrained))
        elif config.pretrained not in open_clip.list_pretrained_tags_by_model(config.model):
            raise ValueError(
                f"pretrained {config.pretrained!r} is neither a weights file nor a known tag for {config.model!r} "
                f"(known tags: {open_clip.list_pretrained_tags_by_model(config.model)})"
            )
        return config.replace(weights_sha256=digest)

    @classmethod
    def _check_model(cls, config: PrompterConfig) -> None:
        """The layer index and the geometry against the model's config (read without weights)."""
        vision = _vision_cfg(config.model)
        if not 0 <= config.layer_index < vision["layers"]:
            raise ValueError(
                f"layer_index {config.layer_index} is out of range for {config.model!r}, "
                f"whose image tower has {vision['layers']} blocks (valid: 0..{vision['layers'] - 1})"
            )
        if config.geometry == "aligned":
            problem = _aligned_problem(open_clip_config(config.model, config.pretrained).get("preprocess_cfg", {}))
            if problem:
                raise ValueError(f"{problem}; {config.model!r} uses it")

    @classmethod
    def _resolve_transformers(cls, config: PrompterConfig, source: str) -> PrompterConfig:
        """A transformers checkpoint: weights from ``model`` only; a folder is checked and hashed, a Hub id when it loads."""
        if config.pretrained is not None:
            raise ValueError(
                f"{config.model!r} is a transformers CLIP checkpoint, which holds its weights: "
                f"pretrained must be None, got {config.pretrained!r}"
            )
        if not os.path.isdir(source):
            if config.layer_index < 0:
                raise ValueError(f"layer_index must be >= 0, got {config.layer_index}")
            return config.replace(weights_sha256=None)  # checked against the config when the model loads
        cls._check_model(config)
        folder = Path(source)
        if not any(all((folder / name).is_file() for name in names) for names in _TOKENIZER_FILES):
            raise FileNotFoundError(
                f"CLIP checkpoint {source} has no tokenizer (expected {' or '.join(' + '.join(n) for n in _TOKENIZER_FILES)})"
            )
        return config.replace(weights_sha256=weights_digest(folder))

    @classmethod
    def model_names_weights(cls, config: PrompterConfig) -> bool:
        return config.model.startswith((LOCAL_DIR, HF_HUB)) or "/" in config.model or os.sep in config.model

    @classmethod
    def portable_config(cls, config: PrompterConfig) -> PrompterConfig:
        """A ``local-dir:`` or transformers checkpoint folder by its name, a ``pretrained`` weights file by its file name."""
        changes = {}
        if config.model.startswith(LOCAL_DIR):
            changes["model"] = LOCAL_DIR + local_name(config.model[len(LOCAL_DIR):])
        elif not config.model.startswith(HF_HUB) and checkpoint_path(config.model) is not None:
            changes["model"] = LOCAL_DIR + local_name(config.model)
        pretrained = config.pretrained
        if pretrained is not None and ("/" in pretrained or os.sep in pretrained or os.path.isfile(pretrained)):
            changes["pretrained"] = local_name(pretrained)
        return config.replace(**changes)

    @classmethod
    def model_name_part(cls, config: PrompterConfig) -> Tuple[str, bool]:
        """An ``hf-hub:org/name`` repo as ``org-name``, never exact (``/`` and the prefix are lost)."""
        if config.model.startswith(HF_HUB):
            return slug(config.model[len(HF_HUB):]), False
        return super().model_name_part(config)

    @classmethod
    def grid_shape(cls, config: PrompterConfig) -> Tuple[int, int]:
        vision = _vision_cfg(config.model)
        size, patch = vision.get("image_size", 224), vision.get("patch_size", 16)
        size = (size, size) if isinstance(size, int) else tuple(size)
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        return size[0] // patch[0], size[1] // patch[1]

    def __init__(self, config: PrompterConfig, device: torch.device):
        super().__init__(config, device)
        import open_clip

        precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]
        logger.info("loading CLIP %s (pretrained=%s) on %s as %s", config.model, config.pretrained, device, precision)
        source = transformers_source(config.model)
        if source is not None:
            if not os.path.isdir(source):
                self._check_model(config)  # a Hub id's config is first read here
            self.model, self.preprocess, self.tokenizer = _load_transformers(source, precision, device)
            self._check_architecture()
            self.preprocess_cfg = dict(self.model.visual.preprocess_cfg)
            return
        if config.model.startswith(HF_HUB):
            # open_clip only logs a warning and goes on with RANDOM weights when an hf-hub model's
            # weights cannot be downloaded; fetching them first makes that failure an error.
            from open_clip.pretrained import download_pretrained_from_hf

            download_pretrained_from_hf(config.model[len(HF_HUB):])
        pretrained = None if config.model.startswith((LOCAL_DIR, HF_HUB)) else config.pretrained
        model, _, self.preprocess = open_clip.create_model_and_transforms(
            config.model, pretrained=pretrained, precision=precision, device=device
        )
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(config.model)
        self._check_architecture()
        self.preprocess_cfg = dict(getattr(self.model.visual, "preprocess_cfg", {}) or {})

    def _check_architecture(self):
        visual = getattr(self.model, "visual", None)
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        problems = []
        if blocks is None or not hasattr(visual, "_embeds"):
            problems.append("no ViT image tower")
        else:
            if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
                problems.append("pooling is not the [CLS] token")
            if getattr(visual, "proj", None) is None or getattr(visual, "final_ln_after_pool", False):
                problems.append("no linear projection after ln_post")
            if not all(isinstance(block.attn, torch.nn.MultiheadAttention) for block in blocks):
                problems.append("custom attention blocks")
            if not visual.transformer.batch_first:
                problems.append("sequence-first transformer")
        if problems:
            raise ValueError(f"backend 'clip' cannot read {self.config.model!r}: {', '.join(problems)}")

    # ------------------------------------------------------------------ text
    def encode_questions(self, questions: Sequence[str]) -> torch.Tensor:
        """Unit text embeddings ``[B, E]`` (float32); each distinct question is encoded once."""
        unique = list(dict.fromkeys(questions))
        tokens = self.tokenizer(unique)
        self._warn_if_cut(questions, unique, tokens)
        tokens = tokens.to(self.device)
        features = self._encode_text(tokens).float()
        features = F.normalize(features, dim=-1)
        return features[torch.tensor([unique.index(q) for q in questions], device=self.device)]

    def _warn_if_cut(self, questions: Sequence[str], unique: Sequence[str], tokens: torch.Tensor):
        """One warning per batch naming how many questions the tokenizer cut to the text tower's context.

        open_clip truncates silently; a question is cut exactly when tokenizing it with
        one more position of context gives other tokens in the first ``context`` ones.
        """
        context = tokens.shape[1]
        longer = self.tokenizer(list(unique), context_length=context + 1)[:, :context]
        cut = {question for question, short, long in zip(unique, tokens, longer) if not torch.equal(short, long)}
        if cut:
            example = next(q for q in questions if q in cut)
            logger.warning(
                "%d of %d questions in this batch are longer than the text tower's context of %d tokens and were cut "
                "to it (the mask follows only their beginning), e.g. %r",
                sum(q in cut for q in questions), len(questions), context, example[:80] + ("..." if len(example) > 80 else ""),
            )

    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        model = self.model
        causal = getattr(model, "attn_mask", None) is not None and getattr(model, "text_pool_type", None) == "argmax"
        if not causal or not hasattr(model, "token_embedding"):
            return model.encode_text(tokens)
        # Causal attention: positions after the end-of-text token cannot change it,
        # so encoding only up to the longest question is exact (and several times cheaper).
        length = int(tokens.argmax(dim=-1).max()) + 1
        tokens = tokens[:, :length]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        projection = model.text_projection
        return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection

    # ----------------------------------------------------------------- image
    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's input ``[B, 3, S, S]``: open_clip's own transform of each image, on :attr:`threads` threads.

        The transform resizes the 8-bit image first, so the float copy is the model's size, never the image's.
        """
        return torch.stack(parallel.thread_map(self.preprocess, images, self.threads)).to(self.device, self.dtype)

    def raw_maps(self, pixels: torch.Tensor, text: torch.Tensor, layers: Sequence[int]) -> Dict[int, Dict[str, torch.Tensor]]:
        """``{block: {"attention": A, "tokens": T}}``, maps ``[B, gh, gw]`` (float32) of docs/method.md steps 3-5.

        Blocks ``0..max(layers)`` run once; each requested block is read on the way.
        """
        visual = self.model.visual
        blocks = visual.transformer.resblocks
        wanted = sorted(set(layers))
        if not wanted or not 0 <= wanted[0] <= wanted[-1] < len(blocks):
            raise ValueError(f"layers {list(layers)} are not blocks of {self.config.model!r} (valid: 0..{len(blocks) - 1})")
        # u: the text direction pulled back through proj and ln_post's gain.
        u = visual.ln_post.weight.float() * (text @ visual.proj.float().T)
        gh, gw = visual.grid_size
        x = visual._embeds(pixels)
        maps = {}
        for index in range(wanted[-1] + 1):
            block = blocks[index]
            if index not in wanted:
                x = block(x)
                continue
            attention = self._cls_attention_scores(block, x, u)
            x = block(x)
            tokens = (x[:, 1:].float() * u[:, None, :]).sum(-1)
            maps[index] = {"attention": attention.reshape(-1, gh, gw), "tokens": tokens.reshape(-1, gh, gw)}
        return maps

    @staticmethod
    def _cls_attention_scores(block, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``A[m] = c[m] . u`` for the [CLS] query of ``block``, patch sources only.

        ``c[m] = sum_j a_j[m] W_out[:, j] v_j[m]``, so ``c[m] . u = sum_j a_j[m]
        (v_j[m] . W_out[:, j]^T u)``: the per-head, per-source vectors never need
        to be formed (the reference code builds them for every block). The query
        and the text direction are also folded into the key and value weights
        (``q0_j . k_j[m] = h[m] . W_k_j^T q0_j`` + a constant the softmax ignores),
        so the tokens meet one ``[D, 2 * heads]`` matrix instead of the ``[D, 2D]``
        key/value projection.
        """
        attn = block.attn
        h = block.ln_1(x).float()
        width = h.shape[-1]
        heads = attn.num_heads
        head_dim = width // heads
        weight = attn.in_proj_weight.float()
        bias = attn.in_proj_bias.float() if attn.in_proj_bias is not None else torch.zeros(3 * width, device=h.device)
        query = F.linear(h[:, 0], weight[:width], bias[:width]).view(-1, heads, head_dim)
        gamma = getattr(block.ls_1, "gamma", None)
        direction = u * gamma.float() if gamma is not None else u
        w = (direction @ attn.out_proj.weight.float()).view(-1, heads, head_dim)
        key_weight = weight[width:2 * width].view(heads, head_dim, width)
        value_weight = weight[2 * width:].view(heads, head_dim, width)
        folded = torch.cat(
            [torch.einsum("bhd,hde->bhe", query * head_dim ** -0.5, key_weight), torch.einsum("bhd,hde->bhe", w, value_weight)],
            dim=1,
        )  # [B, 2 * heads, D]
        logits, values = torch.einsum("bnd,bkd->bkn", h, folded).split(heads, dim=1)  # [B, heads, n] each
        values = values + (bias[2 * width:].view(heads, head_dim) * w).sum(-1)[..., None]
        return (torch.softmax(logits, dim=-1) * values).sum(1)[:, 1:]

    def grid_box(self, size: Tuple[int, int]) -> Tuple[float, float, float, float]:
        """Grid-coordinate box covering the whole image, inverting resize + center crop."""
        gh, gw = self.model.visual.grid_size
        if self.preprocess_cfg.get("resize_mode", "shortest") == "squash":
            return (0.0, 0.0, float(gw), float(gh))
        side = self.preprocess_cfg.get("size", self.model.visual.image_size[0])
        side = side if isinstance(side, int) else side[0]
        width, height = size
        # torchvision Resize(int): short side -> side, long side -> int(side * long / short).
        if width <= height:
            resized_w, resized_h = side, int(side * height / width)
        else:
            resized_w, resized_h = int(side * width / height), side
        top, left = int(round((resized_h - side) / 2.0)), int(round((resized_w - side) / 2.0))
        return (-left * gw / side, -top * gh / side, (resized_w - left) * gw / side, (resized_h - top) * gh / side)

    @classmethod
    def recipe(cls, maps: Dict[str, torch.Tensor], enhance_coe: float, kernel_size: int) -> torch.Tensor:
        return masks.clip_mask(maps["attention"], maps["tokens"], enhance_coe, kernel_size)

    @torch.inference_mode()
    def maps(self, images: Sequence[Image.Image], questions: Sequence[str], layers: Sequence[int]) -> RawMaps:
        raw = self.raw_maps(self.pixels(images), self.encode_questions(questions), layers)
        aligned = _aligned_problem(self.preprocess_cfg) is None
        return RawMaps(
            layers={layer: {name: m.cpu() for name, m in maps.items()} for layer, maps in raw.items()},
            boxes=[self.grid_box(image.size) if aligned else None for image in images],
        )
