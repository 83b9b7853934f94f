"""A headless Chromium driven by Selenium, for the fleet page's test and its screenshot.

Selenium is pointed at Debian's ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` explicitly (``apt-get install
chromium chromium-driver``; ``scripts/ensure-services.sh`` does it), so it never looks for, or downloads, a driver.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTH = 1280


def missing() -> list[Path]:
    """The browser binaries that are not there (empty when it can run)."""
    return [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]


def headless_chromium(workdir: Path, height: int = 900) -> Any:
    """A started ``selenium.webdriver.Chrome``, its profile and chromedriver's log under ``workdir``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    workdir.mkdir(parents=True, exist_ok=True)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for Chromium's sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--window-size={WIDTH},{height}",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        f"--user-data-dir={workdir / 'profile'}",
    ):
        options.add_argument(arg)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(workdir / "chromedriver.log"))
    return webdriver.Chrome(service=service, options=options)


def full_page_screenshot(driver: Any, path: Path, max_height: int = 4000) -> Path:
    """The whole page as a PNG (up to ``max_height`` pixels), not just the first screenful."""
    size = driver.execute_script("const e = document.documentElement; return [e.scrollWidth, e.scrollHeight];")
    clip = {"x": 0, "y": 0, "width": int(size[0]), "height": min(int(size[1]), max_height), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def with_credentials(base_url: str, key: str, user: str = "viewer") -> str:
    """``http://user:key@host:port``: HTTP Basic credentials the browser answers the gateway's challenge with."""
    scheme, _, rest = base_url.partition("://")
    return f"{scheme}://{user}:{key}@{rest}"
