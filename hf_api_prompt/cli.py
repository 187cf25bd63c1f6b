"""``hf-api-prompt``: a thin command line over :class:`ImagePrompter`.

    hf-api-prompt run --output-dir out/                      # bundled demo scenes + bundled model
    hf-api-prompt run --dataset DIR_OR_HUB_ID --split test --model ViT-L-14-336 --output-dir out/
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Optional, Sequence

from . import bundled
from .config import PrompterConfig
from .prompter import ImagePrompter

logger = logging.getLogger("hf_api_prompt")

# Filled in by the library, or chosen by their own flag.
_NOT_FLAGS = {"backend", "library_version", "weights_sha256"}


def _field_parser(field: dataclasses.Field):
    kind = typing.get_type_hints(PrompterConfig)[field.name]
    optional = type(None) in typing.get_args(kind)
    base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)

    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        return base(text)

    return parse


def _add_prompter_flags(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("prompter parameters (defaults: the backend's paper settings)")
    group.add_argument("--backend", default="clip")
    for field in dataclasses.fields(PrompterConfig):
        if field.name not in _NOT_FLAGS:
            group.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=_field_parser(field), default=None)


def load_input_dataset(path: Optional[str], split: Optional[str]):
    """A ``save_to_disk`` folder, a data folder (e.g. imagefolder) or a Hub dataset id."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    if path is None:
        return bundled.load_demo_dataset()
    if os.path.isdir(path) and (Path(path) / "dataset_dict.json").exists() or (Path(path) / "state.json").exists():
        dataset = load_from_disk(path)
        if isinstance(dataset, DatasetDict):
            if split is None:
                raise SystemExit(f"{path} holds splits {list(dataset)}: pass --split")
            dataset = dataset[split]
        return dataset
    return load_dataset(path, split=split or "train")


def run(args: argparse.Namespace) -> dict:
    params = {f.name: getattr(args, f.name) for f in dataclasses.fields(PrompterConfig) if f.name not in _NOT_FLAGS}
    params = {k: v for k, v in params.items() if v is not None}
    if args.dataset is None and "model" not in params:
        params.update(model=bundled.DEMO_MODEL, layer_index=params.get("layer_index", bundled.DEMO_MODEL_LAYER))
        if bundled.DEMO_MODEL_IS_RANDOM:
            logger.warning("the bundled demo model has RANDOM weights: its masks show the arithmetic, not relevance")
    prompter = ImagePrompter(args.backend, **params)
    dataset = load_input_dataset(args.dataset, args.split)
    if args.limit is not None:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    result = prompter.map(dataset, batch_size=args.batch_size)

    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    result.save_to_disk(str(output / "dataset"))
    (output / "prompter_config.json").write_text(json.dumps(prompter.config.to_dict(), indent=2, sort_keys=True) + "\n")
    _write_preview(result, prompter.config, output / "preview.png", args.preview_rows)
    return {"output_dir": str(output), "num_rows": len(result), "config": prompter.config.to_dict()}


def _write_preview(result, config: PrompterConfig, path: Path, rows: int):
    import numpy as np

    from .preview import preview_grid

    sample = result.select(range(min(rows, len(result))))
    sample = sample.filter(lambda row: row[config.heatmap_column] is not None)
    if len(sample) == 0:
        return
    preview_grid(
        sample[config.image_column],
        [np.asarray(h) for h in sample[config.heatmap_column]],
        sample[config.masked_image_column],
        sample[config.question_column],
    ).save(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-api-prompt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="mask a dataset and write it with a preview picture")
    run_parser.add_argument("--dataset", help="save_to_disk folder, data folder or Hub id (default: bundled demo scenes)")
    run_parser.add_argument("--split", help="split to read (default: train)")
    run_parser.add_argument("--output-dir", required=True)
    run_parser.add_argument("--batch-size", type=int, default=8)
    run_parser.add_argument("--limit", type=int, help="process only the first N rows")
    run_parser.add_argument("--preview-rows", type=int, default=4)
    _add_prompter_flags(run_parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    summary = run(args)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
