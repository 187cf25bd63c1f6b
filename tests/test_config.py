"""PrompterConfig (validation, canonical forms, JSON) and ImagePrompter construction errors."""

import dataclasses
import hashlib
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import hf_api_prompt
from hf_api_prompt import ImagePrompter, PrompterConfig

from conftest import make_local_clip

BASE = dict(backend="clip", model="ViT-B-16", pretrained=None, layer_index=10)


def cfg(**changes) -> PrompterConfig:
    return PrompterConfig(**{**BASE, **changes})


def weights_file(model: str):
    return next(p for p in _local_dir(model).iterdir() if p.name.startswith("open_clip_model"))


def _local_dir(model: str):
    from pathlib import Path

    assert model.startswith("local-dir:")
    return Path(model[len("local-dir:"):])


# --------------------------------------------------------------------------- JSON


def test_to_json_is_sorted_compact_and_stamped():
    config = cfg(enhance_coe=2.5, grayscale=128, dtype="fp16", interpolation="bicubic")
    text = config.to_json()
    data = json.loads(text)
    # Sorted keys (the dataclass field order starts with "backend", "model": not sorted).
    assert list(data) == sorted(data)
    assert list(data) != [f.name for f in dataclasses.fields(PrompterConfig)]
    # Compact: byte-identical to the canonical sorted, separator-free dump of its own content.
    assert text == json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert " " not in text
    assert data["library_version"] == hf_api_prompt.__version__
    assert data["enhance_coe"] == 2.5 and data["grayscale"] == 128
    assert data["dtype"] == "float16" and data["interpolation"] == "BICUBIC"
    assert data["pretrained"] is None and data["weights_sha256"] is None
    # Every field is in the JSON: nothing that can change an output is left out.
    assert set(data) == {f.name for f in dataclasses.fields(PrompterConfig)}


def test_to_json_is_stable_across_equal_configs():
    a = cfg(interpolation="lanczos", dtype="fp32", enhance_coe=5)
    b = cfg(interpolation=Image.Resampling.LANCZOS, dtype="float32", enhance_coe=5.0)
    assert a == b
    assert a.to_json() == b.to_json()


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"pretrained": "openai", "layer_index": 0, "enhance_coe": 0.5, "kernel_size": 7},
        {"interpolation": "nearest", "grayscale": 255, "geometry": "aligned", "on_error": "passthrough"},
        {"image_column": "img", "question_column": "q", "masked_image_column": "m", "heatmap_column": "h",
         "status_column": "s", "device": "cpu", "dtype": "bf16"},
    ],
)
def test_round_trip_json_dict_and_file(tmp_path, changes):
    config = cfg(**changes)
    assert PrompterConfig.from_json(config.to_json()) == config
    assert PrompterConfig.from_dict(config.to_dict()) == config
    assert PrompterConfig.from_dict(json.loads(config.to_json())) == config
    path = tmp_path / "prompter.json"
    path.write_text(config.to_json())
    back = PrompterConfig.from_json(path.read_text())
    assert back == config
    assert back.to_json() == config.to_json()
    for key, value in changes.items():
        if key not in ("interpolation", "dtype"):
            assert getattr(back, key) == value


def test_library_version_is_stamped_and_round_trips():
    config = cfg()
    assert config.library_version == hf_api_prompt.__version__
    # A config written by another version reads back as written (the card says what produced it).
    data = {**config.to_dict(), "library_version": "0.0.1"}
    assert PrompterConfig.from_dict(data).library_version == "0.0.1"
    assert PrompterConfig.from_dict(data) != config


def test_unknown_keys_rejected():
    data = {**cfg().to_dict(), "enhance": 5.0, "zzz": 1}
    with pytest.raises(ValueError, match=r"unknown PrompterConfig keys.*'enhance'.*'zzz'"):
        PrompterConfig.from_dict(data)
    with pytest.raises(ValueError, match="enhance"):
        PrompterConfig.from_json(json.dumps(data))
    with pytest.raises(TypeError):
        PrompterConfig(**BASE, enhance=5.0)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kernel_size", [0, 2, 4, -1, -3, 3.0, "3", True, False])
