"""``hf-api-prompt``: a thin command line over :mod:`hf_api_prompt.publishing`.

    hf-api-prompt run --output-dir out/demo                           # bundled demo scenes + bundled model
    hf-api-prompt run --benchmark mmvet --push-to-hub me/MMVet-API    # masked MM-Vet as a tagged config of me/MMVet-API
    hf-api-prompt run --dataset DIR_OR_HUB_ID --split test --image-column image --question-column question --output-dir out/
    hf-api-prompt run --benchmark mmvet --layer-index 20 21 22 --enhance-coe 1 5 10 --kernel-size 1 3 \
        --grayscale 0 200 --push-to-hub me/MMVet-API                  # 36 variants, one model pass per image
    hf-api-prompt run --benchmark mmvet --layer-index 20 21 22 --maps-only --output-dir out/maps   # keep the maps
    hf-api-prompt remask --maps out/maps --enhance-coe 5 --kernel-size 3 --output-dir out/mmvet    # ... decide later
    hf-api-prompt card --repo-id me/MMVet-API                         # re-render the card from api_variants.json
    hf-api-prompt export-lmms-eval --repo-id me/MMVet-API --output-dir ./api_tasks
    hf-api-prompt upload --dataset-dir out/demo --repo-id me/demo-API # a local folder, in one commit

Every command ends by printing one JSON line. A failure ends in one line on
stderr instead: exit status 2 for bad input (checked before any model loads:
"nothing was computed") or a failed download, connection or disk (what failed,
whether running it again may help; nothing was published), 130 for Ctrl-C
(with how many chunks are saved for the rerun to reuse).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import typing
from typing import Optional, Sequence

from . import bundled, parallel
from .config import PrompterConfig
from .sharded import RunInterrupted

logger = logging.getLogger("hf_api_prompt")

# Filled in by the library, or chosen by their own flag.
_NOT_FLAGS = {"backend", "library_version", "weights_sha256"}


def _field_parser(field: dataclasses.Field):
    kind = typing.get_type_hints(PrompterConfig)[field.name]
    optional = type(None) in typing.get_args(kind)
    words = {"none": None} if optional else {}
    if field.name == "kernel_size":
        words["auto"] = "auto"
    base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    if base is bool:  # bool("false") is True: spell the values out
        words.update({"true": True, "false": False})

        def base(text: str):
            raise ValueError(text)

        base.__name__ = "bool"

    def parse(text: str):
        if text.lower() in words:
            return words[text.lower()]
        return base(text)

    parse.__name__ = base.__name__  # argparse names it in "invalid int value: 'x'"
    return parse


def _add_prompter_flags(parser: argparse.ArgumentParser, fields=None, title=None):
    """One flag per config field (``fields``: those only); each takes one or several values (a sweep)."""
    group = parser.add_argument_group(title or "prompter parameters (defaults: the preset's columns, then the paper's "
                                      "settings); several values make one variant per combination")
    if fields is None:
        group.add_argument("--backend", default="clip")
    for field in dataclasses.fields(PrompterConfig):
        if field.name not in _NOT_FLAGS and (fields is None or field.name in fields):
            group.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=_field_parser(field),
                               default=None, nargs="+", metavar=field.name.upper())


def _prompter_params(args: argparse.Namespace, fields=None) -> dict:
    """The given flags: one value as it is, several as a list (:func:`hf_api_prompt.stages.sweep`)."""
    params = {}
    for field in dataclasses.fields(PrompterConfig):
        values = getattr(args, field.name, None)
        if field.name in _NOT_FLAGS or values is None or (fields is not None and field.name not in fields):
            continue
        params[field.name] = values[0] if len(values) == 1 else list(values)
    return params


def _benchmark(args: argparse.Namespace):
    """The preset (``--benchmark``), the dataset (``--dataset``) or the bundled demo scenes; flags override."""
    from .publishing import custom_benchmark, get_benchmark

    if args.benchmark is not None:
        benchmark = get_benchmark(args.benchmark)
        if args.dataset is not None:
            benchmark = benchmark.replace(dataset_id=args.dataset)
    elif args.dataset is not None:
        benchmark = custom_benchmark(args.dataset)
    else:
        benchmark = custom_benchmark(None, pretty_name="hf_api_prompt demo scenes", license="mit")
    columns = {}
    for column in ("image_column", "question_column"):
        values = getattr(args, column)
        if values is not None and len(values) > 1:
            raise ValueError(f"--{column.replace('_', '-')} takes one value, got {values}")
        columns[column] = None if values is None else values[0]
    changes = {"split": args.split, **columns}
    return benchmark.replace(**{k: v for k, v in changes.items() if v is not None})


def run(args: argparse.Namespace) -> dict:
    from .publishing import publish_sweep
    from .stages import sweep

    benchmark = _benchmark(args)
    params = _prompter_params(args)
    params.update(image_column=benchmark.image_column, question_column=benchmark.question_column)
    if benchmark.dataset_id is None and "model" not in params:
        params.update(model=bundled.DEMO_MODEL, layer_index=params.get("layer_index", bundled.DEMO_MODEL_LAYER))
    model = params.get("model", f"the {args.backend} default")
    with _step(f"preparing model {model!r}"):
        prompters = sweep(args.backend, **params)
    source = repr(benchmark.dataset_id) if benchmark.dataset_id is not None else "the bundled demo scenes"
    with _step(f"masking {source} with model {model!r}"):
        result = publish_sweep(
            prompters,
            benchmark,
            output_dir=args.output_dir,
            repo_id=args.push_to_hub,
            revision=args.revision,
            private=args.private or None,
            batch_size=args.batch_size,
            limit=args.limit,
            keep_original_image=args.keep_original_image,
            preview_rows=args.preview_rows,
            num_proc=args.num_proc,
            chunk_size=args.chunk_size,
            work_dir=args.work_dir,
            maps_only=args.maps_only,
        )
    return _flat(result)


def remask(args: argparse.Namespace) -> dict:
    from .publishing import publish_remask
    from .stages import OPEN_FIELDS

    with _step(f"remasking {args.maps!r}"):
        return _flat(publish_remask(
            args.maps, maps_config=args.maps_config, revision=args.revision, output_dir=args.output_dir,
            repo_id=args.push_to_hub, private=args.private or None, batch_size=args.batch_size,
            keep_original_image=args.keep_original_image, preview_rows=args.preview_rows,
            **_prompter_params(args, OPEN_FIELDS),
        ))


def _flat(result: dict) -> dict:
    """One variant: its own result at the top level (as before sweeps), with the pass and variant counts."""
    if len(result.get("variants", ())) != 1:
        return result
    return {**result["variants"][0], **{k: v for k, v in result.items() if k != "variants"}}


class StepFailed(Exception):
    """A download, connection or disk failure in a named step of a command.

    ``chain`` is the error and its causes, innermost last; at least one is an
    ``OSError`` or an HTTP client's transport error (huggingface_hub's errors are
    ``OSError``s, httpx's connection errors are not; open_clip wraps a failed
    weights download in a ``RuntimeError``).
    """

    def __init__(self, step: str, chain: Sequence[BaseException]):
        super().__init__(step, chain)
        self.step, self.chain = step, list(chain)

    def __str__(self) -> str:
        detail = _first_line(self.chain[0])
        if len(self.chain) > 1:
            detail += f" (because of {_first_line(self.chain[-1])})"
        retry = "; the same command can be run again to retry" if any(map(_retryable, self.chain)) else ""
        return f"{self.step} failed: {detail}; nothing was published{retry}"


def _retryable(error: BaseException) -> bool:
    """A dropped connection, a busy Hub, a file neither in the cache nor reachable: worth running again."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    from .publishing.retry import is_transient

    return is_transient(error) or isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _causes(error: BaseException) -> list:
    """``error`` and the errors it was raised from or during (as a traceback would show them)."""
    chain = [error]
    while len(chain) < 10:
        last = chain[-1]
        cause = last.__cause__ if last.__cause__ is not None or last.__suppress_context__ else last.__context__
        if cause is None:
            break
        chain.append(cause)
    return chain


