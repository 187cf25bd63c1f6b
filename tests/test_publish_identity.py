"""Publishing never loses or mislabels a variant: unique names, names independent of the checkout, honest
weights labels, and no file we did not write is ever overwritten."""

import io
import json
import re
import shutil

import pytest

from hf_api_prompt import ImagePrompter, PrompterConfig
from hf_api_prompt.publishing import custom_benchmark, publish_variant, render_card, variant_name
from hf_api_prompt.publishing.layout import read_card, read_index, write_variant
from hf_api_prompt.publishing.variants import VariantIndex
from hf_api_prompt.sharded import run_sharded, work_key

from conftest import make_local_clip
from publish_fixtures import NOT_IDENTITY, independent_hash, make_mmvet_like, tiny_built_variant

#: The paper's settings with today's defaults (images stored as JPEG q75 where the source is a JPEG, else PNG).
PAPER = PrompterConfig(backend="clip", model="ViT-L-14-336", pretrained="openai", layer_index=22)
#: The image formats a variant can be stored in: PNG (lossless, no quality), JPEG and the source's kind, at some qualities.
FORMATS = [dict(image_format="png")] + [dict(image_format=f, jpeg_quality=q) for f in ("jpeg", "source")
                                        for q in (1, 7, 75, 90, 100)]


def card_table(card) -> list:
    """The variant table of a rendered card: one ``{column header: cell}`` per row."""
    lines = [line[2:-2] for line in card.text.splitlines() if line.startswith("| ") and line.endswith(" |")]
    header = lines[0].split(" | ")
    assert header[0] == "config" and "images" in header, header
    return [dict(zip(header, line.split(" | "))) for line in lines[1:]]


# ------------------------------------------------------------------ 1. unique names


#: One change of each identity field of PAPER (and close floats), each giving another parameter set.
ONE_FIELD_CHANGES = [
    dict(enhance_coe=5.000001),
    dict(enhance_coe=2.5),
    dict(enhance_coe=2.50000001),
    dict(enhance_coe=1e-07),
    dict(enhance_coe=1.0000000000000002),  # the next float after 1.0
    dict(enhance_coe=1.0),
    dict(layer_index=21),
    dict(kernel_size=5),
    dict(interpolation="bicubic"),
    dict(grayscale=1),
    dict(geometry="aligned"),
    dict(prompt="crop"),
    dict(prompt="blur"),
    # each style's parameters, exactly (blur_radius 0.05 is blur's default, the same as dict(prompt="blur"))
    dict(prompt="blur", blur_radius=0.050000001),
    dict(prompt="blur", blur_radius=0.5),
    dict(prompt="crop", crop_mass=0.70000001),
    dict(prompt="crop", crop_padding=0.0),
    dict(prompt="crop", crop_min_size=0.0),
    dict(prompt="crop", crop_mass=0.1, crop_padding=0.7),  # values swapped between parameters
    dict(prompt="crop", crop_mass=0.7, crop_padding=0.1, crop_min_size=0.1, geometry="aligned"),
    dict(pretrained="laion2b_s32b_b82k"),
    dict(pretrained=None),
    dict(model="ViT-B-16"),
    dict(model="ViT-B-16", pretrained=None),
    dict(on_error="passthrough"),
    dict(dtype="float16"),
    dict(dtype="bfloat16"),
    dict(max_new_tokens=7),
    dict(relative_attention=True),
    dict(pretrained="/weights/a.pt", weights_sha256="1" * 64),
    dict(pretrained="/weights/a.pt", weights_sha256="2" * 64),
    # The stored images (their pixels differ): PNG, JPEG, and the source's kind at other qualities.
    dict(image_format="png"),
    dict(image_format="jpeg"),
    dict(image_format="jpeg", jpeg_quality=90),
    dict(jpeg_quality=90),
    dict(jpeg_quality=7),
]


def test_every_one_field_change_gives_another_name():
    configs = [PAPER] + [PAPER.replace(**change) for change in ONE_FIELD_CHANGES]
    assert len({c for c in configs}) == len(configs)  # the parameter sets themselves all differ
    names = [variant_name(c) for c in configs]
    clashes = {n: [c for c, m in zip([{}] + ONE_FIELD_CHANGES, names) if m == n] for n in names if names.count(n) > 1}
    assert not clashes, clashes
    assert all(re.fullmatch(r"[a-z0-9-]+", n) for n in names)


