"""Headless Chromium through Playwright, or a skip with the reason.

Playwright drives Debian's ``chromium`` (``.ci/run`` installs it) rather than a browser
it would download: our machines reach no browser CDN.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from typing import Iterator

import pytest

# Software GL, so WebGL renders on machines without a GPU.
CHROMIUM_ARGS = ["--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]


def chromium_path() -> str:
    found = os.environ.get("LIFT3D_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("needs Chromium (Debian: apt-get install chromium); .ci/run installs it")
    return found


@contextmanager
def chromium() -> Iterator[object]:
    """A Playwright Browser on the system Chromium."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (test extra)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