@contextlib.contextmanager
def _step(step: str):
    """Turn a failure with an ``OSError`` or a transport error in its chain into :class:`StepFailed` naming ``step``."""
    from .publishing import PublishError

    try:
        yield
    except (PublishError, StepFailed, ValueError, KeyError):  # their messages say what is wrong
        raise
    except Exception as error:
        chain = _causes(error)
        if not any(isinstance(link, OSError) or _retryable(link) for link in chain):
            raise  # a bug: keep the traceback
        raise StepFailed(step, chain) from error


def card(args: argparse.Namespace) -> dict:
    from .publishing.hub import HubPublisher
    from .publishing.layout import read_index, rewrite_card

    if args.repo_id is not None:
        publisher = HubPublisher(args.repo_id)
        commit = publisher.rewrite_card()
        return {"repo_id": publisher.repo_id, "commit": commit, "variants": publisher.index(commit).names()}
    path = rewrite_card(args.output_dir)
    return {"output_dir": args.output_dir, "card": str(path), "variants": read_index(args.output_dir).names()}


def export_lmms_eval(args: argparse.Namespace) -> dict:
    from .publishing.lmms_export import export_variants
    from .stages import OPEN_FIELDS, combinations

    given = _prompter_params(args, OPEN_FIELDS)
    params = combinations(given) if given else None
    written = export_variants(
        args.output_dir,
        repo_id=args.repo_id,
        dataset_dir=args.dataset_dir,
        revision=args.revision,
        config_names=args.config or None,
        base_task=args.base_task,
        params=params,
    )
    return {"include_path": args.output_dir, "tasks": [t for t, _ in written], "files": [str(p) for _, p in written]}


