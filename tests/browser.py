"""A real headless Chromium for the web console's tests, driven with Selenium.

We drive Debian's ``chromium`` with Debian's ``chromium-driver`` (the two come from the same
build, so their versions always match) through Selenium's WebDriver client. Selenium is
given both paths, and ``SE_OFFLINE`` keeps its driver manager from ever downloading one.
Each ``Browser`` has a fresh profile directory, accepts the test cluster's self-signed
certificate, and saves a screenshot of a page when ``PTELEPORT_SCREENSHOTS`` names a
directory (``scripts/screenshots`` sets it to docs/images).

When Chromium or its driver is missing (``scripts/test`` installs them where it can), the
browser tests are skipped with a warning in pytest's summary, never silently.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("PTELEPORT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PTELEPORT_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",  # the test cluster's web certificate is self-signed
    "--window-size=1280,860",
]


def missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found: install Debian's {package} (scripts/test does, as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: run scripts/bootstrap.sh (it installs the dev extras)"
    return None


def require_chromium() -> None:
    """Skip, loudly, when there is no Chromium to test with."""
    reason = missing()
    if reason is not None:
        message = f"BROWSER TESTS SKIPPED: {reason}"
        warnings.warn(message, pytest.PytestWarning, stacklevel=2)
        pytest.skip(message)


class Browser:
    def __init__(self, base_url: str, javascript: bool = True) -> None:
        os.environ.setdefault("SE_OFFLINE", "true")
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.base_url = base_url
        self.profile = tempfile.mkdtemp(prefix="pteleport-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*FLAGS, f"--user-data-dir={self.profile}"]:
            options.add_argument(flag)
        if not javascript:
            options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(30)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    # --- pages -------------------------------------------------------------------------------
    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def path(self) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(self.driver.current_url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str = "main") -> str:
        return " ".join(self.find(css).text.split())

    def fill(self, fields: dict[str, str]) -> None:
        for name, value in fields.items():
            box = self.find(f"[name='{name}']")
            box.clear()
            box.send_keys(value)

    def wait_for(self, what: Callable[[], Any], timeout: float = 10.0, every: float = 0.2) -> Any:
        """Until ``what()`` is truthy (exceptions count as not yet); its value, or AssertionError."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                value = what()
                if value:
                    return value
            except Exception as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise AssertionError(f"not seen within {timeout}s on {self.driver.current_url}: {last}")
            time.sleep(every)

    def shot(self, name: str) -> None:
        """A screenshot for docs/web.md, when ``PTELEPORT_SCREENSHOTS`` asks for them."""
        where = os.environ.get("PTELEPORT_SCREENSHOTS")
        if where:
            Path(where).mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(Path(where) / f"web-{name}.png"))
