"""lmms-eval tasks for a maps dataset: one task per recipe, its image masked when lmms-eval reads the doc.

The masking itself (``stages.masked_image_from_row``) is replaced here by a fake that
records what it was given, so these tests check the wiring: the YAML lmms-eval reads,
the module it imports from the YAML's folder, and that the base task's own
``doc_to_visual`` receives the masked image. ``test_lmms_eval_cli.py`` runs the real
masking through the real CLI.
"""

import inspect
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from hf_api_prompt import PrompterConfig, lmms_visual
from hf_api_prompt.publishing.variants import (
    VARIANTS_FILE, VariantIndex, VariantRecord, lmms_eval_task_name, maps_variant_name, variant_name,
)
from hf_api_prompt.stages import MapsPrompter, maps_columns

pytest.importorskip("lmms_eval", reason="lmms-eval is the 'eval' extra")

from lmms_eval.utils import load_yaml_config  # noqa: E402  (after the skip)

from hf_api_prompt.publishing.lmms_export import (  # noqa: E402
    MODULE_MARK, FunctionRef, dump_task_yaml, export_lmms_eval, export_variants, task_config,
)

PAPER = PrompterConfig(backend="clip", model="ViT-L-14-336", pretrained="openai", layer_index=22)
MAPS = MapsPrompter(PAPER, [20, 21, 22])
BASE = MAPS.config  # the maps' base config: the deepest layer, the open fields at their defaults
MME_VISUAL = "lmms_eval.tasks.mme.utils.mme_doc_to_visual"


def maps_record(rows="all") -> VariantRecord:
    """A maps dataset's record as ``build_maps_variant`` writes it: ``prompter`` the base config, ``maps`` its layers,
    no lmms-eval task (the export takes its benchmark preset's)."""
    return VariantRecord(
        config_name=maps_variant_name(MAPS, first_rows=4 if rows == "first 4" else None), split="test", num_rows=2,
        created="2026-01-01T00:00:00+00:00", library_version="0.1.0", prompter=BASE.to_dict(),
        columns={"image": "image", "heatmap": None, "original_image": None, "status": None},
        source={"dataset": "lmms-lab-encoder/MME", "split": "test", "rows": rows, "benchmark": "mme",
                "image_column": "image", "question_column": "question"},
        lmms_eval=None, maps={"layers": list(MAPS.layers), "columns": maps_columns(MAPS)},
    )


def materialized_record(config: PrompterConfig) -> VariantRecord:
    record = maps_record()
    record.config_name, record.prompter, record.maps = variant_name(config), config.to_dict(), None
    record.lmms_eval = {"base_task": "mme", "task": lmms_eval_task_name("mme", record.config_name)}
    return record


def export_variants_of(tmp_path, params, *records):
    """``export_variants`` of a local folder whose ``api_variants.json`` holds ``records`` (no data: nothing reads it)."""
    folder = tmp_path / "maps"
    folder.mkdir(exist_ok=True)
    (folder / VARIANTS_FILE).write_text(VariantIndex({r.config_name: r for r in records}).to_json())
    return export_variants(tmp_path / "tasks", dataset_dir=folder, params=params)


@pytest.fixture
def fake_masking(monkeypatch):
    """``masked_image_from_row`` replaced: a gray ("L") image whose level says the recipe; the calls are kept."""
    calls = []

    def masked_image_from_row(row, config):
        calls.append((row, config))
        return Image.new("L", row["image"].size, config.grayscale + config.layer_index)

    monkeypatch.setattr(lmms_visual, "masked_image_from_row", masked_image_from_row)
    return calls


