"""Shared fixtures of tests/pipeline: a corpus built from the real dev WARCs, and headless Chromium."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


def chromium_paths() -> tuple[str, str] | None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


def chrome_options(binary: str, profile: str, *extra: str):
    """Headless Chromium options (no sandbox, no GPU, no background traffic) with a fresh profile folder."""
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *extra,
    ):
        opts.add_argument(arg)
    return opts


@pytest.fixture(scope="module")
def chrome():
    """A headless Chromium driven by selenium, with a fresh profile; skipped only when not installed."""
    found = chromium_paths()
    if found is None:
        pytest.skip("chromium/chromedriver not found: `apt-get install -y chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = found
    profile = tempfile.mkdtemp(prefix="interloom-chrome-")
    opts = chrome_options(binary, profile, "--window-size=1280,1600")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
