"""The Gradio demo (app.py) in a real browser: headless Chromium (Debian's) driven by Selenium.

The app runs as a user starts it (``python app.py --model <checkpoint>``) in a subprocess on a free localhost port;
the page is driven as a user would: upload a real Gaia archive file, read the table off the page, move a slider.
Screenshots go to the test's tmp_path (their paths are printed; run with ``-s`` to see them).
"""

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, free_port, stop_process_group, wait_for_http
from dataset_builder import read_xp_continuous
from dataset_builder.features import normalised_xp
from modeling_astro.tasks import SPECTRA_INPUTS

pytest_plugins = ["training_fixtures"]
pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[demo]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium: pip install selenium")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = SHARED_DATA / "gaia_archive_samples"
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no Chromium + chromedriver on PATH (Debian: apt-get install chromium chromium-driver; .ci/run does it)",
)
LABELS = ("teff", "logg", "m_h", "ebv")


@pytest.fixture(scope="module")
def demo_url(tiny_trained_checkpoint, tmp_path_factory):
    """``python app.py --model <tiny checkpoint>`` serving on a free port; its URL (stopped after the module)."""
    port = free_port()
    log = tmp_path_factory.mktemp("demo_server") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--model", str(tiny_trained_checkpoint), "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, timeout=300, process=process, log=log)
        yield url
    finally:
        stop_process_group(process)
    assert "Traceback" not in log.read_text(), f"the app logged a traceback:\n{log.read_text()[-3000:]}"


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def open_page(browser, url: str) -> None:
    browser.get(url)
    WebDriverWait(browser, 120).until(
        lambda driver: (
            driver.find_elements(By.CSS_SELECTOR, "button[role=tab]")
            and driver.find_elements(By.ID, "labels-status")
            and driver.find_elements(By.CSS_SELECTOR, "#xp-file input[type=file]")
        )
    )


def open_tab(browser, title: str) -> None:
    [tab] = [tab for tab in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if tab.text == title]
    tab.click()


def screenshot(browser, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def wait_until_idle(browser, element_id: str, timeout: float = 120) -> None:
    """Wait until the component ``element_id`` shows no Gradio progress tracker ("processing | ...")."""

    def idle(driver) -> bool:
        trackers = driver.find_elements(By.CSS_SELECTOR, f"#{element_id} [data-testid=status-tracker]")
        return all("hide" in (tracker.get_attribute("class") or "").split() for tracker in trackers)

    WebDriverWait(browser, timeout).until(idle)


def upload_file(browser, element_id: str, path: Path) -> None:
    """Put ``path`` into the file component ``element_id`` (replacing an earlier upload) and wait until it shows."""
    for clear in browser.find_elements(By.CSS_SELECTOR, f"#{element_id} button[aria-label=Clear]"):
        clear.click()
    WebDriverWait(browser, 60).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, f"#{element_id} input[type=file]")
    )
    browser.find_element(By.CSS_SELECTOR, f"#{element_id} input[type=file]").send_keys(str(path))
    WebDriverWait(browser, 60).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, f"#{element_id} td.filename[aria-label='{path.name}']")
    )


def predict_from_file(browser, path: Path, g_mag: float | None = None) -> None:
    """Upload ``path`` on the first tab (typing G if given), press Predict and wait for the status line."""
    status = browser.find_element(By.ID, "labels-status")
    before = status.text
    upload_file(browser, "xp-file", path)
    if g_mag is not None:
        box = browser.find_element(By.CSS_SELECTOR, "#g-mag textarea, #g-mag input")
        box.clear()
        box.send_keys(str(g_mag), Keys.TAB)
    browser.find_element(By.ID, "predict").click()
    WebDriverWait(browser, 120).until(lambda driver: (text := status.text) and text != before)
    wait_until_idle(browser, "labels-status")
    wait_until_idle(browser, "labels-table")


