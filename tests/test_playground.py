"""The playground (hf_api_prompt/playground.py): its predict function offline, then the page in headless Chromium.

Only the tests that need them import Gradio and selenium (the ``playground`` and
``test`` extras; ``.ci/run`` installs both), and skip without them, so the rest of
the suite runs without either. The browser test needs Debian's ``chromium`` and
``chromium-driver`` (``.ci/run`` installs them) and skips, saying so, only when
they are missing or cannot start.
"""

import io
import shutil
import socket
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_api_prompt import ImagePrompter
from hf_api_prompt.bundled import DEMO_MODEL, DEMO_MODEL_LAYER
from hf_api_prompt.playground import PlaygroundPredictor, _gradio, build_app, demo_examples, predict

from compare import stored_image

SCENE_PATH, SCENE_QUESTION = demo_examples()[2]
TYPED_QUESTION = "What color is the cross?"
DEMO = {"model": DEMO_MODEL, "layer_index": DEMO_MODEL_LAYER}
PAGE_TIMEOUT_S = 60
RESULT_TIMEOUT_S = 120
# Gradio 6.31's queue calls a pandas option that pandas 3 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


def reference(image, question: str, **params) -> dict:
    """What ``ImagePrompter`` itself writes for one row, the masked image as a reader of the dataset sees it."""
    out = ImagePrompter("clip", **{**DEMO, **params})({"image": [image], "question": [question]})
    return {"masked_image": stored_image(out["masked_image"][0]), "heatmap": out["heatmap"][0]}


def ui_values(image, question=SCENE_QUESTION, *, model=DEMO_MODEL, layer_index=DEMO_MODEL_LAYER, geometry="paper"):
    """The page's input widgets, in order: backend, model, pretrained, layer, coe, kernel, interpolation, gray, geometry."""
    return [image, question, "clip", model, "", layer_index, 5.0, 3, "LANCZOS", 0, geometry]


@pytest.fixture
def scene() -> Image.Image:
    return Image.open(SCENE_PATH).convert("RGB")


# ----------------------------------------------------------------------------- without a browser
@pytest.mark.parametrize(
    "params",
    [{}, {"geometry": "aligned"}, {"grayscale": 128, "interpolation": "bicubic", "kernel_size": 1, "enhance_coe": 2.5}],
)
def test_predictor_matches_image_prompter(scene, params):
    result = PlaygroundPredictor()(scene, SCENE_QUESTION, "clip", **DEMO, **params)
    expected = reference(scene, SCENE_QUESTION, **params)
    assert np.array_equal(np.asarray(result.masked_image), np.asarray(expected["masked_image"]))
    np.testing.assert_array_equal(result.heatmap, expected["heatmap"])
    assert result.mask.mode == "L" and result.mask.size == scene.size
    assert result.answer is None and result.config.layer_index == DEMO_MODEL_LAYER


@pytest.mark.parametrize("image_format", ["source", "png"])
def test_predictor_shows_what_the_variant_stores_for_a_jpeg(scene, image_format):
    """A JPEG source is stored as JPEG q75 by default: the page shows those pixels, not the lossless blend."""
    buffer = io.BytesIO()
    scene.save(buffer, "JPEG", quality=90)
    jpeg = {"bytes": buffer.getvalue(), "path": None}
    result = PlaygroundPredictor()(jpeg, SCENE_QUESTION, "clip", **DEMO, image_format=image_format)
    expected = reference(jpeg, SCENE_QUESTION, image_format=image_format)
    assert expected["masked_image"].format == {"source": "JPEG", "png": "PNG"}[image_format]
    np.testing.assert_array_equal(np.asarray(result.masked_image), np.asarray(expected["masked_image"]))
    np.testing.assert_array_equal(result.heatmap, expected["heatmap"])