def test_bad_kernel_size(kernel_size):
    with pytest.raises(ValueError, match="kernel_size"):
        cfg(kernel_size=kernel_size)


@pytest.mark.parametrize("kernel_size", [1, 3, 5, 9])
def test_odd_kernel_size_accepted(kernel_size):
    assert cfg(kernel_size=kernel_size).kernel_size == kernel_size


@pytest.mark.parametrize("grayscale", [-1, 256, 1000, 1.5, 127.0, True, False, "0", None])
def test_bad_grayscale(grayscale):
    with pytest.raises(ValueError, match="grayscale"):
        cfg(grayscale=grayscale)


@pytest.mark.parametrize("grayscale", [0, 1, 128, 255])
def test_grayscale_bounds_accepted(grayscale):
    assert cfg(grayscale=grayscale).grayscale == grayscale


@pytest.mark.parametrize("geometry", ["stretch", "Paper", "", None])
def test_bad_geometry(geometry):
    with pytest.raises(ValueError, match="geometry"):
        cfg(geometry=geometry)


@pytest.mark.parametrize("on_error", ["skip", "ignore", "Raise", None])
def test_bad_on_error(on_error):
    with pytest.raises(ValueError, match="on_error"):
        cfg(on_error=on_error)


@pytest.mark.parametrize(
    "enhance_coe",
    [0, 0.0, -1.0, "5", "5.0", None, True, float("inf"), -float("inf"), float("nan"), np.float64("inf"), [5.0], 1j],
)
def test_bad_enhance_coe(enhance_coe):
    # A string used to raise a bare TypeError from ``>``; inf passed and was written to
    # api_variants.json as ``Infinity`` (not JSON); True passed as 1.0 (issue 10, section 4).
    with pytest.raises(ValueError, match=r"enhance_coe must be a finite number > 0, got "):
        cfg(enhance_coe=enhance_coe)


@pytest.mark.parametrize("enhance_coe, expected", [(np.float32(2.5), 2.5), (np.float64(0.25), 0.25), (7, 7.0), (1e-3, 1e-3)])
def test_enhance_coe_numbers_become_json_floats(enhance_coe, expected):
    config = cfg(enhance_coe=enhance_coe)
    assert type(config.enhance_coe) is float and config.enhance_coe == expected
    assert json.loads(config.to_json())["enhance_coe"] == expected


def test_to_json_never_writes_non_finite_numbers():
    # Strict JSON: a non-finite number that slipped past validation fails here instead of
    # reaching the dataset card as ``Infinity``/``NaN``.
    config = cfg()
    object.__setattr__(config, "enhance_coe", float("inf"))
    with pytest.raises(ValueError, match="JSON compliant"):
        config.to_json()


def test_enhance_coe_int_is_float():
    value = cfg(enhance_coe=3).enhance_coe
    assert value == 3.0 and type(value) is float


@pytest.mark.parametrize("layer_index", [1.0, "3", True, False, None])
def test_layer_index_must_be_int(layer_index):
    with pytest.raises(TypeError, match="layer_index"):
        cfg(layer_index=layer_index)


def test_output_columns_must_differ():
    with pytest.raises(ValueError, match="distinct"):
        cfg(heatmap_column="masked_image")
    with pytest.raises(ValueError, match="distinct"):
        cfg(on_error="passthrough", status_column="heatmap")
    # The status column only exists under passthrough, so it may share a name otherwise.
    assert cfg(status_column="heatmap").status_column == "heatmap"


def test_replace_revalidates():
    with pytest.raises(ValueError, match="kernel_size"):
        cfg().replace(kernel_size=4)
    assert cfg().replace(interpolation="bilinear").interpolation == "BILINEAR"