def page_table(browser) -> dict[str, np.ndarray]:
    """The labels table as rendered in the page DOM: {column header: values (float, source_id as int)}.

    Gradio's dataframe draws its rows as a virtual list (``.virtual-row`` of ``.body-cell``); the grid's
    ``aria-rowcount`` counts them plus the header row.
    """
    table = browser.find_element(By.ID, "labels-table")
    WebDriverWait(browser, 60).until(
        lambda driver: (
            len(table.find_elements(By.CSS_SELECTOR, ".virtual-row"))
            == int(table.find_element(By.CSS_SELECTOR, "[role=grid]").get_attribute("aria-rowcount")) - 1
        )
    )
    headers = browser.execute_script(
        "return [...arguments[0].querySelectorAll('thead th')].map(e => e.textContent.replace('⋮', '').trim())",
        table,
    )
    rows = browser.execute_script(
        "return [...arguments[0].querySelectorAll('.virtual-row')].map(r => [...r.querySelectorAll('.body-cell')]"
        ".map(c => c.textContent.trim()))",
        table,
    )
    columns = list(zip(*rows, strict=True))
    return {
        name: np.array(values, dtype=np.int64 if name == "source_id" else np.float64)
        for name, values in zip(headers, columns, strict=True)
    }


def expected_labels(predictor, path: Path, g_mag: float | None = None) -> dict[str, np.ndarray]:
    """AstroPredictor on the same file: XP coefficients / f_G as the builder makes them, the paper's inputs."""
    xp = read_xp_continuous(path)
    g = xp.phot_g_mean_mag if xp.phot_g_mean_mag is not None else np.full(len(xp), g_mag)
    inputs = {}
    for band in ("bp", "rp"):
        values, errors = normalised_xp(
            getattr(xp, f"{band}_coefficients"), getattr(xp, f"{band}_coefficient_errors"),
            getattr(xp, f"{band}_n_relevant_bases"), g,
        )  # fmt: skip
        for i in range(values.shape[1]):
            if f"{band}{i}" in SPECTRA_INPUTS:
                inputs[f"{band}{i}"], inputs[f"{band}{i}_err"] = values[:, i], errors[:, i]
    table = predictor.predict(inputs, ["teff", "logg", "m_h", "logebv"])
    expected = {name: table[name].to_numpy() for name in table.columns}
    expected["ebv"] = np.exp(expected["logebv"])
    expected["ebv_sigma"] = expected["ebv"] * expected["logebv_sigma"]
    expected["source_id"] = xp.source_id
    return expected


def image_pixels(browser, element_id: str) -> np.ndarray:
    """The rendered pixels of an element (a browser screenshot of it), as an RGB array."""
    from PIL import Image

    element = browser.find_element(By.ID, element_id)
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB"))


def test_uploaded_archive_files_give_the_predictor_table(demo_url, browser, tiny_predictor, tmp_path):
    open_page(browser, demo_url)
    worst = 0.0
    for path, g_mag in (
        (SAMPLES / "cholesky_solution" / "18Sco-XP-spectra.csv", None),  # has phot_g_mean_mag
        (SAMPLES / "xp_continuous" / "XP_CONTINUOUS_RAW_with_missing_BP.fits", 15.0),  # G typed; one has no BP
    ):
        predict_from_file(browser, path, g_mag)
        status = browser.find_element(By.ID, "labels-status").text
        assert status.startswith(f"Predicted {len(read_xp_continuous(path))} star(s)"), status
        table, expected = page_table(browser), expected_labels(tiny_predictor, path, g_mag)
        np.testing.assert_array_equal(table["source_id"], expected["source_id"])
        for name in LABELS:
            for column in (name, f"{name}_sigma"):
                assert np.isfinite(expected[column]).all(), (path.name, column)
                difference = np.abs(table[column] - expected[column]) / np.abs(expected[column])
                worst = max(worst, float(difference.max()))
                np.testing.assert_allclose(table[column], expected[column], rtol=1e-6, err_msg=f"{path.name}")
        plot = browser.find_element(By.CSS_SELECTOR, "#labels-plot img")
        assert plot.get_attribute("naturalWidth") not in (None, "0"), "the predicted-vs-input plot is not shown"
        screenshot(browser, tmp_path, f"labels-{path.stem}")
    print(f"page table vs AstroPredictor: max relative difference {worst:.2e}")


def test_pasted_colours_give_a_table(demo_url, browser, tiny_predictor):
    open_page(browser, demo_url)
    box = browser.find_element(By.CSS_SELECTOR, "#colours textarea")
    box.clear()
    box.send_keys("bprp,jh,jk\n0.95,0.45,0.55")
    browser.find_element(By.ID, "predict").click()
    WebDriverWait(browser, 120).until(lambda driver: "Predicted" in driver.find_element(By.ID, "labels-status").text)
    wait_until_idle(browser, "labels-table")
    table = page_table(browser)
    expected = tiny_predictor.predict({"bprp": [0.95], "jh": [0.45], "jk": [0.55]}, ["teff", "logg"])
    for name in ("teff", "teff_sigma", "logg", "logg_sigma"):
        np.testing.assert_allclose(table[name], expected[name].to_numpy(), rtol=1e-6, err_msg=name)