def test_one_task_per_recipe_named_as_the_materialized_variant(tmp_path):
    record = maps_record()
    recipes = [{"layer_index": 22}, {"layer_index": 21, "enhance_coe": 2.5, "kernel_size": 5, "interpolation": "bicubic",
                                     "grayscale": 7, "geometry": "aligned"},
               {"layer_index": 22, "image_format": "png"}, {"layer_index": 22, "image_format": "jpeg", "jpeg_quality": 90}]
    written = export_variants_of(tmp_path, recipes, record)
    # The names variant_name gives these configs (variants.py's doctest spells the paper's): the default stores JPEG
    # sources as JPEG q75; PNG, as every variant before the format choice, adds nothing to the name.
    assert [task for task, _ in written] == [
        "mme_api_clip-vit-l-14-336-l22-e5-k3-lanczos-g0-source75",
        "mme_api_clip-vit-l-14-336-l21-e2p5-k5-bicubic-g7-aligned-source75",
        "mme_api_clip-vit-l-14-336-l22-e5-k3-lanczos-g0",
        "mme_api_clip-vit-l-14-336-l22-e5-k3-lanczos-g0-jpeg90",
    ]
    for (task, path), params in zip(written, recipes):
        assert task == lmms_eval_task_name("mme", variant_name(PAPER.replace(**params)))
        assert path == tmp_path / "tasks" / f"{task}.yaml"
    assert sorted(p.name for p in (tmp_path / "tasks").iterdir()) == sorted(
        f"{task}.{ext}" for task, _ in written for ext in ("py", "yaml"))

    # The ordinary export of the maps config (the base task's own keys), with only the name and doc_to_visual changed.
    task, path = written[1]
    dataset_path = str((tmp_path / "maps").resolve())
    ordinary = task_config(record, dataset_path=dataset_path, revision=None)
    assert ordinary["doc_to_visual"] == MME_VISUAL
    expected = {**ordinary, "task": task, "doc_to_visual": FunctionRef(f"{task}.doc_to_visual")}
    body = "".join(line for line in path.read_text().splitlines(keepends=True) if not line.startswith("#"))
    assert body == dump_task_yaml(expected)
    seen = load_yaml_config(str(path), mode="simple")  # as lmms-eval indexes it: functions left as YAML nodes
    assert (seen["task"], seen["dataset_path"], seen["dataset_name"], seen["test_split"]) == (
        task, dataset_path, "clip-vit-l-14-336-maps-l20-21-22", "test")
    assert (seen["doc_to_visual"].tag, seen["doc_to_visual"].value) == ("!function", f"{task}.doc_to_visual")
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(f"{task}.py" in line and "layer_index 21, enhance_coe 2.5, kernel_size 5, interpolation BICUBIC, "
               "grayscale 7, geometry aligned" in line for line in header), header


def test_the_doc_to_visual_lmms_eval_imports_masks_then_calls_the_base_tasks(tmp_path, fake_masking):
    [(task, path)] = export_variants_of(tmp_path, [{"layer_index": 21, "grayscale": 100}], maps_record())
    config = load_yaml_config(str(path), mode="full")  # lmms-eval's loader: imports {task}.py from the YAML's folder
    doc_to_visual = config["doc_to_visual"]
    assert isinstance(doc_to_visual, lmms_visual.MaskedDocToVisual)
    assert doc_to_visual.base_name == MME_VISUAL
    assert doc_to_visual.config == BASE.replace(layer_index=21, grayscale=100)
    assert inspect.signature(doc_to_visual) == inspect.signature(doc_to_visual.base)  # one parameter, as MME's
    # The results file's "configs" name the base function and the recipe (lmms-eval prints callables with str).
    from lmms_eval.api.task import TaskConfig

    printed = TaskConfig(task=task, doc_to_visual=doc_to_visual).to_dict()["doc_to_visual"]
    assert printed == f"hf_api_prompt.lmms_visual.MaskedDocToVisual({MME_VISUAL!r}, {doc_to_visual.config.to_json()!r})"

    original = Image.new("RGB", (12, 8), (200, 10, 10))
    doc = {"image": original, "question": "Is it red?", "api_grid_box": None}
    [visual] = doc_to_visual(doc)
    # MME's doc_to_visual converted the masked image (mode L, level 100 + 21) to RGB.
    assert visual.mode == "RGB" and np.array_equal(np.asarray(visual), np.full((8, 12, 3), 121, dtype=np.uint8))
    [(row, recipe)] = fake_masking
    assert row is doc and recipe == doc_to_visual.config
    assert doc["image"] is original  # the doc lmms-eval holds is left as it was


def two_parameter_visual(doc, lmms_eval_specific_kwargs=None):
    return [doc["image"], lmms_eval_specific_kwargs]


