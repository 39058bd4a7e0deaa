"""A real headless Chromium for the page tests: Debian's `chromium` (apt) driven by Playwright's Python
API through its executable path, since browser downloads are not possible here. Where no browser is
installed the browser tests are skipped, except when MMFM_REQUIRE_BROWSER=1 (CI sets it): then a
missing browser fails them, so CI never passes without running them."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def executable() -> str | None:
    given = os.environ.get("MMFM_CHROMIUM")
    if given:
        return given
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


@contextmanager
def launch():
    exe = executable()
    required = os.environ.get("MMFM_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("MMFM_REQUIRE_BROWSER=1 but playwright is not installed")
        pytest.skip("playwright is not installed")
    if exe is None:
        if required:
            pytest.fail("MMFM_REQUIRE_BROWSER=1 but no chromium is installed (apt-get install -y chromium)")
        pytest.skip("no chromium on this machine (apt-get install -y chromium); CI runs these tests")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()
