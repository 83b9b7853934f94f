"""The fleet page (``/ui``) in a real headless Chromium, on a live gateway with API keys and a real fleet.

How the browser authenticates: as a person would, with HTTP Basic credentials in the URL
(``http://viewer:KEY@127.0.0.1:PORT/ui``). Chromium answers the gateway's Basic challenge with them and keeps them
in its HTTP auth cache for the origin; the page then fetches its state from a credential-free absolute URL
(``location.origin + location.pathname``), so that cache authenticates the page's own ``fetch`` too. Nothing
bypasses the gateway's key check: no extra headers are injected into the browser.

Selenium never downloads anything: it is pointed at Debian's ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``
(``scripts/ensure-services.sh`` installs them). The tests skip, saying why, only where those are missing and
cannot be installed.

The screenshot of the loaded page is saved to ``$MAAS_TEST_ARTIFACTS`` when set, else to the test's ``tmp_path``,
and its path printed.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.models import add_one
from harness import browser as browser_binaries

pytestmark = pytest.mark.integration

ENSURE = Path(__file__).resolve().parents[2] / "scripts" / "ensure-services.sh"
API_KEY = "page-key-0123456789abcdef"
#: Generous for a busy 2-core machine (the page polls every 2 s), yet bounded.
DEADLINE_S = 90
#: Text a hostile model, device or reason could carry: shown as text, never run.
HOSTILE = '<img src=x onerror="window.__maas_xss=1"><script>window.__maas_xss=2</script>'
#: The same, short enough for a status column (30 characters).
HOSTILE_SHORT = "<svg onload=__maas_xss=3>"


def _browser_or_skip() -> None:
    """Chromium and chromedriver at their Debian paths, installed with ensure-services.sh if root can; else skip."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    if not browser_binaries.missing():
        return
    why = ""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        done = subprocess.run(["bash", str(ENSURE)], capture_output=True, text=True, timeout=900)
        why = f" (ensure-services.sh: {(done.stdout + done.stderr).strip()[-300:]})"
    if browser_binaries.missing():
        absent = " and ".join(map(str, browser_binaries.missing()))
        fix = "apt-get install chromium chromium-driver"
        pytest.skip(f"no headless browser: {absent} missing and could not be installed{why}; {fix}")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    _browser_or_skip()
    driver = browser_binaries.headless_chromium(tmp_path / "chromium")
    driver.set_page_load_timeout(DEADLINE_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MAAS_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _screenshot(driver: Any, path: Path) -> None:
    browser_binaries.full_page_screenshot(driver, path)
    print(f"fleet page screenshot: {path}")


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, DEADLINE_S, poll_frequency=0.2).until(condition, f"the fleet page to show {what}")


def _with_key(base_url: str, key: str = API_KEY) -> str:
    return browser_binaries.with_credentials(base_url, key)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _page_error(driver: Any) -> str:
    return driver.execute_script("return document.getElementById('error').textContent")


def test_the_fleet_page_shows_a_loaded_model_on_its_virtual_device_and_its_queue(
    settings, client, fleet, register, iris, browser, artifacts, tmp_path
):
    from selenium.webdriver.common.by import By

    register("iris", iris["path"])
    register("idle", add_one(tmp_path / "idle.onnx"))
    fleet.worker(0, "w0@test")
    client.load("iris").wait()
    # Never loaded (the allocator is off in tests): this request waits in idle's queue, at level 3.
    client.infer("idle", {"x": np.zeros((1, 4), np.float32)}, priority=3)
    _, base_url = fleet.gateway(MAAS_API_KEYS=API_KEY)

    browser.get(_with_key(base_url) + "/ui")
    try:
        device = '.device[data-worker="w0@test"]'
        replica = _wait(
            browser,
            lambda d: d.find_elements(By.CSS_SELECTOR, f'{device} .replica[data-model="iris"][data-state="READY"]'),
            "iris READY on w0@test",
        )[0]
        assert "iris" in replica.text and "READY" in replica.text
        tags = [t.text for t in browser.find_elements(By.CSS_SELECTOR, f"{device} .tag")]
        assert "virtual" in tags
        assert "of 2 GiB held" in browser.find_element(By.CSS_SELECTOR, f"{device} .mem").text
        assert browser.find_elements(By.CSS_SELECTOR, f"{device} .bar > span")  # iris' share of the memory bar

        def row(model: str) -> list[str]:
            found = browser.find_elements(By.CSS_SELECTOR, f'#queues tr[data-model="{model}"]')
            return [c.text for c in found[0].find_elements(By.TAG_NAME, "td")] if found else []

        _wait(browser, lambda d: row("iris") and row("idle"), "queue rows for iris and idle")
        # model, waiting, then levels 0..9 (an empty level is a dot)
        assert row("iris")[:2] == ["iris", "0"]
        assert row("idle")[:2] == ["idle", "1"] and row("idle")[2 + 3] == "1"
        assert "1 request waiting" in browser.find_element(By.ID, "summary").text
        assert "updated" in browser.find_element(By.ID, "updated").text
        assert _page_error(browser) == ""
    finally:
        _screenshot(browser, artifacts / "fleet-page.png")


