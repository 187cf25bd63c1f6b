"""scripts/bench_sweep.py at a tiny size: its tables, and the sweep's variants equal to separate runs'."""

import importlib.util
import json
from pathlib import Path

import numpy as np

from compare import assert_heatmaps_close
from hf_api_prompt import ImagePrompter
from hf_api_prompt.bundled import DEMO_MODEL

_SPEC = importlib.util.spec_from_file_location("bench_sweep", Path(__file__).resolve().parents[1] / "scripts" / "bench_sweep.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)

# The bundled model has blocks 0..3 and a 14 x 14 grid; 3 rows in batches of 2 end on a partial batch.
ARGS = ["--model", DEMO_MODEL, "--rows", "3", "--size", "32", "--batch-size", "2", "--layers", "2", "3",
        "--enhance-coe", "5", "--kernel-sizes", "1", "3", "--grayscale", "0", "200"]
NAMES = [f"L{layer} e5 k{kernel} g{gray}" for layer in (2, 3) for kernel in (1, 3) for gray in (0, 200)]


def test_bench_sweep_tiny(capsys, tmp_path):
    import datasets

    assert datasets.is_caching_enabled()
    report = bench.main(ARGS + ["--json", str(tmp_path / "sweep.json")])
    # The bench turns datasets' cache off for its runs only: later tests rely on cache hits.
    assert datasets.is_caching_enabled()
    lines = capsys.readouterr().out.splitlines()

    def line(start):
        found = [text for text in lines if text.startswith(start)]
        assert len(found) == 1, (start, lines)
        return found[0]

    for name in NAMES:
        assert len(line(name + " ").split()) == 4 + 8  # name (4 words), load model rest total | remask | in memory
    for run in ("(a) sweep: setup + maps pass", "(a) sweep: 8 x remask", "(a) sweep, all", "(b) 8 separate runs, sum",
                "(b) one separate run, mean", "(c) single run, deepest layer"):
        line(run)
    for ratio in ("sweep model / single-run model", "sweep total / 8 separate totals (with model loads)",
                  "sweep total / 8 separate totals (without model loads)", "same in memory"):
        assert line(ratio).split()[-1] in ("PASS", "FAIL")
    assert "checks passed: 8 variants" in line("checks passed:") and "single run == sweep variant L3 e5 k3 g0" in line("checks")

    heatmaps = report["heatmaps"]
    assert list(heatmaps["sweep"]) == NAMES and list(heatmaps["separate"]) == NAMES
    for name in NAMES:
        assert heatmaps["sweep"][name].shape == (3, 14, 14)
        assert_heatmaps_close(heatmaps["sweep"][name], heatmaps["separate"][name], name)
    # Not a comparison of a thing with itself: layers and kernels change the heatmap, grayscale does not.
    assert np.abs(heatmaps["sweep"]["L2 e5 k3 g0"] - heatmaps["sweep"]["L3 e5 k3 g0"]).max() > 1e-2
    assert np.abs(heatmaps["sweep"]["L3 e5 k1 g0"] - heatmaps["sweep"]["L3 e5 k3 g0"]).max() > 1e-2
    assert np.array_equal(heatmaps["sweep"]["L3 e5 k3 g0"], heatmaps["sweep"]["L3 e5 k3 g200"])
    # ... and one variant run here, independently of the bench, on the same data.
    direct = ImagePrompter("clip", model=DEMO_MODEL, layer_index=2, kernel_size=1).map(bench.make_dataset(3, 32))
    assert_heatmaps_close(direct.with_format("numpy")["heatmap"], heatmaps["sweep"]["L2 e5 k1 g0"], "direct run")

    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["name"] for r in saved["variants"]] == NAMES and len(saved["ratios"]) == 4 and "heatmaps" not in saved
    assert saved["sweep"]["total"] == report["sweep"]["total"] > 0
