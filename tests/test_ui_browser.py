"""The web UI in a real browser: headless Chromium from the Debian packages driven by Selenium (no browser download).

Load the demo case, ask with the scripted policy, see the tool step and the overlay in the viewer, reload the page,
find the thread and reopen it. CI sets ``MACRO_REQUIRE_BROWSER=1`` (and installs chromium and chromium-driver), so
a missing browser fails there instead of skipping. ``MACRO_UI_SCREENSHOT=docs/ui.png`` also writes the screenshot
the README shows.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _need(ok: bool, what: str) -> None:
    if not ok:
        if os.environ.get("MACRO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test needs {what} (MACRO_REQUIRE_BROWSER=1)")
        pytest.skip(f"needs {what}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui_server(home):
    port = _free_port()
    log = open(home.parent / "ui.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "macro.cli", "ui", "--policy", "scripted", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MACRO_HOME": str(home)},
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"macro ui exited with {proc.returncode}:\n{log.read()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("macro ui did not answer within 180 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture
def browser():
    _need(bool(CHROMIUM and DRIVER), "chromium and chromedriver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1250"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)
    except TimeoutException:
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _pick(driver, elem_id: str, contains: str) -> None:
    """Open a Gradio dropdown and click its option that contains ``contains``."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input").click()
    option = _wait(
        driver,
        lambda d: next((o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]") if contains in o.text), None),
        20,
        f"an option with {contains!r} in #{elem_id}",
    )
    option.click()


def _viewer_pixels(driver) -> np.ndarray:
    from PIL import Image
    from selenium.webdriver.common.by import By

    src = driver.find_element(By.CSS_SELECTOR, "#viewer img").get_attribute("src")
    if src.startswith("data:"):
        payload = base64.b64decode(src.split(",", 1)[1])
    else:
        payload = urllib.request.urlopen(src, timeout=10).read()
    return np.asarray(Image.open(io.BytesIO(payload)).convert("RGB")).astype(int)


def _tumour_pixels(rgb: np.ndarray) -> int:
    """Pixels in the enhancing tumour's overlay colour (red): the phantom's grey scan has none."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((red - green > 80) & (red - blue > 80)).sum())


def test_demo_case_ask_overlay_reload_and_resume(ui_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(ui_server)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#example input"), 60, "the page")
    _pick(browser, "example", "demo")
    _wait(browser, lambda d: "mri-multiseq" in d.find_element(By.ID, "case-summary").text, 120, "the case summary")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#viewer img"), 30, "the viewer")
    before = _viewer_pixels(browser)

    box = browser.find_element(By.CSS_SELECTOR, "#question textarea")
    box.send_keys("Segment the tumour")
    box.send_keys(Keys.ENTER)
    chat = _wait(
        browser,
        lambda d: t if "whole tumour" in (t := d.find_element(By.ID, "chat").text) and "mL" in t else None,
        300,
        "the answer",
    )
    assert "Tool: segment_brain_tumor" in chat, "the tool step is shown in the chat"
    overlays = _wait(
        browser, lambda d: t if "tumour-" in (t := d.find_element(By.ID, "overlays").text) else None, 30, "overlays"
    )
    assert "reference mask" in overlays and "uncertainty" in overlays
    (after,) = _wait(
        browser,
        lambda d: (p,) if _tumour_pixels(p := _viewer_pixels(d)) > _tumour_pixels(before) else None,
        30,
        "the segmentation overlay in the viewer",
    )
    assert _tumour_pixels(after) > 50
    if os.environ.get("MACRO_UI_SCREENSHOT"):
        browser.save_screenshot(os.environ["MACRO_UI_SCREENSHOT"])

    browser.refresh()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#threads input"), 60, "the page after reload")
    _pick(browser, "threads", "Segment the tumour")
    _wait(
        browser,
        lambda d: "Tool: segment_brain_tumor" in d.find_element(By.ID, "chat").text,
        60,
        "the reopened thread's chat",
    )
    assert "mri-multiseq" in browser.find_element(By.ID, "case-summary").text
