"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium)
against `emotion-edge run --simulate` and a real Mosquitto, with a token: refused without it, then the
page loads with no console errors, the live chart gains a point a second, "Detect my emotion" shows the
result whose request_id is the one on iotsensors/infer/result, a correction reaches the feedback store,
and a collect session shows its progress. Screenshots at desktop and phone width go to
$EMOTION_EDGE_SCREENSHOTS (docs/ for the README), else to the test's tmp dir."""
from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import ROOT
from webutil import Daemon

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="no chromium + chromedriver (apt-get install chromium chromium-driver; "
                                      "scripts/setup_env.sh installs them)")]
TOKEN = "browser-test-token-0123456789abcdef"


def wait_until(predicate, timeout: float = 30, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return predicate()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1400", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def severe(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_dashboard_in_a_real_browser(broker, recorder, browser, tmp_path):
    rec = recorder(["iotsensors/infer/result"])
    d = Daemon(broker, tmp_path / "data", f"web.token={TOKEN}", "detect.window_s=3", token=TOKEN)
    try:
        browser.get(d.url + "/")
        assert "a token is required" in browser.find_element("tag name", "body").text
        browser.get_log("browser")  # the 401 above is logged as a failed load; start clean

        browser.get(d.url + f"/?token={TOKEN}")  # sets the cookie and redirects to /
        assert browser.current_url == d.url + "/"
        assert wait_until(lambda: browser.execute_script("return window.ee && window.ee.received"), 20)
        before = browser.execute_script("return window.ee.received")
        time.sleep(3.2)
        after = browser.execute_script("return window.ee.received")
        assert after - before >= 2, (before, after)
        assert int(browser.find_element("id", "live").get_attribute("data-points")) >= after
        assert browser.find_element("id", "conn").text == "live"

        browser.find_element("id", "detect").click()
        assert wait_until(lambda: not browser.find_element("id", "detect-progress").get_attribute("hidden"), 10)
        assert rec.wait_for(lambda: len(rec.on("iotsensors/infer/result")) == 1, 40)
        mqtt_id = rec.on("iotsensors/infer/result")[0]["request_id"]
        assert wait_until(lambda: browser.find_element("id", "r-id").text == mqtt_id, 15)
        shown = browser.find_element("id", "r-emotion").text.lower()
        assert shown == rec.on("iotsensors/infer/result")[0]["emotion"]
        assert browser.find_element("id", "detect").is_enabled()
        assert len(browser.find_elements("css selector", "#r-bars .bar.fused")) == 4
        assert wait_until(lambda: browser.find_elements("css selector", f'tr[data-request-id="{mqtt_id}"]'), 10)

        label = next(e for e in ("sad", "angry", "happy") if e != shown)
        browser.find_element("css selector", f'#r-feedback button.correct[data-label="{label}"]').click()
        db = sqlite3.connect(d.data_dir / "records.sqlite")
        assert wait_until(lambda: db.execute("SELECT label FROM feedback WHERE request_id = ?",
                                             (mqtt_id,)).fetchone(), 20) == (label,)
        assert wait_until(lambda: "saved" in browser.find_element("id", "r-feedback").text, 10)

        duration = browser.find_element("id", "collect-duration")
        duration.clear()
        duration.send_keys("8")
        browser.find_element("id", "collect-start").click()
        assert wait_until(lambda: "collecting" in browser.find_element("id", "collect-msg").text, 15)
        width = "return parseFloat(document.querySelector('#collect-progress > div').style.width) || 0"
        assert wait_until(lambda: browser.execute_script(width) >= 40, 15)
        shots = Path(os.environ.get("EMOTION_EDGE_SCREENSHOTS", tmp_path))
        if not shots.is_absolute():
            shots = ROOT / shots
        shots.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(shots / "dashboard-desktop.png"))
        assert wait_until(lambda: "session ended" in browser.find_element("id", "collect-msg").text, 20)
        browser.set_window_size(390, 2300)
        time.sleep(1.5)
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 400  # no sideways scroll
        browser.save_screenshot(str(shots / "dashboard-phone.png"))
        assert severe(browser) == []
    finally:
        d.stop()
