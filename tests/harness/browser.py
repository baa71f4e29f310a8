"""Headless Chromium via selenium 4, using Debian's ``chromium`` + ``chromium-driver`` packages.

The driver path is given explicitly (``Service(executable_path=...)``) so selenium-manager never
tries to download a browser or driver (there is no general internet access here or in CI).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

CHROMIUM = os.environ.get("TACHO_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TACHO_CHROMEDRIVER", "/usr/bin/chromedriver")

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--window-size=1280,900",
)


def chromium_unavailable_reason() -> str | None:
    """None if ``make_driver()`` can work here, else why not."""
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} missing (apt-get install {pkg})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return None


def chromium_available() -> bool:
    return chromium_unavailable_reason() is None


def make_driver(page_load_timeout: float = 30.0, extra_args: tuple[str, ...] = ()):
    """A new headless Chrome WebDriver with a fresh profile dir (removed by ``driver.quit()``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    reason = chromium_unavailable_reason()
    if reason:
        raise RuntimeError(f"Chromium unavailable: {reason}")
    profile = Path(tempfile.mkdtemp(prefix="tacho-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*CHROMIUM_ARGS, *extra_args):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(
        executable_path=CHROMEDRIVER, log_output=str(profile.with_suffix(".driver.log"))
    )
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    driver.set_page_load_timeout(page_load_timeout)

    original_quit = driver.quit

    def quit_and_clean() -> None:
        try:
            original_quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)
            profile.with_suffix(".driver.log").unlink(missing_ok=True)

    driver.quit = quit_and_clean  # type: ignore[method-assign]
    driver.tacho_profile_dir = profile  # type: ignore[attr-defined]
    return driver
