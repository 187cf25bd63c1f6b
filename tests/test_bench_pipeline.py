"""scripts/bench_pipeline.py at a tiny size: its report, and numbers that follow from what each codec does."""

import importlib.util
from pathlib import Path

import numpy as np

_SPEC = importlib.util.spec_from_file_location("bench_pipeline", Path(__file__).resolve().parents[1] / "scripts" / "bench_pipeline.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_photo_like_images_are_noisy_and_sized():
    pixels = bench.photo_like(np.random.default_rng(0), 64, 48)
    assert pixels.shape == (48, 64, 3) and pixels.dtype == np.uint8
    assert np.abs(np.diff(pixels.astype(int), axis=1)).mean() > 2  # sensor noise: no flat areas a codec could skip
    shapes = {bench.Image.open(bench.io.BytesIO(data)).size for data in bench.set_1024(2)}
    assert shapes == {(1024, 768), (768, 1024)}


def test_bench_pipeline_quick(capsys):
    import datasets

    assert datasets.is_progress_bar_enabled()
    result = bench.main(["--quick", "--rows", "8", "--repeats", "1", "--sections", "1", "2", "4"])
    assert datasets.is_progress_bar_enabled()  # restored for the tests that follow
    out = capsys.readouterr().out
    assert [c["check"] for c in result["checks"]] == [
        "1 thread image work per row, default format (ms)", "image pool scaling, 2 threads / 1",
        "bundled prompter.map / bare decode+JPEG map, rows/s"]
    assert all(c["result"] in ("PASS", "FAIL") and c["result"] in out for c in result["checks"])
    encode = result["image_work"]["encode"]
    # A JPEG source: "source" stores it as "jpeg" does; higher quality and lossless cost bytes.
    assert encode["source q75 (default)"]["bytes"] == encode["jpeg q75"]["bytes"]
    assert encode["jpeg q75"]["bytes"] < encode["jpeg q95"]["bytes"] < encode["png"]["bytes"]
    assert result["image_work"]["prompt_paths_equal"]  # the torch path makes the Pillow path's image
    matrix = {(entry["format"], entry["threads"]): entry for entry in result["mmvet"]}
    assert set(matrix) == {(name, threads) for name, _ in bench.FORMATS for threads in (1, 2)}
    for threads in (1, 2):
        # PNG keeps every source lossless, "source" only the PNG ones: between JPEG q75 and PNG in size.
        sizes = [matrix[(name, threads)]["output_bytes"] for name in ("jpeg q75", "source q75 (default)", "png")]
        assert sizes[0] < sizes[1] < sizes[2]
