"""Headless Chromium for the --preview page: the OS's browser and its ChromeDriver, driven by
Selenium (the test extra). Used by bench/preview.py and tests/test_preview_browser.py."""

import shutil

# As root on a closed network: no sandbox, and none of Chromium's background connections.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync")
INSTALL_HINT = "Debian: apt-get install chromium chromium-driver; pip install selenium"


def browser_paths():
    """(chromium, chromedriver) paths, or None where either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def open_browser(width=1280, height=900):
    """A Selenium session in headless Chromium (close it with .quit(), or use it in `with`).
    Raises RuntimeError saying what is missing."""
    paths = browser_paths()
    if paths is None:
        raise RuntimeError(f"no Chromium and ChromeDriver on this machine ({INSTALL_HINT})")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(paths[1]), options=options)