def test_a_two_parameter_doc_to_visual_still_gets_lmms_evals_kwargs(fake_masking):
    """lmms-eval's own dispatch (``ConfigurableTask.doc_to_visual``) passes the kwargs to a 2-parameter function."""
    from lmms_eval.api.task import ConfigurableTask

    recipe = BASE.replace(layer_index=20)
    wrapped = lmms_visual.MaskedDocToVisual(f"{__name__}.two_parameter_visual", recipe.to_json())
    task = SimpleNamespace(config=SimpleNamespace(doc_to_visual=wrapped), lmms_eval_specific_kwargs={"pre_prompt": "x"})
    masked, kwargs = ConfigurableTask.doc_to_visual(task, {"image": Image.new("RGB", (4, 4))})
    assert kwargs == {"pre_prompt": "x"} and masked.mode == "L" and masked.getpixel((0, 0)) == 20


def test_lmms_eval_loads_the_maps_task_and_its_dataset(tmp_path, fake_masking):
    """A maps dataset made by publish_sweep, through lmms-eval's TaskManager: its rows reach the wrapper, masked for MME's."""
    from datasets import Dataset
    from lmms_eval.tasks import TaskManager, get_task_dict

    from hf_api_prompt import ImagePrompter
    from hf_api_prompt.backends.base import portable_config
    from hf_api_prompt.bundled import DEMO_MODEL
    from hf_api_prompt.publishing import get_benchmark, publish_sweep

    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 256, (30 + 4 * i, 40, 3), dtype=np.uint8)) for i in range(2)]
    source = Dataset.from_dict({"question_id": ["a.png", "b.png"], "image": images, "question": ["Q0?", "Q1?"],
                                "answer": ["Yes", "No"], "category": ["color", "color"]})
    prompters = [ImagePrompter("clip", model=DEMO_MODEL, layer_index=layer) for layer in (1, 2)]
    publish_sweep(prompters, get_benchmark("mme"), dataset=source, output_dir=tmp_path / "maps", maps_only=True)

    [(task, _)] = export_variants(tmp_path / "tasks", dataset_dir=tmp_path / "maps", params=[{"layer_index": 1, "grayscale": 50}])
    assert task == lmms_eval_task_name("mme", variant_name(prompters[0].config.replace(grayscale=50)))
    loaded = get_task_dict([task], TaskManager(include_path=str(tmp_path / "tasks")))[task]
    docs = loaded.test_docs()
    assert [d["question_id"] for d in docs] == ["a.png", "b.png"]
    for doc, image in zip(docs, images):
        [visual] = loaded.doc_to_visual(doc)
        assert np.array_equal(np.asarray(visual), np.full((image.height, image.width, 3), 51, dtype=np.uint8))
    # The wrapper got the rows as lmms-eval holds them: the original image and the maps of both layers.
    for (row, recipe), image in zip(fake_masking, images):
        assert np.array_equal(np.asarray(row["image"]), np.asarray(image))
        assert {"api_maps_config", "api_grid_box"} <= set(row) and np.asarray(row["api_attention_l1"]).shape == (14, 14)
        assert recipe == portable_config(prompters[0].config).replace(grayscale=50)  # the record's: local weights by name


def test_a_subset_maps_dataset_names_its_tasks_as_a_subset_variant(tmp_path):
    [(task, _)] = export_variants_of(tmp_path, [{"layer_index": 20}], maps_record(rows="first 4"))
    assert task == lmms_eval_task_name("mme", variant_name(PAPER.replace(layer_index=20), first_rows=4))
    assert task.endswith("-first4")


@pytest.mark.parametrize("params, message", [
    ({"model": "ViT-B-16"}, r"the maps were made with other settings \(model differ\)"),
    ({"colour": 1}, "unexpected keyword argument 'colour'"),
    ({"layer_index": 23}, r"layer_index 23 is not among the maps' layers \[20, 21, 22\]"),
    ({"layer_index": 21, "kernel_size": 4}, "kernel_size must be a positive odd int or 'auto', got 4"),
    ({"layer_index": 21, "kernel_size": "auto"}, "give kernel_size as an odd int"),
    ({"layer_index": "21"}, "layer_index must be an int, got '21'"),
    ({"layer_index": 21, "interpolation": "sharp"}, "interpolation 'sharp' is not a PIL resampling filter"),
])
def test_a_bad_recipe_is_refused_at_export_naming_it(tmp_path, params, message):
    with pytest.raises(ValueError, match=message) as caught:
        export_variants_of(tmp_path, [{"layer_index": 22}, params], maps_record())
    assert f"maps variant 'clip-vit-l-14-336-maps-l20-21-22', parameters {params}" in str(caught.value)
    assert not (tmp_path / "tasks").exists()  # checked before anything is written, the good recipe's task too