@pytest.mark.parametrize("coe, spelled", [(5.000001, "e5p000001"), (5.0, "e5"), (2.5, "e2p5"), (2.50000001, "e2p50000001")])
def test_enhance_coe_is_spelled_exactly(coe, spelled):
    # repr() is the shortest text that reads back as the same float; "." -> "p".
    assert variant_name(PAPER.replace(enhance_coe=coe)) == f"clip-vit-l-14-336-l22-{spelled}-k3-lanczos-g0-source75"


def test_every_identity_field_changes_the_name():
    """Each field of PrompterConfig that is not a column name, the device or the version changes the name."""
    import dataclasses

    changed = {f for change in ONE_FIELD_CHANGES for f in change}
    fields = {f.name for f in dataclasses.fields(PrompterConfig)} - NOT_IDENTITY
    assert fields <= changed | {"backend"}, fields - changed  # ONE_FIELD_CHANGES covers every identity field
    assert {"image_format", "jpeg_quality"} <= fields  # they change the stored pixels
    assert variant_name(PAPER.replace(backend="llava", pretrained=None)) != variant_name(PAPER.replace(pretrained=None))


@pytest.mark.parametrize("base", [
    PAPER, PAPER.replace(geometry="aligned", prompt="crop"),
    PrompterConfig(backend="clip", model="local-dir:/models/m", pretrained=None, layer_index=1, weights_sha256="ab" * 32),
    PrompterConfig(backend="llava", model="llava-hf/llava-1.5-13b-hf", pretrained=None, layer_index=20, max_new_tokens=20),
], ids=["paper", "aligned-crop", "local-clip", "llava"])
def test_configs_differing_only_in_format_never_share_a_name(base):
    configs = [base.replace(**fmt) for fmt in FORMATS]
    names = [variant_name(c) for c in configs]
    assert len(set(names)) == len(FORMATS), names
    assert not re.search(r"-(png|jpeg|source)", names[0]), names[0]  # FORMATS[0]: PNG adds no part
    for config, name in zip(configs[1:], names[1:]):  # the others are spelled in the readable part, not only in a hash
        part = f"{config.image_format}{config.jpeg_quality}"  # before llava's t{tokens} and the hash
        assert re.search(rf"-g0(-aligned-crop-m0p7-p0p1-s0p25)?-{part}(-t20)?(-h[0-9a-f]{{8}})?$", name), name


def test_open_clip_names_never_collide():
    """Names without a hash spell model and tag up to case and -/_/.: no two open_clip (model, tag) pairs meet there."""
    import open_clip

    pairs = [(m, t) for m, t in open_clip.list_pretrained()] + [(m, None) for m in open_clip.list_models()]
    names = [variant_name(PrompterConfig(backend="clip", model=m, pretrained=t, layer_index=0)) for m, t in pairs]
    assert len(set(names)) == len(set(pairs))


def test_close_floats_are_two_variants_in_one_folder(tmp_path):
    """enhance_coe 5 and 5.000001 used to share a name: the second write replaced the first's record."""
    for config in (PAPER, PAPER.replace(enhance_coe=5.000001), PAPER.replace(enhance_coe=2.5),
                   PAPER.replace(enhance_coe=2.50000001)):
        write_variant(tmp_path, tiny_built_variant(config))
    index = read_index(tmp_path)
    assert sorted(index[n].prompter["enhance_coe"] for n in index.names()) == [2.5, 2.50000001, 5.0, 5.000001]
    table = [line for line in read_card(tmp_path).text.splitlines() if line.startswith("| `")]
    assert len(table) == 4
    assert sorted(line.split(" | ")[6] for line in table) == ["2.5", "2.50000001", "5.0", "5.000001"]  # coe column


# ------------------------------------------------------------------ 2. names do not depend on the checkout


@pytest.fixture()
def two_checkouts(tmp_path, tiny_clip):
    """The same tiny CLIP folder at two different places (same folder name)."""
    source = tiny_clip.split(":", 1)[1]
    copies = [tmp_path / "checkout_a" / "models" / "my-clip", tmp_path / "elsewhere" / "b" / "my-clip"]
    for copy in copies:
        shutil.copytree(source, copy)
    return copies