def test_replace_to_png_drops_the_jpeg_quality_it_had():
    """A default config holds jpeg_quality 75 (filled in for "source"); PNG has no quality, so a change to PNG
    (remask --image-format png, a recipe of an lmms-eval export) must not trip over the 75 it never asked for."""
    default = cfg()
    assert (default.image_format, default.jpeg_quality) == ("source", 75)
    png = default.replace(image_format="png")
    assert (png.image_format, png.jpeg_quality) == ("png", None)
    assert png == cfg(image_format="png")
    assert cfg(jpeg_quality=90).replace(image_format="jpeg").jpeg_quality == 90  # a JPEG format keeps its quality
    assert png.replace(image_format="jpeg").jpeg_quality == 75  # from PNG: the default quality
    with pytest.raises(ValueError, match="jpeg_quality=90 has no meaning with image_format='png'"):
        default.replace(image_format="png", jpeg_quality=90)  # a quality asked for with PNG is still refused


@pytest.mark.parametrize("interpolation", ["bogus", "lanczos3", "", "cubic"])
def test_unknown_interpolation(interpolation):
    with pytest.raises(ValueError, match="interpolation"):
        cfg(interpolation=interpolation)


@pytest.mark.parametrize(
    "given, expected",
    [
        ("lanczos", "LANCZOS"),
        ("LANCZOS", "LANCZOS"),
        ("Lanczos", "LANCZOS"),
        ("BICUBIC", "BICUBIC"),
        ("bicubic", "BICUBIC"),
        (" bilinear ", "BILINEAR"),
        ("nearest", "NEAREST"),
        ("box", "BOX"),
        ("hamming", "HAMMING"),
        (Image.Resampling.BICUBIC, "BICUBIC"),
        (Image.Resampling.LANCZOS, "LANCZOS"),
        (Image.Resampling.NEAREST, "NEAREST"),
    ],
)
def test_interpolation_canonicalised(given, expected):
    config = cfg(interpolation=given)
    assert config.interpolation == expected
    # The canonical name is a real PIL filter, and the same one that was asked for.
    assert Image.Resampling[config.interpolation].name == expected
    assert json.loads(config.to_json())["interpolation"] == expected


def test_default_interpolation_is_lanczos():
    assert cfg().interpolation == "LANCZOS"


@pytest.mark.parametrize(
    "given, expected",
    [
        ("fp16", "float16"),
        ("half", "float16"),
        ("float16", "float16"),
        ("FP16", "float16"),
        ("torch.float16", "float16"),
        (torch.float16, "float16"),
        ("bf16", "bfloat16"),
        ("bfloat16", "bfloat16"),
        (torch.bfloat16, "bfloat16"),
        ("fp32", "float32"),
        ("float", "float32"),
        ("float32", "float32"),
        (torch.float32, "float32"),
        (None, None),
    ],
)
def test_dtype_aliases(given, expected):
    config = cfg(dtype=given)
    assert config.dtype == expected
    if expected is not None:
        assert isinstance(getattr(torch, config.dtype), torch.dtype)


@pytest.mark.parametrize("dtype", ["int8", "fp8", "float64", "double", torch.float64])
def test_unsupported_dtype(dtype):
    with pytest.raises(ValueError, match="dtype"):
        cfg(dtype=dtype)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg().layer_index = 3


# --------------------------------------------------------------------------- ImagePrompter construction


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"unknown backend 'nope'.*clip"):
        ImagePrompter("nope", model="ViT-B-32", pretrained=None, layer_index=1)


def test_unknown_open_clip_model():
    with pytest.raises(ValueError, match=r"unknown open_clip model 'ViT-X-99'"):
        ImagePrompter("clip", model="ViT-X-99", pretrained=None, layer_index=1)


def test_layer_index_out_of_range_builtin_model_no_weights():
    # ViT-B-32 has 12 image blocks; this must fail without fetching any weights.
    with pytest.raises(ValueError, match=r"layer_index 22 .*12 blocks"):
        ImagePrompter("clip", model="ViT-B-32", pretrained=None, layer_index=22)


