"""lmms-eval task YAMLs for published variants, derived from the benchmark's own task.

The exported YAML is the base task's configuration (its ``include`` chain
resolved) with only the dataset changed: ``dataset_path`` (the repo or folder),
``dataset_name`` (the variant's config), ``dataset_kwargs.revision`` (its tag) and
the split. Function references (``!function utils.f``) are rewritten to the base
task's module (``!function lmms_eval.tasks.mmvet.utils.f``), which lmms-eval
imports by name, so the folder needs nothing else and works on any machine with
lmms-eval installed::

    lmms-eval --model llava_hf --model_args pretrained=llava-hf/llava-1.5-7b-hf,device_map=auto \
        --include_path ./api_tasks --tasks mme_api_<variant> --output_path ./results

Tasks whose metric calls an LLM judge (``judge`` in ``benchmarks.json``: MM-Vet,
LLaVA-Bench) are exported with a note in the YAML header, and with a warning when
the judge's key is not set, since lmms-eval's own error then hides the cause.

A *maps dataset* (a record with ``maps``) holds the original images and the raw maps
of some layers, so one dataset serves every mask recipe: it is exported as one task
per recipe (``prompter_params``: layer, coefficient, kernel, interpolation, grayscale,
geometry), named as the materialized variant of that recipe would be, so that their
results line up. Such a task's ``doc_to_visual`` is a module written beside its YAML
(``{task}.py``, see :mod:`hf_api_prompt.lmms_visual`) that masks the image when
lmms-eval reads the doc and hands it to the base task's own ``doc_to_visual``.
lmms-eval 0.7.3 refuses YAML keys it does not know (``TaskConfig`` is a dataclass)
and calls ``doc_to_visual`` with the doc alone, so the recipe can only travel in code
that lmms-eval imports: ``!function {task}.doc_to_visual`` is imported from the
YAML's folder (``lmms_eval.utils.import_function`` tries the file first). The folder
then needs hf_api_prompt installed as well as lmms-eval.

A crop variant (``prompt="crop"``, materialized or a maps recipe) shows the model the
original image and then the crop (:mod:`hf_api_prompt.lmms_visual`); a materialized one
keeps its original image for that, and its task gets such a module too.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .._version import __version__
from ..config import PrompterConfig
from ..prompts import writes_box
from ..stages import OPEN_FIELDS, MapsPrompter
from .benchmarks import available_benchmarks, get_benchmark, task_judge
from .variants import VariantRecord, lmms_eval_task_name, variant_name

logger = logging.getLogger(__name__)

_INSTALL_HINT = "exporting lmms-eval tasks needs lmms-eval: pip install 'hf_api_prompt[eval]' (lmms-eval==0.7.3)"
#: Keys of the base task that would attach the variant to the base task's groups and tags.
_DROPPED_KEYS = ("include", "group", "tag", "task_alias", "group_alias")
_SPLIT_KEYS = ("training_split", "validation_split", "fewshot_split")
#: First line of the ``doc_to_visual`` modules the export writes; a ``{task}.py`` without it is never overwritten.
MODULE_MARK = "# Written by hf_api_prompt export-lmms-eval"


#: The environment variable each judge of ``benchmarks.json`` reads (lmms-eval 0.7.3's ``llm_judge``, ``API_TYPE=openai``).
JUDGE_KEYS = {"gpt": "OPENAI_API_KEY"}


def judge_note(base_task: Optional[str]) -> Optional[str]:
    """What lmms-eval needs to score ``base_task``, if its metric calls an LLM judge; ``None`` for a local metric.

    >>> judge_note("mme") is None
    True
    >>> "OPENAI_API_KEY" in judge_note("mmvet")
    True
    """
    judge = task_judge(base_task)
    if judge is None:
        return None
    key = JUDGE_KEYS[judge]
    return (
        f"lmms-eval task {base_task!r} is scored by a {judge.upper()} judge: lmms-eval sends every answer to the "
        f"OpenAI API, which needs {key} and the network. Without {key}, lmms-eval stops with a misleading "
        "\"Failed to import function\" error (MM-Vet) or reports the scores of failed reviews (LLaVA-Bench)."
    )


def missing_judge_key(base_task: Optional[str]) -> Optional[str]:
    """The environment variable that scoring ``base_task`` needs and that is not set, else ``None``.

    ``None`` too when lmms-eval's ``API_TYPE`` picks a judge server other than OpenAI's (its own keys apply).
    """
    judge = task_judge(base_task)
    if judge is None or os.environ.get("API_TYPE", "openai").lower() != "openai":
        return None
    key = JUDGE_KEYS[judge]
    return None if os.environ.get(key) else key


class FunctionRef(str):
    """A ``!function module.name`` reference in a task YAML."""


def lmms_eval_tasks_dir() -> Path:
    """The ``tasks`` folder of the installed lmms-eval (found without importing it)."""
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(_INSTALL_HINT)
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def _module_for(yaml_dir: Path, reference: str) -> str:
    """Absolute dotted name of a ``!function`` reference written relative to a YAML file."""
    module, _, attribute = reference.rpartition(".")
    local = yaml_dir / f"{module}.py"
    if not local.is_file():
        return reference  # already absolute
    package_root = lmms_eval_tasks_dir().parent.parent  # site-packages (the folder holding lmms_eval/)
    try:
        relative = local.with_suffix("").relative_to(package_root)
    except ValueError:
        raise ValueError(f"{local} is not inside the installed lmms-eval; cannot refer to it by module name") from None
    return ".".join(relative.parts) + "." + attribute


def load_task_config(yaml_path: Path) -> Dict[str, Any]:
    """A task YAML with its ``include`` chain merged as lmms-eval merges it, functions made absolute."""
    import yaml

    yaml_path = Path(yaml_path)

    class Loader(yaml.SafeLoader):
        pass

    def function(loader, node):
        return FunctionRef(_module_for(yaml_path.parent, loader.construct_scalar(node)))

    Loader.add_constructor("!function", function)
    config = yaml.load(yaml_path.read_text(encoding="utf-8"), Loader=Loader) or {}
    includes = config.pop("include", None)
    if includes is None:
        return config
    merged: Dict[str, Any] = {}
    for include in [includes] if isinstance(includes, str) else list(includes):
        path = Path(include) if Path(include).is_file() else yaml_path.parent / include
        merged.update(load_task_config(path))
    merged.update(config)
    return merged


def find_task_yaml(task: str) -> Path:
    """The YAML file of lmms-eval's task ``task``."""
    pattern = re.compile(rf"^task:\s*['\"]?{re.escape(task)}['\"]?\s*$", re.MULTILINE)
    tasks_dir = lmms_eval_tasks_dir()
    for path in sorted(tasks_dir.rglob("*.yaml")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if pattern.search(text):
            return path
    raise ValueError(f"lmms-eval has no task {task!r} (searched {tasks_dir})")


def recipe_config(record: VariantRecord, params: Mapping[str, Any]) -> PrompterConfig:
    """The single-layer config that ``params`` choose from the maps of ``record``, checked at export, not at evaluation.

    ``params`` override the record's base config; the result must be one the maps
    serve (:meth:`~hf_api_prompt.stages.MapsPrompter.serves`: only the open fields,
    :data:`~hf_api_prompt.stages.OPEN_FIELDS`, differ, and the layer is one of the maps').

    Raises:
        ValueError: naming the variant, the parameters and the problem.
    """
    what = f"maps variant {record.config_name!r}, parameters {dict(params)}"
    try:
        config = record.config.replace(**params)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what}: {error}") from None
    if config.kernel_size == "auto":  # ImagePrompter sizes it by the model's grid, which the export does not load
        raise ValueError(f"{what}: give kernel_size as an odd int ('auto' is resolved against the model's grid)")
    problem = MapsPrompter(record.config, record.maps["layers"]).serves(config)
    if problem:
        raise ValueError(f"{what}: {problem}")
    return config


