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
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .benchmarks import task_judge
from .variants import VariantRecord, lmms_eval_task_name

logger = logging.getLogger(__name__)

_INSTALL_HINT = "exporting lmms-eval tasks needs lmms-eval: pip install 'hf_api_prompt[eval]' (lmms-eval==0.7.3)"
#: Keys of the base task that would attach the variant to the base task's groups and tags.
_DROPPED_KEYS = ("include", "group", "tag", "task_alias", "group_alias")
_SPLIT_KEYS = ("training_split", "validation_split", "fewshot_split")


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


def task_config(
    record: VariantRecord,
    *,
    dataset_path: str,
    revision: Optional[str],
    base_task: Optional[str] = None,
    token_required: bool = False,
) -> Dict[str, Any]:
    """The derived task configuration (a dict; ``FunctionRef`` values are ``!function`` tags)."""
    base = base_task or (record.lmms_eval or {}).get("base_task")
    if not base:
        raise ValueError(f"variant {record.config_name!r} has no lmms-eval base task: pass base_task (--base-task)")
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
        "task": lmms_eval_task_name(base, record.config_name),
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


def export_lmms_eval(
    record: VariantRecord,
    output_dir,
    *,
    dataset_path: str,
    revision: Optional[str] = None,
    base_task: Optional[str] = None,
    token_required: bool = False,
) -> Path:
    """Write the lmms-eval task YAML of ``record`` into ``output_dir`` (use it with ``--include_path``).

    Args:
        record: the variant (from ``api_variants.json``).
        output_dir: folder for ``{task}.yaml``.
        dataset_path: Hub repo id, or the absolute path of a local variant folder.
        revision: the variant's tag (Hub); ``None`` for a folder.
        base_task: lmms-eval task to derive from; default: the one recorded for the benchmark.
        token_required: set ``dataset_kwargs.token`` (a private repo).

    Returns:
        the path of the written YAML.
    """
    config = task_config(record, dataset_path=dataset_path, revision=revision, base_task=base_task,
                         token_required=token_required)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{config['task']}.yaml"
    base = base_task or (record.lmms_eval or {}).get("base_task")
    header = (
        f"# API variant {record.config_name} of {record.source.get('dataset')}, derived from lmms-eval task "
        f"{base!r} by hf_api_prompt {record.library_version}.\n"
        "# Only dataset_path, dataset_name, dataset_kwargs.revision and the split differ from the base task.\n"
    )
    note = judge_note(base)
    if note:
        header += f"# {note}\n"
        missing = missing_judge_key(base)
        if missing:
            logger.warning("%s is not set. %s", missing, note)
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
) -> List[Tuple[str, Path]]:
    """Export the task YAMLs of the variants of a Hub repo or a local folder.

    On the Hub, each variant is pinned by its tag; a variant whose tag does not
    exist (its push did not finish) is refused.

    Args:
        output_dir: folder for the YAMLs (``lmms-eval --include_path``).
        repo_id: Hub dataset repo (exclusive with ``dataset_dir``).
        dataset_dir: local variant folder.
        revision: where ``api_variants.json`` is read on the Hub.
        config_names: variants to export (default: all).
        base_task: lmms-eval task to derive from (default: each variant's benchmark task).

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
    written = []
    for name in names:
        record = index[name]
        if repo_id is not None and record.tag not in tags:
            raise ValueError(f"variant {name!r} of {repo_id!r} has no tag {record.tag!r} (its push did not finish): publish it again")
        path = export_lmms_eval(record, output_dir, dataset_path=dataset_path, revision=record.tag if repo_id else None,
                                base_task=base_task, token_required=private)
        written.append((path.stem, path))
    return written
