"""The repository stands on its own: no file points outside the checkout.

Docs, docstrings and tests once cited a sibling folder (the method's description
and the golden fixtures beside the project), which a fresh clone does not have.
"""

import os
import re
from pathlib import Path

from conftest import ROOT

TEXT_SUFFIXES = {".py", ".md", ".cfg", ".toml", ".yaml", ".yml", ".json", ".txt", ".sh", ".ini"}
# Spelled in two halves so that this file does not match itself.
OUTSIDE = re.compile("|".join([r"\.\./" + "shared", r"(?<![\w./-])/" + r"work/"]))
# What .gitignore keeps out of a clone (environments, caches, build and run outputs).
NOT_OURS = {".git", ".venv", "__pycache__", ".pytest_cache", "build", "dist", "out"}


def repository_text_files():
    """The text files of the checkout (a git clone or an unpacked archive alike), without ignored folders."""
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if name not in NOT_OURS and not name.endswith(".egg-info")]
        for name in names:
            path = Path(folder, name)
            if path.suffix in TEXT_SUFFIXES or path.relative_to(ROOT).parts[0] == ".ci":
                yield path


def test_no_file_points_outside_the_repository():
    files = list(repository_text_files())
    assert any(path.name == "README.md" for path in files) and any(path.suffix == ".py" for path in files)
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "paths outside the repository:\n" + "\n".join(found)


def test_golden_fixtures_are_in_the_repository():
    """Every file the golden manifest names is vendored under tests/fixtures/golden (the default GOLDEN)."""
    import json

    golden = ROOT / "tests" / "fixtures" / "golden" / "clip_public"
    manifest = json.loads((golden / "manifest.json").read_text())
    named = {manifest["model"]["config"], manifest["model"]["weights"], manifest["extra_expected"]["tokens"],
             *manifest["extra_expected"]["preprocessed"].values(), *(image["file"] for image in manifest["images"]),
             *(path for case in manifest["cases"] for path in case["expected"].values())}
    missing = sorted(name for name in named if not (golden / name).is_file())
    assert not missing, f"golden files missing from {golden}: {missing[:5]}"
    present = {str(path.relative_to(golden)) for path in golden.rglob("*") if path.is_file()}
    assert present == named | {"README.md", "manifest.json", "model/open_clip_config.json"}
