import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("HF_API_PROMPT_GOLDEN", ROOT.parent / "shared" / "golden" / "clip_public"))
GOLDEN_MODEL = "local-dir:" + str(GOLDEN / "model")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"golden fixtures not found at {GOLDEN} (set HF_API_PROMPT_GOLDEN)")
    return GOLDEN