def upload(args: argparse.Namespace) -> dict:
    from .publishing import upload_folder

    return upload_folder(args.dataset_dir, args.repo_id, private=args.private or None)


def _add_threads_flag(group):
    group.add_argument("--num-threads", type=int, help="threads per process for decoding, masking and encoding images "
                       "(default: the cores this process may use, shared among --num-proc or accelerate processes)")
    group.add_argument("--prompt-device", help="torch device for resizing the masks and blending ('cuda', 'cuda:1', "
                       "'auto': the model's device); the images are the same bit for bit (default: the CPU, with Pillow)")


def build_parser() -> argparse.ArgumentParser:
    from .publishing import available_benchmarks

    parser = argparse.ArgumentParser(prog="hf-api-prompt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run_parser = commands.add_parser("run", help="mask a benchmark or dataset into a variant (local folder or Hub)")
    source = run_parser.add_argument_group("source (default: the bundled demo scenes)")
    source.add_argument("--benchmark", help=f"preset: {', '.join(available_benchmarks())}")
    source.add_argument("--dataset", help="save_to_disk folder, data folder or Hub id (with --benchmark: a copy of it)")
    source.add_argument("--split", help="split to read (default: the preset's, else train)")
    source.add_argument("--revision", help="revision of a Hub dataset (default: main, pinned by its commit sha)")
    destination = run_parser.add_argument_group("destination (exactly one)")
    where = destination.add_mutually_exclusive_group(required=True)
    where.add_argument("--output-dir", help="write the repo layout (parquet per config, card, pictures) here")
    where.add_argument("--push-to-hub", metavar="REPO_ID", help="publish the variant as a config of this Hub dataset repo")
    destination.add_argument("--private", action="store_true", help="create the Hub repo as private (if it is created)")
    options = run_parser.add_argument_group("run options")
    options.add_argument("--batch-size", type=int, default=8)
    options.add_argument("--num-proc", type=int, help="datasets.map processes (one model per process); or use accelerate launch")
    _add_threads_flag(options)
    options.add_argument("--chunk-size", type=int, default=256, help="rows per resumable chunk (default 256)")
    options.add_argument("--work-dir", help="where chunks are kept for resuming (default: <output-dir>/.api_chunks, or the datasets cache)")
    options.add_argument("--limit", type=int, help="process only the first N rows")
    options.add_argument("--preview-rows", type=int, default=4, help="rows in the before/heatmap/after picture")
    options.add_argument("--keep-original-image", action="store_true", help="also keep the unmasked image as original_<image column>")
    options.add_argument("--maps-only", action="store_true",
                         help="publish the raw maps of the --layer-index layers (one dataset per model pass) instead of "
                              "masked variants; make variants from them later with `remask`, no model needed")
    _add_prompter_flags(run_parser)
    run_parser.set_defaults(handler=run)

    from .stages import OPEN_FIELDS

    remask_parser = commands.add_parser("remask", help="make variants from a maps dataset (run --maps-only), no model")
    remask_parser.add_argument("--maps", required=True, help="local folder or Hub repo holding the maps dataset")
    remask_parser.add_argument("--maps-config", help="which maps dataset, if there are several")
    remask_parser.add_argument("--revision", default="main", help="where api_variants.json is read on the Hub (default: main)")
    remask_where = remask_parser.add_argument_group("destination (exactly one)").add_mutually_exclusive_group(required=True)
    remask_where.add_argument("--output-dir", help="write the variants here (repo layout)")
    remask_where.add_argument("--push-to-hub", metavar="REPO_ID", help="publish the variants as configs of this Hub dataset repo")
    remask_parser.add_argument("--private", action="store_true", help="create the Hub repo as private (if it is created)")
    remask_parser.add_argument("--batch-size", type=int, default=8)
    _add_threads_flag(remask_parser)
    remask_parser.add_argument("--preview-rows", type=int, default=4, help="rows in the before/heatmap/after picture")
    remask_parser.add_argument("--keep-original-image", action="store_true", help="also keep the unmasked image")
    _add_prompter_flags(remask_parser, OPEN_FIELDS, "recipe and prompt (default: the paper's; --layer-index: every layer "
                        "of the maps); several values make one variant per combination")
    remask_parser.set_defaults(handler=remask)

    card_parser = commands.add_parser("card", help="re-render the dataset card from api_variants.json")
    target = card_parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output-dir", help="a local variant folder")
    target.add_argument("--repo-id", help="a Hub dataset repo (commits the new card to main)")
    card_parser.set_defaults(handler=card)

    export_parser = commands.add_parser("export-lmms-eval", help="write lmms-eval task YAMLs for published variants")
    origin = export_parser.add_mutually_exclusive_group(required=True)
    origin.add_argument("--repo-id", help="a Hub dataset repo of variants")
    origin.add_argument("--dataset-dir", help="a local variant folder")
    export_parser.add_argument("--revision", default="main", help="where to read api_variants.json on the Hub (default: main)")
    export_parser.add_argument("--config", action="append", help="variant(s) to export (default: all); repeatable")
    export_parser.add_argument("--base-task", help="lmms-eval task to derive from (default: the benchmark's)")
    export_parser.add_argument("--output-dir", required=True, help="folder to pass to lmms-eval --include_path")
    _add_prompter_flags(export_parser, OPEN_FIELDS, "on-the-fly masking of a maps dataset (run --maps-only): one task "
                        "per combination, masked when lmms-eval reads a doc (--layer-index default: the maps' deepest)")
    export_parser.set_defaults(handler=export_lmms_eval)

    upload_parser = commands.add_parser("upload", help="upload a local variant folder to the Hub in one commit, then tag it")
    upload_parser.add_argument("--dataset-dir", required=True)
    upload_parser.add_argument("--repo-id", required=True)
    upload_parser.add_argument("--private", action="store_true")
    upload_parser.set_defaults(handler=upload)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .publishing import PublishError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    parser = build_parser()
    args = parser.parse_args(argv)
    threads = getattr(args, "num_threads", None)
    if threads is not None and threads < 1:
        parser.exit(2, f"hf-api-prompt: error: --num-threads must be >= 1, got {threads}\n")
    device = getattr(args, "prompt_device", None)
    try:
        if device is not None:
            from .device_prompt import check_device

            check_device(device)
        with _step(args.command), parallel.threads_per_process(threads), parallel.environment(parallel.PROMPT_DEVICE_ENV, device):
            summary = args.handler(args)
    except (PublishError, ValueError, KeyError, StepFailed) as error:  # the messages say what to do; a traceback would not
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        parser.exit(2, f"hf-api-prompt: error: {message}\n")
    except KeyboardInterrupt as interrupt:  # Ctrl-C: exit as a shell reports it (128 + SIGINT)
        saved = f"{interrupt}; " if isinstance(interrupt, RunInterrupted) else ""
        parser.exit(130, f"hf-api-prompt: interrupted: {saved}nothing was published\n")
    if "process_index" not in summary:  # under accelerate launch, the main process reports
        print(json.dumps(summary, sort_keys=True))
    _end_process_group()
    return 0


def _end_process_group():
    """Leave the launcher's process group cleanly (runs can abort at exit otherwise)."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
