"""Small model and data shipped with the package, so the main job runs offline.

``DEMO_MODEL`` is a tiny open_clip ViT (112 px input, 8 px patches: a 14x14
grid; 4 blocks of width 128; 4.2 M parameters, float16) TRAINED from scratch on
the procedural scenes of ``hf_api_prompt.scenes`` by
``scripts/train_demo_clip.py`` (see ``data/demo-clip/MODEL_CARD.md``). It knows
six colours and, weakly, four shapes on noisy backgrounds, nothing else: it is a
demonstration and a test fixture, not a substitute for a real CLIP.
``DEMO_MODEL_LAYER`` is the block whose maps point best at the asked-about
object in ``scripts/bench_pointing.py`` (block 1 of 0..3).
``DEMO_DATA`` is a folder of procedurally drawn scenes with MM-Vet-like columns
(``question_id``, ``image``, ``question``, ``answer``, plus ``bbox``),
readable with ``datasets.load_dataset("imagefolder", data_dir=DEMO_DATA, split="train")``;
``scripts/make_demo_assets.py`` writes it.
"""

from pathlib import Path

_DATA = Path(__file__).resolve().parent / "data"
DEMO_MODEL = "local-dir:" + str(_DATA / "demo-clip")
DEMO_MODEL_LAYER = 1
DEMO_DATA = str(_DATA / "demo-scenes")


def load_demo_dataset():
    """The bundled scenes as a ``datasets.Dataset`` (split ``train``)."""
    from datasets import load_dataset

    return load_dataset("imagefolder", data_dir=DEMO_DATA, split="train")