def test_the_fleet_page_shows_hostile_text_as_text(settings, client, fleet, register, iris, browser, artifacts):
    """Names and reasons reach the page from workers and the database: markup in them is shown, never run."""
    from selenium.webdriver.common.by import By

    from app.db.schema import AllocationRun, Device
    from app.db.session import session_scope

    register("iris", iris["path"])
    with session_scope(settings.sqlalchemy_url) as session:
        session.add(
            Device(worker_name=HOSTILE, host="h", index=9, uuid="u", name=HOSTILE, kind="virtual", mem_bytes=1 << 30)
        )
        session.add(
            AllocationRun(
                status=HOSTILE_SHORT,
                reason=HOSTILE,
                started_at=dt.datetime.now(dt.UTC),
                moves=[{"kind": HOSTILE, "model": HOSTILE, "device": HOSTILE, "state": HOSTILE_SHORT}],
            )
        )
    _, base_url = fleet.gateway(MAAS_API_KEYS=API_KEY)

    browser.get(_with_key(base_url) + "/ui")
    try:
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs tr[data-run]"), "the allocation run")
        runs = browser.find_element(By.ID, "runs").text
        assert HOSTILE in runs and HOSTILE_SHORT in runs
        assert HOSTILE in browser.find_element(By.ID, "devices").text
        assert browser.execute_script("return window.__maas_xss") is None
        assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script, main svg")
    finally:
        _screenshot(browser, artifacts / "fleet-page-hostile.png")


def test_the_fleet_page_and_its_state_need_the_key(fleet):
    _, base_url = fleet.gateway(MAAS_API_KEYS=API_KEY)
    for path in ("/ui", "/ui/state"):
        status, headers, body = _get(base_url + path)
        assert status == 401, (path, body)
        assert b"UNAUTHORIZED" in body
        # A challenge a browser acts on: Basic on a header line of its own.
        assert any(c.startswith("Basic ") for c in headers.get_all("WWW-Authenticate")), headers
        wrong = base64.b64encode(b"viewer:not-the-key").decode()
        assert _get(base_url + path, {"Authorization": f"Basic {wrong}"})[0] == 401
        right = base64.b64encode(f"anyone:{API_KEY}".encode()).decode()
        assert _get(base_url + path, {"Authorization": f"Basic {right}"})[0] == 200
        assert _get(base_url + path, {"Authorization": f"Bearer {API_KEY}"})[0] == 200
    # With the key, the page comes with a policy that runs only its own script.
    _, headers, _ = _get(base_url + "/ui", {"Authorization": f"Bearer {API_KEY}"})
    assert "script-src 'sha256-" in headers["Content-Security-Policy"]


def test_a_browser_without_the_key_gets_no_fleet_page(fleet, browser):
    from selenium.webdriver.common.by import By

    _, base_url = fleet.gateway(MAAS_API_KEYS=API_KEY)
    # A browser without the key, or with a wrong one, gets no fleet page (headless, it shows an empty document
    # where a person would be asked for the key).
    for url in (base_url + "/ui", _with_key(base_url, key="not-the-key") + "/ui"):
        browser.get(url)
        assert not browser.find_elements(By.ID, "devices"), url
        assert "maas fleet" not in browser.page_source, url