@pytest.mark.parametrize("layer_index", [3, 4, 100, -1])
def test_layer_index_out_of_range_local(tiny_clip, layer_index):
    with pytest.raises(ValueError, match=rf"layer_index {layer_index} .*3 blocks.*0\.\.2"):
        ImagePrompter("clip", model=tiny_clip, layer_index=layer_index)


@pytest.mark.parametrize("layer_index", [0, 1, 2])
def test_layer_index_in_range_local(tiny_clip, layer_index):
    assert ImagePrompter("clip", model=tiny_clip, layer_index=layer_index).config.layer_index == layer_index


def test_default_layer_index_too_deep_for_tiny_model(tiny_clip):
    # The paper default (22, for ViT-L-14-336) does not fit a 3-block model.
    with pytest.raises(ValueError, match="layer_index 22"):
        ImagePrompter("clip", model=tiny_clip)


def test_unknown_pretrained_tag():
    with pytest.raises(ValueError, match=r"pretrained 'no-such-tag'.*ViT-B-32"):
        ImagePrompter("clip", model="ViT-B-32", pretrained="no-such-tag", layer_index=3)


def test_pretrained_none_warns_random_weights():
    with pytest.warns(UserWarning, match="RANDOM") as record:
        prompter = ImagePrompter("clip", model="ViT-B-32", pretrained=None, layer_index=11)
    assert len([w for w in record if "RANDOM" in str(w.message)]) == 1
    assert prompter.config.pretrained is None
    assert prompter.config.weights_sha256 is None


def test_random_weights_warning_points_at_caller():
    with pytest.warns(UserWarning, match="RANDOM") as record:
        ImagePrompter("clip", model="ViT-B-32", pretrained=None, layer_index=11)
    # The warning is attributed to the line that built the prompter, not to library
    # or pytest internals (so warning filters and log lines point at user code).
    assert [w.filename for w in record if "RANDOM" in str(w.message)] == [__file__]


def test_pretrained_weights_file_is_hashed(tmp_path, tiny_clip):
    # A weights file passed as ``pretrained`` is identified by its content.
    source = weights_file(tiny_clip)
    copy = tmp_path / "weights.safetensors"
    shutil.copyfile(source, copy)
    prompter = ImagePrompter("clip", model="ViT-B-32", pretrained=str(copy), layer_index=3)
    assert prompter.config.weights_sha256 == hashlib.sha256(copy.read_bytes()).hexdigest()


def test_local_model_does_not_warn(tiny_clip):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImagePrompter("clip", model=tiny_clip, layer_index=1)


def test_local_dir_missing_weights(tmp_path, tiny_clip):
    bare = tmp_path / "no_weights"
    bare.mkdir()
    shutil.copyfile(_local_dir(tiny_clip) / "open_clip_config.json", bare / "open_clip_config.json")
    with pytest.raises(FileNotFoundError, match=r"no weights file.*open_clip_model\.safetensors"):
        ImagePrompter("clip", model=f"local-dir:{bare}", layer_index=1)


def test_local_dir_missing_config(tmp_path, tiny_clip):
    bare = tmp_path / "no_config"
    bare.mkdir()
    shutil.copyfile(weights_file(tiny_clip), bare / "open_clip_model.safetensors")
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        ImagePrompter("clip", model=f"local-dir:{bare}", layer_index=1)


def test_local_dir_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        ImagePrompter("clip", model=f"local-dir:{tmp_path / 'absent'}", layer_index=1)


def test_weights_sha256_is_content_hash(tmp_path, tiny_clip):
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    expected = hashlib.sha256(weights_file(tiny_clip).read_bytes()).hexdigest()
    assert prompter.config.weights_sha256 == expected
    # Different weights (another seed) give another hash.
    other = make_local_clip(tmp_path / "other", seed=1)
    other_sha = ImagePrompter("clip", model=other, layer_index=1).config.weights_sha256
    assert other_sha == hashlib.sha256(weights_file(other).read_bytes()).hexdigest()
    assert other_sha != expected


