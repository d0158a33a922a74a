"""Headless Chromium for the review page's browser test and its screenshots (selenium, a test dependency).

Debian's `chromium` and `chromium-driver` packages (scripts/setup.sh installs them when it runs as root): the
driver is given by path, so selenium never tries to download one (the tests run offline).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver", "/usr/lib/chromium-browser/chromedriver")
MISSING = ("headless Chromium was not found ({what}); on Debian/Ubuntu `apt-get install chromium chromium-driver` "
           "(bash scripts/setup.sh does it when run as root)")


def find_chromium() -> tuple[str, str] | str:
    """(browser, driver) paths, or the reason they cannot be used."""
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    driver = next((found for name in DRIVERS if (found := shutil.which(name) or
                                                  (name if Path(name).is_file() else None))), None)
    missing = [what for what, path in (("no chromium", browser), ("no chromedriver", driver)) if path is None]
    if missing:
        return MISSING.format(what=", ".join(missing))
    return browser, driver  # type: ignore[return-value]


def start_chromium(browser: str, driver: str, width: int = 1280, height: int = 900):
    """A headless Chromium with its own throw-away profile (so two of them are two annotators' browsers)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    profile = tempfile.mkdtemp(prefix="rlmed-chromium-")
    # --no-sandbox: containers and root (CI) cannot give Chromium its sandbox; the page is our own, on localhost.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-extensions", "--no-first-run", f"--window-size={width},{height}",
                 f"--user-data-dir={profile}", "--lang=zh-CN", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.profile_dir = profile  # type: ignore[attr-defined]
    return chrome


def quit_chromium(chrome) -> None:
    profile = getattr(chrome, "profile_dir", None)
    try:
        chrome.quit()
    finally:
        if profile:
            shutil.rmtree(profile, ignore_errors=True)