def _base_task(record: VariantRecord, base_task: Optional[str]) -> str:
    """``base_task``, else the record's, else its benchmark preset's (a maps dataset's record names no task)."""
    benchmark = record.source.get("benchmark")
    preset = get_benchmark(benchmark).lmms_eval_task if benchmark in available_benchmarks() else None
    base = base_task or (record.lmms_eval or {}).get("base_task") or preset
    if not base:
        raise ValueError(f"variant {record.config_name!r} has no lmms-eval base task: pass base_task (--base-task)")
    return base


def _first_rows(record: VariantRecord) -> Optional[int]:
    """The ``first_rows`` of :func:`variant_name` for a variant made of ``record``'s rows (``source.rows``)."""
    rows = record.source.get("rows", "all")
    match = re.fullmatch(r"first (\d+)", rows)
    if rows != "all" and match is None:
        raise ValueError(f"variant {record.config_name!r} records source rows {rows!r}: expected 'all' or 'first N'")
    return int(match.group(1)) if match else None


def task_name(record: VariantRecord, base_task: Optional[str] = None, recipe: Optional[PrompterConfig] = None) -> str:
    """The lmms-eval task of ``record``; for a maps dataset, the task of the variant that ``recipe`` would materialize."""
    config_name = record.config_name if recipe is None else variant_name(recipe, first_rows=_first_rows(record))
    return lmms_eval_task_name(_base_task(record, base_task), config_name)