def test_filled_fields_cannot_be_passed(tiny_clip):
    for name, value in (("weights_sha256", "0" * 64), ("library_version", "9.9")):
        with pytest.raises(TypeError, match=name):
            ImagePrompter("clip", model=tiny_clip, layer_index=1, **{name: value})


def test_unknown_parameter_rejected(tiny_clip):
    with pytest.raises(TypeError, match="enhance"):
        ImagePrompter("clip", model=tiny_clip, layer_index=1, enhance=5.0)


def test_bad_parameter_reaches_config_validation(tiny_clip):
    with pytest.raises(ValueError, match="kernel_size"):
        ImagePrompter("clip", model=tiny_clip, layer_index=1, kernel_size=2)
    with pytest.raises(ValueError, match="interpolation"):
        ImagePrompter("clip", model=tiny_clip, layer_index=1, interpolation="smooth")


@pytest.mark.parametrize("name, value", [("max_new_tokens", 20), ("answer_column", "answer")])
def test_generative_only_parameters_rejected_for_clip(tiny_clip, name, value):
    with pytest.raises(ValueError, match=rf"{name}.*clip"):
        ImagePrompter("clip", model=tiny_clip, layer_index=1, **{name: value})


def test_from_config_gives_equal_config(tiny_clip):
    prompter = ImagePrompter(
        "clip", model=tiny_clip, layer_index=2, enhance_coe=2, kernel_size=5, interpolation="bicubic",
        grayscale=64, geometry="aligned", image_column="img", question_column="q",
        masked_image_column="m", heatmap_column="h", on_error="passthrough", status_column="s",
        device="cpu", dtype="fp32",
    )
    again = ImagePrompter.from_config(prompter.config)
    assert again.config == prompter.config
    assert again.config.to_json() == prompter.config.to_json()
    # Also from a config that went through JSON (as read back from a dataset card).
    assert ImagePrompter.from_config(PrompterConfig.from_json(prompter.config.to_json())).config == prompter.config


def test_from_config_builtin_random_weights():
    with pytest.warns(UserWarning, match="RANDOM"):
        prompter = ImagePrompter("clip", model="ViT-B-32", pretrained=None, layer_index=5)
    with pytest.warns(UserWarning, match="RANDOM"):
        again = ImagePrompter.from_config(prompter.config)
    assert again.config == prompter.config


def test_construction_does_not_load_model(tiny_clip, monkeypatch):
    import open_clip

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was built at construction")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", forbidden)
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    assert prompter.grid_shape == (8, 8)


# image_format and jpeg_quality
def test_config_defaults_and_validation():
    assert (cfg().image_format, cfg().jpeg_quality) == ("source", 75)
    assert cfg(image_format="jpeg").jpeg_quality == 75
    assert cfg(image_format="jpeg", jpeg_quality=1).jpeg_quality == 1
    assert cfg(image_format="png").jpeg_quality is None
    with pytest.raises(ValueError, match="jpeg_quality=80 has no meaning with image_format='png'"):
        cfg(image_format="png", jpeg_quality=80)
    for quality in (0, 101, 75.0, True, "75"):
        with pytest.raises(ValueError, match=r"jpeg_quality must be an int in \[1, 100\]"):
            cfg(image_format="source", jpeg_quality=quality)
    for image_format in ("webp", "PNG", None):
        with pytest.raises(ValueError, match="image_format must be one of"):
            cfg(image_format=image_format)


def test_config_of_an_earlier_version_is_png():
    earlier = cfg().to_dict()
    del earlier["image_format"], earlier["jpeg_quality"]
    config = PrompterConfig.from_dict(earlier)
    assert (config.image_format, config.jpeg_quality) == ("png", None)
    current = cfg(image_format="jpeg", jpeg_quality=90)
    assert PrompterConfig.from_json(current.to_json()) == current
