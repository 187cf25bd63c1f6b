"""Small model and data shipped with the package, so the main job runs offline.

``DEMO_MODEL`` is a tiny open_clip ViT (224 px, 16 px patches: a 14x14 grid,
4 blocks of width 128) with RANDOM weights, made by
``scripts/make_demo_assets.py``; its masks show the arithmetic, not relevance.
``DEMO_DATA`` is a folder of procedurally drawn scenes with MM-Vet-like columns
(``question_id``, ``image``, ``question``, ``answer``), readable with
``datasets.load_dataset("imagefolder", data_dir=DEMO_DATA, split="train")``.
"""

from pathlib import Path

_DATA = Path(__file__).resolve().parent / "data"
DEMO_MODEL = "local-dir:" + str(_DATA / "demo-clip")
DEMO_MODEL_LAYER = 2
DEMO_MODEL_IS_RANDOM = True
DEMO_DATA = str(_DATA / "demo-scenes")


def load_demo_dataset():
    """The bundled scenes as a ``datasets.Dataset`` (split ``train``)."""
    from datasets import load_dataset

    return load_dataset("imagefolder", data_dir=DEMO_DATA, split="train")