def test_predictor_keeps_a_bounded_cache_of_prompters():
    predictor = PlaygroundPredictor(max_prompters=2)
    first = predictor.prompter("clip", **DEMO)
    assert predictor.prompter("clip", **DEMO) is first
    second = predictor.prompter("clip", **DEMO, enhance_coe=2.0)
    assert second is not first
    predictor.prompter("clip", **DEMO, kernel_size=5)  # a third config evicts the least recently used
    assert predictor.prompter("clip", **DEMO, enhance_coe=2.0) is second
    assert predictor.prompter("clip", **DEMO) is not first
    with pytest.raises(ValueError, match="max_prompters"):
        PlaygroundPredictor(max_prompters=0)


def test_predict_returns_the_page_outputs(scene, tmp_path):
    pytest.importorskip("gradio")  # predict() raises gradio.Error
    out = predict(PlaygroundPredictor(), tmp_path, scene, *ui_values(scene)[1:])
    expected = reference(scene, SCENE_QUESTION)
    assert out["heatmap"].mode == "RGB" and out["heatmap"].size == scene.size
    assert out["mask"].mode == "L" and out["mask"].size == scene.size
    assert np.array_equal(np.asarray(out["masked_image"]), np.asarray(expected["masked_image"]))
    download = Path(out["download"])
    assert download.name == "masked_image.png" and download.parent.parent == tmp_path
    assert np.array_equal(np.asarray(Image.open(download).convert("RGB")), np.asarray(expected["masked_image"]))
    assert out["answer"] == ""
    assert out["config"]["layer_index"] == DEMO_MODEL_LAYER and out["config"]["model"] == DEMO_MODEL


@pytest.mark.parametrize("style, widgets, params", [
    ("blur", [0.1, 0.5, 0.0, 0.5], {"blur_radius": 0.1}),
    ("crop", [0.1, 0.5, 0.0, 0.5], {"crop_mass": 0.5, "crop_padding": 0.0, "crop_min_size": 0.5}),
])
def test_predict_offers_the_prompt_styles_with_their_own_parameters(scene, tmp_path, style, widgets, params):
    """The page's style and its parameter widgets: only the chosen style's parameters reach the prompter."""
    pytest.importorskip("gradio")
    out = predict(PlaygroundPredictor(), tmp_path, *ui_values(scene), style, *widgets)
    expected = reference(scene, SCENE_QUESTION, prompt=style, **params)
    assert np.array_equal(np.asarray(out["masked_image"]), np.asarray(expected["masked_image"]))
    assert out["config"]["prompt"] == style and all(out["config"][k] == v for k, v in params.items())
    assert out["heatmap"].size == out["mask"].size == scene.size  # the input's size, whatever the crop's
    if style == "crop":
        assert out["masked_image"].size != scene.size


def test_predict_reports_errors_as_gradio_errors(scene, tmp_path):
    predictor = PlaygroundPredictor()
    cases = [
        (ui_values(scene, model="local-dir:/no/such/model"), "FileNotFoundError: model 'local-dir:/no/such/model'"),
        (ui_values(scene, layer_index=99), "layer_index 99 is out of range"),
        (ui_values(scene, geometry="sideways"), "geometry must be one of"),
        (ui_values(scene, layer_index=None), "layer_index is empty"),
        (ui_values(scene, question="   "), "question"),
        (ui_values(None), "Upload an image"),
    ]
    gr = pytest.importorskip("gradio")
    for values, message in cases:
        with pytest.raises(gr.Error, match=message):
            predict(predictor, tmp_path, *values)
    assert predict(predictor, tmp_path, *ui_values(scene))["masked_image"].size == scene.size  # still serving


def test_build_app_lays_out_the_page(monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # where Gradio copies the example images
    app = build_app()
    ids = {block.elem_id for block in app.blocks.values()}
    expected = {"input-image", "question", "submit", "examples", "backend", "model", "pretrained", "layer-index",
                "enhance-coe", "kernel-size", "interpolation", "grayscale", "geometry",
                "prompt", "blur-radius", "crop-mass", "crop-padding", "crop-min-size",
                "heatmap", "mask", "masked-image", "download", "answer", "config"}
    assert expected <= ids
    with pytest.raises(ValueError, match="unknown backend"):
        build_app(backend="nope")


def test_missing_gradio_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(ImportError, match=r"pip install 'hf_api_prompt\[playground\]'"):
        _gradio()


# ----------------------------------------------------------------------------- in a real browser
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,1800",
]