def task_config(
    record: VariantRecord,
    *,
    dataset_path: str,
    revision: Optional[str],
    base_task: Optional[str] = None,
    token_required: bool = False,
    recipe: Optional[PrompterConfig] = None,
) -> Dict[str, Any]:
    """The derived task configuration (a dict; ``FunctionRef`` values are ``!function`` tags).

    With ``recipe`` (a maps dataset, see :func:`recipe_config`), the task is named
    after the variant the recipe would materialize; its ``doc_to_visual`` is still the
    base task's here (:func:`export_lmms_eval` wraps it).
    """
    base = _base_task(record, base_task)
    config = load_task_config(find_task_yaml(base))
    for key in _DROPPED_KEYS:
        config.pop(key, None)
    for key in _SPLIT_KEYS:
        if config.get(key) not in (None, record.split):
            config.pop(key)
    kwargs = {k: v for k, v in (config.get("dataset_kwargs") or {}).items() if k not in ("token", "revision")}
    if revision:
        kwargs["revision"] = revision
    if token_required:
        kwargs["token"] = True
    derived = {
        "task": task_name(record, base, recipe),
        "dataset_path": dataset_path,
        "dataset_name": record.config_name,
    }
    if kwargs:
        derived["dataset_kwargs"] = kwargs
    derived["test_split"] = record.split
    rest = {k: v for k, v in config.items() if k not in derived and k not in ("dataset_kwargs", "dataset_name", "test_split")}
    return {**derived, **rest}