def test_same_weights_in_two_checkouts_share_name_and_chunks(tmp_path, two_checkouts):
    prompters = [ImagePrompter("clip", model=f"local-dir:{copy}", layer_index=1) for copy in two_checkouts]
    rows = make_mmvet_like(2)
    assert variant_name(prompters[0].config) == variant_name(prompters[1].config)
    assert work_key(prompters[0], rows, 2) == work_key(prompters[1], rows, 2)
    work = tmp_path / "chunks"
    first, summary_a = run_sharded(prompters[0], rows, work, chunk_size=1)
    again, summary_b = run_sharded(prompters[1], rows, work, chunk_size=1)
    assert (summary_a.computed_chunks, summary_b.computed_chunks, summary_b.reused_chunks) == (2, 0, 2)
    assert again["heatmap"] == first["heatmap"]


def test_other_weights_in_a_folder_of_the_same_name_get_another_name(tmp_path, two_checkouts):
    other = make_local_clip(tmp_path / "third" / "my-clip", seed=1)
    same = ImagePrompter("clip", model=f"local-dir:{two_checkouts[0]}", layer_index=1).config
    assert variant_name(ImagePrompter("clip", model=other, layer_index=1).config) != variant_name(same)


def test_records_and_card_hold_no_absolute_model_path(tmp_path, two_checkouts):
    folder = tmp_path / "out"
    names = []
    for copy in two_checkouts:
        prompter = ImagePrompter("clip", model=f"local-dir:{copy}", layer_index=1)
        names.append(publish_variant(prompter, custom_benchmark("in-memory", "test"), output_dir=folder,
                                     dataset=make_mmvet_like(1), preview_rows=0)["config_name"])
    assert names[0] == names[1]
    records = (folder / "api_variants.json").read_text()
    card = (folder / "README.md").read_text()
    for text in (records, card):
        for copy in two_checkouts:
            assert str(copy.parent) not in text
        assert str(tmp_path / "checkout_a") not in text and str(tmp_path / "elsewhere") not in text
    prompter = json.loads(records)["variants"][names[0]]["prompter"]
    assert prompter["model"] == "local-dir:my-clip" and len(prompter["weights_sha256"]) == 64
    assert "`local-dir:my-clip`" in card and f"sha256 `{prompter['weights_sha256'][:12]}`" in card


def test_weight_files_and_llava_folders_count_by_name_and_sha256():
    a = PAPER.replace(model="ViT-B-16", pretrained="/one/place/w.pt", weights_sha256="c" * 64)
    assert variant_name(a) == variant_name(a.replace(pretrained="/other/place/w.pt"))
    assert variant_name(a) != variant_name(a.replace(weights_sha256="d" * 64))
    llava = PrompterConfig(backend="llava", model="/one/place/my-llava", pretrained=None, layer_index=1,
                           max_new_tokens=5, weights_sha256="e" * 64)
    assert variant_name(llava) == variant_name(llava.replace(model="/other/my-llava/"))
    assert variant_name(llava).startswith("llava-my-llava-l1-e5-k3-lanczos-g0-source75-t5-h")


def test_local_weights_without_their_sha256_are_refused():
    with pytest.raises(ValueError, match="weights_sha256 is not set"):
        variant_name(PAPER.replace(model="local-dir:/somewhere/m", pretrained=None))


# ------------------------------------------------------------------ 3. weights labels


def test_llava_hub_variant_is_not_called_random():
    config = ImagePrompter("llava").config  # validated offline: nothing is downloaded or loaded
    name = variant_name(config)
    assert "random" not in name.split("-")
    assert re.fullmatch(r"llava-llava-hf-llava-1-5-13b-hf-l20-e5-k3-lanczos-g0-source75-t20-h[0-9a-f]{8}", name), name
    card = render_card(VariantIndex().upsert(tiny_built_variant(config).record), load_path="x", is_hub=True)
    row = next(line for line in card.text.splitlines() if line.startswith(f"| `{name}`"))
    cells = [c.strip() for c in row.split(" | ")]
    assert cells[3:5] == ["`llava-hf/llava-1.5-13b-hf`", "`llava-hf/llava-1.5-13b-hf`"]  # model, weights
    assert "random" not in row