def test_moving_a_slider_changes_the_spectrum(demo_url, browser, tmp_path):
    open_page(browser, demo_url)
    open_tab(browser, "Labels -> spectrum")
    WebDriverWait(browser, 120).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#spectrum-plot img[src]"))
    wait_until_idle(browser, "spectrum-plot")
    image = browser.find_element(By.CSS_SELECTOR, "#spectrum-plot img")
    source = image.get_attribute("src")
    before = image_pixels(browser, "spectrum-plot")
    screenshot(browser, tmp_path, "spectrum-before")
    slider = browser.find_element(By.CSS_SELECTOR, "#teff input[type=range]")
    start = float(slider.get_attribute("value"))
    slider.send_keys(*[Keys.ARROW_RIGHT] * 100)  # 100 steps of 10 K: the user drags Teff up by 1000 K
    assert float(slider.get_attribute("value")) == pytest.approx(start + 1000)
    try:
        WebDriverWait(browser, 120).until(
            lambda driver: driver.find_element(By.CSS_SELECTOR, "#spectrum-plot img").get_attribute("src") != source
        )
    except TimeoutException:
        raise AssertionError("the spectrum was not redrawn after the Teff slider moved") from None
    time.sleep(1.0)  # the last queued redraw (trigger_mode="always_last") may still be starting
    wait_until_idle(browser, "spectrum-plot")
    after = image_pixels(browser, "spectrum-plot")
    screenshot(browser, tmp_path, "spectrum-after")
    assert before.shape == after.shape
    changed = float(np.any(before != after, axis=-1).mean())
    print(f"Teff slider +1000 K: {changed:.1%} of the plot's pixels changed")
    assert changed > 0.01


def test_bad_upload_gets_a_readable_message(demo_url, browser, tmp_path):
    open_page(browser, demo_url)
    bad = tmp_path / "not_an_xp_file.csv"
    bad.write_text("name,value\nvega,0.0\n")
    predict_from_file(browser, bad)
    status = browser.find_element(By.ID, "labels-status").text
    screenshot(browser, tmp_path, "bad-upload")
    assert "Could not use this input" in status and "not_an_xp_file.csv" in status
    assert "missing required column(s)" in status and "bp_coefficients" in status
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#labels-table .virtual-row"), "a stale table is still shown"
    no_g = SAMPLES / "xp_continuous" / "XP_CONTINUOUS_RAW.fits"  # no phot_g_mean_mag: G must be typed, not guessed
    predict_from_file(browser, no_g)
    status = browser.find_element(By.ID, "labels-status").text
    assert "XP_CONTINUOUS_RAW.fits: the file has no phot_g_mean_mag column" in status, status
    assert "enter the stars' G magnitude" in status


def test_inpainting_and_loci_tabs_draw(demo_url, browser, tmp_path):
    open_page(browser, demo_url)
    open_tab(browser, "Inpainting")
    path = SAMPLES / "cholesky_solution" / "18Sco-XP-spectra.csv"
    WebDriverWait(browser, 60).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#inpaint-file input"))
    upload_file(browser, "inpaint-file", path)
    browser.find_element(By.ID, "inpaint").click()
    WebDriverWait(browser, 120).until(lambda driver: "BP -> RP" in driver.find_element(By.ID, "inpaint-status").text)
    wait_until_idle(browser, "inpaint-plot")
    assert "4345775217221821312: median relative difference" in browser.find_element(By.ID, "inpaint-status").text
    assert browser.find_elements(By.CSS_SELECTOR, "#inpaint-plot img[src]")
    screenshot(browser, tmp_path, "inpainting")
    open_tab(browser, "Stellar loci")
    WebDriverWait(browser, 60).until(lambda driver: driver.find_elements(By.ID, "loci"))
    browser.find_element(By.ID, "loci").click()
    WebDriverWait(browser, 120).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#loci-plot img[src]"))
    wait_until_idle(browser, "loci-plot")
    screenshot(browser, tmp_path, "loci")