@pytest.fixture
def browser():
    """Headless Debian Chromium through its matching chromedriver (selenium, no downloads)."""
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)")
    profile = tempfile.mkdtemp(prefix="hf_api_prompt_chromium_")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    except WebDriverException as error:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"chromium ({chromium}) or chromedriver ({chromedriver}) did not start: {error.msg}")
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def playground_url(monkeypatch, tmp_path):
    """The playground served on 127.0.0.1 from this process; Gradio's file cache under ``tmp_path``."""
    pytest.importorskip("gradio")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_app()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        app.close()


def fetch_image(url: str) -> Image.Image:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never via a proxy
    with opener.open(url, timeout=30) as response:
        image = Image.open(response)
        image.load()
    return image


@pytest.mark.slow
def test_page_masks_a_bundled_scene(browser, playground_url, scene):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def find(css):
        return browser.find_elements(By.CSS_SELECTOR, css)

    browser.get(playground_url)
    example = WebDriverWait(browser, PAGE_TIMEOUT_S).until(lambda _: find('#examples [data-testid="dataset-cell-2-0"]'))[0]
    example.click()  # pick the scene from the bundled examples: fills image and question
    question = find("#question textarea")[0]
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(lambda _: find("#input-image img") and question.get_attribute("value") == SCENE_QUESTION)
    question.clear()
    question.send_keys(TYPED_QUESTION)
    find("#submit")[0].click()

    done = '#masked-image img', '#mask img', '#heatmap img', '#download a[data-testid="download-link"]'
    WebDriverWait(browser, RESULT_TIMEOUT_S).until(lambda _: all(find(css) for css in done))
    masked = fetch_image(find("#masked-image img")[0].get_attribute("src")).convert("RGB")
    mask = np.asarray(fetch_image(find("#mask img")[0].get_attribute("src")).convert("L"))
    heatmap = fetch_image(find("#heatmap img")[0].get_attribute("src"))
    download = fetch_image(find('#download a[data-testid="download-link"]')[0].get_attribute("href")).convert("RGB")

    assert masked.size == download.size == heatmap.size == scene.size and mask.shape == (scene.height, scene.width)
    assert np.array_equal(np.asarray(masked), np.asarray(download))
    # The page used the picked image, the typed question and the default parameters: same result as the library.
    assert np.array_equal(np.asarray(masked), np.asarray(reference(scene, TYPED_QUESTION)["masked_image"]))
    # Where the mask is low the masked image is dimmed towards gray 0; where it is 1 the input is kept.
    original, result = np.asarray(scene).astype(int), np.asarray(masked).astype(int)
    low, high, full = mask < 64, mask >= 240, mask == 255
    assert low.sum() >= 100 and high.sum() >= 100, f"mask should have low and high regions, got {low.sum()} and {high.sum()} pixels"
    assert np.all(result[low] <= original[low])
    bright = low[..., None] & (original >= 16)
    assert np.all(result[bright] < original[bright])
    assert (original[low] - result[low]).mean() > 0.5 * original[low].mean()
    assert np.all((result[high] <= original[high]) & (original[high] - result[high] <= 16))
    assert np.array_equal(result[full], original[full])

    # A bad parameter is shown on the page as an error, not a crash.
    layer = find("#layer-index input")[0]
    layer.send_keys(Keys.CONTROL, "a")
    layer.send_keys("99")
    assert layer.get_attribute("value") == "99"
    find("#submit")[0].click()

    def toasts():  # textContent: .text is empty while the toast fades in
        return [toast.get_attribute("textContent") for toast in find('[data-testid="toast-text"]')]

    WebDriverWait(browser, PAGE_TIMEOUT_S).until(lambda _: any(text.strip() for text in toasts()))
    assert any("layer_index 99 is out of range" in text for text in toasts()), toasts()