def dump_task_yaml(config: Dict[str, Any]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(FunctionRef, lambda dumper, ref: dumper.represent_scalar("!function", str(ref)))
    return yaml.dump(config, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=1000)


def visual_module(task: str, base_visual: str, recipe: Optional[PrompterConfig], record: VariantRecord) -> str:
    """The source of ``{task}.py``: the ``doc_to_visual`` that masks the image by ``recipe`` before ``base_visual``;
    without a recipe (a materialized crop variant), the one that hands ``base_visual`` the original, then the crop."""
    if recipe is None:
        return (
            f"{MODULE_MARK} {__version__} for lmms-eval task {task}; each export rewrites it.\n"
            f'"""doc_to_visual of {task}: {base_visual} on the original image, then on the crop of variant '
            f'{record.config_name}."""\n\n'
            "from hf_api_prompt.lmms_visual import OriginalAndCropDocToVisual\n\n"
            f"doc_to_visual = OriginalAndCropDocToVisual({base_visual!r}, {record.columns['image']!r}, "
            f"{record.columns['original_image']!r})\n"
        )
    return (
        f"{MODULE_MARK} {__version__} for lmms-eval task {task}; each export rewrites it.\n"
        f'"""doc_to_visual of {task}: {base_visual} on the doc with its image masked from the maps of variant '
        f'{record.config_name}."""\n\n'
        "from hf_api_prompt.lmms_visual import MaskedDocToVisual\n\n"
        f"doc_to_visual = MaskedDocToVisual({base_visual!r}, {recipe.to_json()!r})\n"
    )


def _recipe_text(recipe: PrompterConfig) -> str:
    """The open fields of ``recipe`` that change the image: ``layer_index 22, enhance_coe 5.0, ...`` (unset ones left out)."""
    return ", ".join(f"{field} {getattr(recipe, field)}" for field in OPEN_FIELDS
                     if not field.endswith("_column") and getattr(recipe, field) is not None)


def export_lmms_eval(
    record: VariantRecord,
    output_dir,
    *,
    dataset_path: str,
    revision: Optional[str] = None,
    base_task: Optional[str] = None,
    token_required: bool = False,
    prompter_params: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write the lmms-eval task YAML of ``record`` into ``output_dir`` (use it with ``--include_path``).

    Args:
        record: the variant (from ``api_variants.json``).
        output_dir: folder for ``{task}.yaml`` (and, for a maps dataset, ``{task}.py``).
        dataset_path: Hub repo id, or the absolute path of a local variant folder.
        revision: the variant's tag (Hub); ``None`` for a folder.
        base_task: lmms-eval task to derive from; default: the one recorded for the benchmark
            (for a maps dataset, its benchmark preset's).
        token_required: set ``dataset_kwargs.token`` (a private repo).
        prompter_params: for a maps dataset (and only for one), the recipe of this task:
            config fields that override the record's base config (``{"layer_index": 22,
            "enhance_coe": 2.5}``; those of :data:`hf_api_prompt.stages.OPEN_FIELDS`),
            checked by :func:`recipe_config`.

    Returns:
        the path of the written YAML.
    """
    if (record.maps is None) != (prompter_params is None):
        if record.maps is None:
            raise ValueError(f"variant {record.config_name!r} is not a maps dataset (its images are masked already): "
                             "it takes no prompter parameters")
        raise ValueError(f"variant {record.config_name!r} is a maps dataset (layers {list(record.maps['layers'])}): "
                         "pass the recipe of the task (prompter parameters: layer_index, enhance_coe, ...)")
    recipe = None if prompter_params is None else recipe_config(record, prompter_params)
    config = task_config(record, dataset_path=dataset_path, revision=revision, base_task=base_task,
                         token_required=token_required, recipe=recipe)
    base = _base_task(record, base_task)
    output = Path(output_dir)
    path = output / f"{config['task']}.yaml"
    header = (
        f"# API variant {record.config_name} of {record.source.get('dataset')}, derived from lmms-eval task "
        f"{base!r} by hf_api_prompt {record.library_version}.\n"
        "# Only dataset_path, dataset_name, dataset_kwargs.revision and the split differ from the base task.\n"
    )
    module = None
    crops = recipe is None and writes_box(record.config.prompt)
    if crops and not record.columns.get("original_image"):
        raise ValueError(f"crop variant {record.config_name!r} has no original image column, which lmms-eval is shown "
                         "beside the crop: publish it again")
    if recipe is not None or crops:
        base_visual = config.get("doc_to_visual")
        if not isinstance(base_visual, FunctionRef):
            what = "a maps dataset" if recipe is not None else "a crop variant"
            raise ValueError(f"lmms-eval task {base!r} has doc_to_visual {base_visual!r}, not a function: "
                             f"{what} needs one to hand the images to")
        module = output / f"{config['task']}.py"
        if module.exists() and not module.read_text(encoding="utf-8", errors="replace").startswith(MODULE_MARK):
            raise FileExistsError(f"{module} exists and was not written by hf_api_prompt: move it away or export elsewhere")
        config["doc_to_visual"] = FunctionRef(f"{config['task']}.doc_to_visual")
    if crops:
        header += (f"# The model is shown two images per doc, the original ({record.columns['original_image']}) and "
                   f"the crop ({record.columns['image']}): doc_to_visual is {module.name}, beside this file (needs "
                   "hf_api_prompt).\n")
    elif recipe is not None:
        header = (
            f"# Maps dataset {record.config_name} of {record.source.get('dataset')}, derived from lmms-eval task "
            f"{base!r} by hf_api_prompt {record.library_version}.\n"
            f"# Images are masked when lmms-eval reads each doc ({module.name}, beside this file, needs hf_api_prompt): "
            f"{_recipe_text(recipe)}.\n"
            "# Only dataset_path, dataset_name, dataset_kwargs.revision, the split and doc_to_visual differ from the "
            "base task.\n"
        )
    note = judge_note(base)
    if note:
        header += f"# {note}\n"
        missing = missing_judge_key(base)
        if missing:
            logger.warning("%s is not set. %s", missing, note)
    output.mkdir(parents=True, exist_ok=True)
    if module is not None:
        module.write_text(visual_module(config["task"], str(base_visual), recipe, record), encoding="utf-8")
    path.write_text(header + dump_task_yaml(config), encoding="utf-8")
    logger.info("wrote lmms-eval task %s to %s", config["task"], path)
    return path


def export_variants(
    output_dir,
    *,
    repo_id: Optional[str] = None,
    dataset_dir=None,
    revision: str = "main",
    config_names=None,
    base_task: Optional[str] = None,
    params: Optional[Sequence[Mapping[str, Any]]] = None,
) -> List[Tuple[str, Path]]:
    """Export the task YAMLs of the variants of a Hub repo or a local folder.

    On the Hub, each variant is pinned by its tag; a variant whose tag does not
    exist (its push did not finish) is refused. A maps dataset gives one task per
    parameter set of ``params``; every parameter set and task name is checked
    before anything is written.

    Args:
        output_dir: folder for the YAMLs (``lmms-eval --include_path``).
        repo_id: Hub dataset repo (exclusive with ``dataset_dir``).
        dataset_dir: local variant folder.
        revision: where ``api_variants.json`` is read on the Hub.
        config_names: variants to export (default: all).
        base_task: lmms-eval task to derive from (default: each variant's benchmark task).
        params: the recipes to evaluate the maps datasets among the variants with (see
            :func:`export_lmms_eval`'s ``prompter_params``); required when there is one,
            refused when there is none.

    Returns:
        ``[(task name, yaml path), ...]``.
    """
    if (repo_id is None) == (dataset_dir is None):
        raise ValueError("give exactly one of repo_id and dataset_dir")
    if repo_id is not None:
        from .hub import REPO_TYPE, HubPublisher

        publisher = HubPublisher(repo_id)
        index = publisher.index(revision)
        tags = {ref.name for ref in publisher._refs().tags}
        private = bool(publisher.api.repo_info(repo_id, repo_type=REPO_TYPE).private)
        dataset_path = repo_id
    else:
        from .layout import read_index

        index = read_index(dataset_dir)
        tags, private = set(), False
        dataset_path = str(Path(dataset_dir).resolve())
    names = list(config_names) if config_names else index.names()
    if not names:
        raise ValueError(f"no variants in {repo_id or dataset_dir}")
    records = [index[name] for name in names]
    maps = [record.config_name for record in records if record.maps is not None]
    if params is not None and not maps:
        raise ValueError(f"prompter parameters choose the masks of maps datasets, and none of {names} is one")
    if params is not None and not params:
        raise ValueError("no prompter parameters: give at least one parameter set for the maps datasets")
    if params is None and maps:
        raise ValueError(f"variants {maps} are maps datasets: pass the recipes to evaluate them with (prompter "
                         "parameters, one task each), or leave them out of the variants to export")
    jobs, tasks = [], {}
    for record in records:
        if repo_id is not None and record.tag not in tags:
            raise ValueError(f"variant {record.config_name!r} of {repo_id!r} has no tag {record.tag!r} "
                             "(its push did not finish): publish it again")
        for prompter_params in ([None] if record.maps is None else params):
            recipe = None if prompter_params is None else recipe_config(record, prompter_params)
            task = task_name(record, base_task, recipe)
            what = record.config_name if recipe is None else f"{record.config_name} with {dict(prompter_params)}"
            if task in tasks:
                raise ValueError(f"{what} and {tasks[task]} would both be lmms-eval task {task!r}: export them apart")
            tasks[task] = what
            jobs.append((record, prompter_params))
    written = []
    for record, prompter_params in jobs:
        path = export_lmms_eval(record, output_dir, dataset_path=dataset_path, revision=record.tag if repo_id else None,
                                base_task=base_task, token_required=private, prompter_params=prompter_params)
        written.append((path.stem, path))
    return written
