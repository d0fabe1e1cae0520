"""`xlsr serve`'s page in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium) uploads a bundled example clip and reads the transcript, the translation, the language bars and an
srt download from the page; then records from a (fake) microphone. References: the command line's results
for the same clip (`xlsr.transcribe`, `xlsr.translate`, `xlsr.identify`, `--format srt`)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from conftest import needs_tool

pytest.importorskip("starlette")
selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from test_serve import ST_MODEL, app_for, live, nets  # noqa: E402, F401 (nets: the module's models)

import xlsr  # noqa: E402
from xlsr.translate import render as render_translation  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={EXAMPLES / 'en.wav'}"):  # fmt: skip
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})  # fmt: skip
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def run_and_wait(driver) -> None:
    driver.find_element(By.ID, "run").click()
    WebDriverWait(driver, 120).until(
        lambda d: d.find_element(By.ID, "status").text.startswith("done") or d.find_element(By.ID, "error").text
    )
    assert driver.find_element(By.ID, "error").text == ""


@needs_tool("chromium")
@needs_tool("chromedriver")
def test_the_page_transcribes_translates_identifies_and_records(nets, browser):  # noqa: F811
    clip = EXAMPLES / "en.wav"
    transcript = xlsr.transcribe(None, [clip], quiet=True)[0]
    translation = xlsr.translate(ST_MODEL, [clip], target_lang="de_DE", quiet=True)[0]
    top = xlsr.identify(None, [clip], top_k=5, quiet=True)[0].top
    with app_for(nets) as app, live(app) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda d: "xlsr-reference-asr" in d.find_element(By.ID, "models").text)
        browser.find_element(By.ID, "file").send_keys(str(clip))
        run_and_wait(browser)
        assert browser.find_element(By.ID, "text").text == transcript.text
        rows = browser.find_elements(By.CSS_SELECTOR, "#segments tbody tr")
        assert rows and rows[0].find_elements(By.TAG_NAME, "td")[0].text == "0:00.00"
        assert " ".join(r.find_elements(By.TAG_NAME, "td")[2].text for r in rows) == transcript.text
        bars = browser.find_elements(By.CSS_SELECTOR, "#languages .bar")
        assert [b.get_attribute("data-label") for b in bars] == [label for label, _ in top]

        Select(browser.find_element(By.ID, "task")).select_by_value("translate")
        Select(browser.find_element(By.ID, "target")).select_by_value("de_DE")
        run_and_wait(browser)
        assert browser.find_element(By.ID, "text").text == translation.text
        browser.find_element(By.CSS_SELECTOR, "button[data-format=srt]").click()
        srt = browser.downloads / "en.srt"
        deadline = time.monotonic() + 30
        while not srt.exists():
            assert time.monotonic() < deadline, list(browser.downloads.iterdir())
            time.sleep(0.1)
        assert srt.read_text(encoding="utf-8") == render_translation(translation, "srt")

        Select(browser.find_element(By.ID, "task")).select_by_value("transcribe")
        browser.find_element(By.ID, "record").click()
        WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "record").text == "Stop")
        time.sleep(2.0)
        browser.find_element(By.ID, "record").click()
        WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "source").text == "recording.webm")
        run_and_wait(browser)  # the recording (webm/opus from MediaRecorder) decoded by the server
        assert browser.find_element(By.ID, "text").text


@needs_tool("chromium")
@needs_tool("chromedriver")
def test_the_page_asks_for_the_api_key_and_sends_it(nets, browser):  # noqa: F811
    with app_for(nets, models=("asr",), api_key="s3cret") as app, live(app) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "key-row").is_displayed())
        assert "API key" in browser.find_element(By.ID, "error").text
        browser.find_element(By.ID, "key").send_keys("s3cret\n")
        WebDriverWait(browser, 30).until(lambda d: "xlsr-reference-asr" in d.find_element(By.ID, "models").text)
        browser.find_element(By.ID, "file").send_keys(str(EXAMPLES / "sw.wav"))
        run_and_wait(browser)
        reference = xlsr.transcribe(None, [EXAMPLES / "sw.wav"], quiet=True)[0]
        assert browser.find_element(By.ID, "text").text == reference.text
        browser.execute_script("sessionStorage.clear()")