def test_clip_without_weights_is_still_called_random():
    config = PAPER.replace(model="ViT-B-16", pretrained=None, layer_index=10)
    assert "-random-" in variant_name(config)
    card = render_card(VariantIndex().upsert(tiny_built_variant(config).record), load_path="x", is_hub=True)
    row = next(line for line in card.text.splitlines() if line.startswith(f"| `{variant_name(config)}`"))
    assert [c.strip() for c in row.split(" | ")][4] == "random"


def jpeg_sources(rows):
    """``rows`` with each image as the bytes of a JPEG file, as most benchmarks' photos are stored."""
    def to_jpeg(row):
        buffer = io.BytesIO()
        row["image"].convert("RGB").save(buffer, format="JPEG", quality=95)
        return {"image": {"bytes": buffer.getvalue(), "path": None}}

    return rows.map(to_jpeg, features=rows.features)


def jpeg_tables(quality: int) -> dict:
    """The quantization tables Pillow writes at ``quality``: what identifies a JPEG's quality."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="JPEG", quality=quality)
    return Image.open(buffer).quantization


def test_the_card_says_how_each_variant_stores_its_images(tmp_path, tiny_clip):
    """The card's "images" column says what the files hold; a maps dataset leaves it open, and a variant remasked from
    it in a format is named as the direct run of that format would be."""
    from datasets import Image as ImageFeature, load_dataset
    from PIL import Image

    from hf_api_prompt.publishing import publish_remask, publish_sweep
    from hf_api_prompt.publishing.layout import read_card

    rows = jpeg_sources(make_mmvet_like(2))
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    folder = tmp_path / "out"
    [maps] = publish_sweep([prompter], custom_benchmark("in-memory", "test"), output_dir=folder, dataset=rows,
                           preview_rows=0, maps_only=True)["variants"]
    remask = dict(maps_config=maps["config_name"], output_dir=folder, preview_rows=0)
    remasked = publish_remask(folder, **remask, image_format=["source", "png", "jpeg"])["variants"]
    remasked += publish_remask(folder, **remask, image_format="jpeg", jpeg_quality=90)["variants"]
    expected = [  # the direct run's config, the card's words, the stored format and JPEG quality
        (prompter.config, "JPEG q75 for JPEG sources, else PNG", "JPEG", 75),  # the default, on JPEG sources
        (prompter.config.replace(image_format="png"), "PNG", "PNG", None),
        (prompter.config.replace(image_format="jpeg"), "JPEG q75", "JPEG", 75),
        (prompter.config.replace(image_format="jpeg", jpeg_quality=90), "JPEG q90", "JPEG", 90),
    ]
    assert [v["config_name"] for v in remasked] == [variant_name(config) for config, *_ in expected]
    table = {row["config"].strip("`"): row for row in card_table(read_card(folder))}
    assert table[maps["config_name"]]["images"] == "open"
    for variant, (_, words, stored_format, quality) in zip(remasked, expected):
        name = variant["config_name"]
        assert table[name]["images"] == words, name
        stored = load_dataset(str(folder), name, split="test").cast_column("image", ImageFeature(decode=False))
        for row, value in enumerate(stored["image"]):
            image = Image.open(io.BytesIO(value["bytes"]))
            assert image.format == stored_format, (name, row)
            assert quality is None or image.quantization == jpeg_tables(quality), (name, row)


# ------------------------------------------------------------------ 4. published names stay; backends name their part


# The configs of variants already published. Every version before the image format choice stored PNG, which
# PrompterConfig.from_dict reads their records as: so they are pinned here with image_format="png".
SHA = "ab" * 32
PUBLISHED_PAPER = PAPER.replace(image_format="png")
CLIP_LOCAL = PrompterConfig(backend="clip", model="local-dir:/models/My_Clip.v2/", pretrained=None, layer_index=1,
                            weights_sha256=SHA, image_format="png")
CLIP_HUB = PrompterConfig(backend="clip", model="hf-hub:timm/ViT-B-16-SigLIP", pretrained=None, layer_index=3,
                          image_format="png")
CLIP_FILE = PrompterConfig(backend="clip", model="ViT-B-16", pretrained="/w/My.Weights.pt", layer_index=10,
                           weights_sha256=SHA, image_format="png")
LLAVA_HUB = PrompterConfig(backend="llava", model="llava-hf/llava-1.5-13b-hf", pretrained=None, layer_index=20,
                           max_new_tokens=20, answer_column="api_answer", image_format="png")
LLAVA_LOCAL = PrompterConfig(backend="llava", model="/x/checkpoints/my_llava", pretrained=None, layer_index=1,
                             max_new_tokens=5, answer_column="api_answer", weights_sha256=SHA, geometry="aligned",
                             image_format="png")


@pytest.mark.parametrize("config, expected, before", [
    # {backend}-{model}[-{pretrained}]-l{layer}-e{coe}-k{kernel}-{interpolation}-g{gray}[-{geometry}][-{prompt}][-{format}][-{own}][-h{hash}]
    # ``before``: the name the code before the image format choice gave the config (commit dc6549a, run on it).
    (PUBLISHED_PAPER, "clip-vit-l-14-336-l22-e5-k3-lanczos-g0",  # the backend's default weights: no pretrained part
     "clip-vit-l-14-336-l22-e5-k3-lanczos-g0"),
    (PUBLISHED_PAPER.replace(model="ViT-B-16", pretrained="laion2b_s34b_b88k", layer_index=10),  # spelled exactly: no hash
     "clip-vit-b-16-laion2b-s34b-b88k-l10-e5-k3-lanczos-g0", "clip-vit-b-16-laion2b-s34b-b88k-l10-e5-k3-lanczos-g0"),
    # A local folder by its name (no pretrained part: the folder names the weights), identified by the hash.
    (CLIP_LOCAL, "clip-my-clip-v2-l1-e5-k3-lanczos-g0-h" + independent_hash(CLIP_LOCAL, model="local-dir:My_Clip.v2"),
     "clip-my-clip-v2-l1-e5-k3-lanczos-g0-h3993badb"),
    (CLIP_HUB, "clip-timm-vit-b-16-siglip-l3-e5-k3-lanczos-g0-h" + independent_hash(CLIP_HUB),  # "/" is lost: hash
     "clip-timm-vit-b-16-siglip-l3-e5-k3-lanczos-g0-h4d33829b"),
    # A weights file by its name without the extension; its sha256 is in the hash.
    (CLIP_FILE, "clip-vit-b-16-my-weights-l10-e5-k3-lanczos-g0-h" + independent_hash(CLIP_FILE, pretrained="My.Weights.pt"),
     "clip-vit-b-16-my-weights-l10-e5-k3-lanczos-g0-ha47b9845"),
    (LLAVA_HUB, "llava-llava-hf-llava-1-5-13b-hf-l20-e5-k3-lanczos-g0-t20-h" + independent_hash(LLAVA_HUB),  # "/" is lost
     "llava-llava-hf-llava-1-5-13b-hf-l20-e5-k3-lanczos-g0-t20-hd8e2188d"),
    (LLAVA_LOCAL, "llava-my-llava-l1-e5-k3-lanczos-g0-aligned-t5-h" + independent_hash(LLAVA_LOCAL, model="local-dir:my_llava"),
     "llava-my-llava-l1-e5-k3-lanczos-g0-aligned-t5-h849b02ab"),
])
def test_published_names_are_pinned(config, expected, before):
    """Names already published must never change: each one spelled out here from the documented scheme."""
    # The version before the prompt field named the local folder so (its code, run on this config):
    assert variant_name(CLIP_LOCAL) == "clip-my-clip-v2-l1-e5-k3-lanczos-g0-h3993badb"
    assert variant_name(config) == expected == before
    assert variant_name(config, first_rows=3) == expected + "-first3"
    # Column names are no part of the identity, llava's answer column included.
    renamed = config.replace(image_column="img", heatmap_column="hm", answer_column=config.answer_column and "answer")
    assert variant_name(renamed) == expected


#: ``CLIP_LOCAL``'s record as a version before the image format choice wrote it in ``api_variants.json``:
#: every field of that version (no ``image_format``, no ``jpeg_quality``), the folder by its name.
OLDER_RECORD_PROMPTER = {
    "answer_column": None, "backend": "clip", "device": None, "dtype": None, "enhance_coe": 5.0, "geometry": "paper",
    "grayscale": 0, "heatmap_column": "heatmap", "image_column": "image", "interpolation": "LANCZOS", "kernel_size": 3,
    "layer_index": 1, "library_version": "0.1.0", "masked_image_column": "masked_image", "max_new_tokens": None,
    "model": "local-dir:My_Clip.v2", "on_error": "raise", "pretrained": None, "prompt": "mask",
    "question_column": "question", "status_column": "api_status", "weights_sha256": SHA,
}


def test_a_record_written_before_the_format_choice_reads_back_as_png_and_keeps_its_name():
    config = PrompterConfig.from_dict(OLDER_RECORD_PROMPTER)
    assert (config.image_format, config.jpeg_quality) == ("png", None)  # what that version stored
    assert variant_name(config) == "clip-my-clip-v2-l1-e5-k3-lanczos-g0-h3993badb"  # its published name
    # Read with today's defaults instead, it would claim another storage and take another name:
    assert variant_name(PrompterConfig(**OLDER_RECORD_PROMPTER)) == (
        "clip-my-clip-v2-l1-e5-k3-lanczos-g0-source75-h" + independent_hash(config.replace(image_format="source")))
    # Through api_variants.json, as the card and publishing read it:
    record = tiny_built_variant(config).record
    record.prompter = OLDER_RECORD_PROMPTER
    index = VariantIndex.from_json(VariantIndex().upsert(record).to_json())
    assert index.names() == ["clip-my-clip-v2-l1-e5-k3-lanczos-g0-h3993badb"]
    assert index[index.names()[0]].config == config
    [row] = card_table(render_card(index, load_path="x", is_hub=True))
    assert row["images"] == "PNG"


def test_card_lists_the_backend_options_that_change_the_masks():
    card = render_card(VariantIndex().upsert(tiny_built_variant(LLAVA_HUB.replace(dtype="bf16")).record),
                       load_path="x", is_hub=True)
    [row] = card_table(card)
    assert row["other"] == "max_new_tokens=20, dtype=bfloat16"  # not the answer column


@pytest.fixture()
def fake_backend():
    """A backend registered for one test only: no options of its own, every hook left to the base class."""
    from hf_api_prompt.backends.base import _REGISTRY, Backend, register_backend

    class FakeBackend(Backend):
        name = "fake"
        defaults = {"model": "Fake_Net-1", "pretrained": "v1", "layer_index": 4}

    assert "fake" not in _REGISTRY
    register_backend(FakeBackend)
    try:
        yield FakeBackend
    finally:
        del _REGISTRY["fake"]


def test_a_new_backend_needs_no_publishing_change(fake_backend):
    config = ImagePrompter("fake").config
    assert config == PrompterConfig(backend="fake", model="Fake_Net-1", pretrained="v1", layer_index=4)
    assert variant_name(config) == "fake-fake-net-1-l4-e5-k3-lanczos-g0-source75"  # its default weights: no pretrained part
    other = config.replace(pretrained="v2", geometry="aligned")
    assert variant_name(other) == "fake-fake-net-1-v2-l4-e5-k3-lanczos-g0-aligned-source75"
    half = config.replace(dtype="fp16")
    assert variant_name(half) == "fake-fake-net-1-l4-e5-k3-lanczos-g0-source75-h" + independent_hash(half)
    assert variant_name(config.replace(question_column="q", masked_image_column="m")) == variant_name(config)
    built = tiny_built_variant(config.replace(on_error="passthrough"))
    [row] = card_table(render_card(VariantIndex().upsert(built.record), load_path="x", is_hub=True))
    assert [row[c] for c in ("config", "backend", "model", "weights", "images", "other")] == [
        f"`{built.config_name}`", "fake", "`Fake_Net-1`", "`v1`", "JPEG q75 for JPEG sources, else PNG", "on_error=passthrough"]


@pytest.mark.parametrize("option, value", [("max_new_tokens", 5), ("answer_column", "answer")])
def test_a_new_backend_refuses_the_options_of_others(fake_backend, option, value):
    with pytest.raises(ValueError, match=rf"^{option} applies to backend 'llava', not to 'fake'$"):
        ImagePrompter("fake", **{option: value})


def test_an_option_of_two_backends_names_both(fake_backend, tiny_clip):
    fake_backend.option_fields = ("max_new_tokens",)
    ImagePrompter("fake", max_new_tokens=3)  # its own option now
    with pytest.raises(ValueError, match=r"^max_new_tokens applies to backends 'fake', 'llava', not to 'clip'$"):
        ImagePrompter("clip", model=tiny_clip, layer_index=1, max_new_tokens=3)


# ------------------------------------------------------------------ 5. never overwrite files we did not write


USER_README = b"# My project\n\nNotes I wrote myself.\n\xe2\x9c\x93\n"


def _refuse_compute(*args, **kwargs):
    raise AssertionError("masks were computed although the output folder was refused")


def test_a_user_readme_stops_publishing_before_any_compute(tmp_path, monkeypatch, tiny_clip):
    import hf_api_prompt.publishing.api as api

    (tmp_path / "README.md").write_bytes(USER_README)
    (tmp_path / "code.py").write_text("print('mine')\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(api, "run_sharded", _refuse_compute)
    prompter = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    with pytest.raises(ValueError, match=r"README\.md is not a card written by hf_api_prompt.*Nothing was computed or written"):
        publish_variant(prompter, custom_benchmark("in-memory", "test"), output_dir=tmp_path, dataset=make_mmvet_like(1))
    assert (tmp_path / "README.md").read_bytes() == USER_README
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_run_into_a_project_folder_refuses(tmp_path, monkeypatch, capsys):
    from hf_api_prompt.cli import main

    (tmp_path / "README.md").write_bytes(USER_README)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--output-dir", ".", "--limit", "1"])
    assert exit_info.value.code == 2
    assert "README.md is not a card written by hf_api_prompt" in capsys.readouterr().err
    assert (tmp_path / "README.md").read_bytes() == USER_README
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


@pytest.mark.parametrize("foreign", ["README.md", "config folder", "preview", "api_variants.json"])
def test_write_variant_refuses_foreign_files(tmp_path, foreign):
    built = tiny_built_variant(PAPER)
    name = built.config_name
    path = {"README.md": tmp_path / "README.md", "config folder": tmp_path / name / "test-00000-of-00001.parquet",
            "preview": tmp_path / "previews" / f"{name}.png", "api_variants.json": tmp_path / "api_variants.json"}[foreign]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(USER_README)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="refusing to write .*Nothing was written") as error:
        write_variant(tmp_path, built)
    assert str(path.relative_to(tmp_path).parts[0]) in str(error.value)
    assert path.read_bytes() == USER_README
    # Only the empty lock file may appear (a variant's own files are checked under the lock).
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.name != ".api_lock") == files
    assert not (tmp_path / ".api_lock").exists() or (tmp_path / ".api_lock").stat().st_size == 0


def test_foreign_readme_beside_our_records_is_refused(tmp_path):
    """api_variants.json alone does not make a README ours: it must carry the card's marker."""
    write_variant(tmp_path, tiny_built_variant(PAPER))
    (tmp_path / "README.md").write_bytes(USER_README)
    with pytest.raises(ValueError, match="lacks the card's marker"):
        write_variant(tmp_path, tiny_built_variant(PAPER.replace(grayscale=9)))
    assert (tmp_path / "README.md").read_bytes() == USER_README


def test_empty_and_own_folders_are_written(tmp_path):
    (tmp_path / "unrelated.txt").write_text("kept")  # files we would not overwrite do not matter
    first = tiny_built_variant(PAPER)
    write_variant(tmp_path, first)
    write_variant(tmp_path, first)  # the same variant again: ours, replaced
    write_variant(tmp_path, tiny_built_variant(PAPER.replace(grayscale=9)))
    assert len(read_index(tmp_path)) == 2 and (tmp_path / "unrelated.txt").read_text() == "kept"
    write_variant(tmp_path / "new" / "folder", first)
    assert read_index(tmp_path / "new" / "folder").names() == [first.config_name]