def test_recipes_go_with_maps_datasets_only(tmp_path):
    ordinary = materialized_record(PAPER)
    with pytest.raises(ValueError, match="is not a maps dataset .* takes no prompter parameters"):
        export_lmms_eval(ordinary, tmp_path, dataset_path="/data", prompter_params={"layer_index": 22})
    with pytest.raises(ValueError, match=r"is a maps dataset \(layers \[20, 21, 22\]\): pass the recipe"):
        export_lmms_eval(maps_record(), tmp_path, dataset_path="/data")
    with pytest.raises(ValueError, match="none of .* is one"):
        export_variants_of(tmp_path, [{"layer_index": 22}], ordinary)
    with pytest.raises(ValueError, match=r"variants \['clip-vit-l-14-336-maps-l20-21-22'\] are maps datasets: pass the recipes"):
        export_variants_of(tmp_path, None, maps_record())
    with pytest.raises(ValueError, match="give at least one parameter set"):
        export_variants_of(tmp_path, [], maps_record())
    custom = maps_record()
    custom.source["benchmark"] = "custom"  # not a preset: no task to derive from
    with pytest.raises(ValueError, match="has no lmms-eval base task: pass base_task"):
        export_variants_of(tmp_path, [{"layer_index": 22}], custom)
    assert not list(tmp_path.glob("*.yaml")) and not (tmp_path / "tasks").exists()


def test_two_exports_of_one_task_name_are_refused(tmp_path):
    # Two spellings of one recipe ...
    with pytest.raises(ValueError, match=r"with \{'layer_index': 21, 'interpolation': 'BICUBIC'\} and .* with "
                                         r"\{'layer_index': 21, 'interpolation': 'bicubic'\} would both be"):
        export_variants_of(tmp_path, [{"layer_index": 21, "interpolation": "bicubic"},
                                      {"layer_index": 21, "interpolation": "BICUBIC"}], maps_record())
    # ... and a recipe whose materialized variant is in the same folder: one YAML would replace the other.
    materialized = materialized_record(PAPER)
    with pytest.raises(ValueError, match=f"would both be lmms-eval task 'mme_api_{materialized.config_name}'"):
        export_variants_of(tmp_path, [{"layer_index": 22}], materialized, maps_record())
    assert not (tmp_path / "tasks").exists()


def test_a_module_the_library_did_not_write_is_never_overwritten(tmp_path):
    task = lmms_eval_task_name("mme", variant_name(PAPER))
    (tmp_path / f"{task}.py").write_text("# someone's own code\n")
    with pytest.raises(FileExistsError, match=f"{task}.py exists and was not written by hf_api_prompt"):
        export_lmms_eval(maps_record(), tmp_path, dataset_path="/data", prompter_params={})
    assert (tmp_path / f"{task}.py").read_text() == "# someone's own code\n" and not (tmp_path / f"{task}.yaml").exists()
    # Its own module (an older export's), it rewrites.
    (tmp_path / f"{task}.py").write_text(MODULE_MARK + " 0.0.1 for an older export\n")
    export_lmms_eval(maps_record(), tmp_path, dataset_path="/data", prompter_params={})
    module = (tmp_path / f"{task}.py").read_text()
    assert module.startswith(MODULE_MARK) and f"MaskedDocToVisual({MME_VISUAL!r}, {BASE.to_json()!r})" in module


def test_the_base_task_must_have_a_doc_to_visual_function(tmp_path, monkeypatch):
    from hf_api_prompt.publishing import lmms_export

    real = lmms_export.load_task_config
    monkeypatch.setattr(lmms_export, "load_task_config", lambda path: {**real(path), "doc_to_visual": "image"})
    with pytest.raises(ValueError, match="lmms-eval task 'mme' has doc_to_visual 'image', not a function"):
        export_lmms_eval(maps_record(), tmp_path, dataset_path="/data", prompter_params={})
