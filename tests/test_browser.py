"""The status page in a real browser: Debian's Chromium, headless, driven through chromedriver (selenium).

Against the demo (its simulator estate, its config), with one vault more whose name holds `<script>`:
the page loads without a console error (the Content-Security-Policy would report any script or inline
style there), shows a failed job with Azure's error code, a running job and a stale item; a job's page
opens from the list; the hostile name is text; on a phone-sized screen nothing but the tables scrolls;
dark mode follows the browser. Screenshots go to $BACKUP_WATCHER_ARTIFACTS (CI keeps them) or the
test's temporary directory.

Chromium and chromedriver come from the Debian packages `chromium` and `chromium-driver`; without them
the test skips, saying so, and fails instead when the environment variable CI is set (CI installs them).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import running_watcher, wait_for
from watcher.app import Watcher
from watcher.demo import DEMO_TOKEN_ENV, demo_config
from watcher.sim import SIM_TOKEN, SimItem, SimJob, demo_estate, demo_subscriptions, start_simulator
from watcher.sim.scenarios import DEMO_SUBSCRIPTION

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

HOSTILE = "<script>alert(1)"
PHONE_WIDTH = 390


def _tool(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser_paths() -> tuple[str, str]:
    chromium = _tool("chromium", "chromium-browser")
    driver = _tool("chromedriver")
    if chromium is None or driver is None:
        missing = "chromium" if chromium is None else "chromedriver"
        message = f"{missing} not installed (Debian packages chromium and chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    where = Path(os.environ.get("BACKUP_WATCHER_ARTIFACTS") or tmp_path / "artifacts")
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture
def browser(browser_paths: tuple[str, str], tmp_path: Path) -> Iterator[Any]:
    chromium, driver_path = browser_paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
async def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Watcher]:
    """The demo's estate and config, plus a vault whose name and item hold markup."""
    monkeypatch.setenv(DEMO_TOKEN_ENV, SIM_TOKEN)
    now = time.time()
    estate = demo_estate(now)
    estate.add(
        SimJob(
            subscription_id=DEMO_SUBSCRIPTION,
            resource_group="rg-hostile",
            vault=HOSTILE,
            job_id=str(uuid.uuid4()),
            job_type="AzureIaaSVMJob",
            operation="Backup",
            entity='<img src=x onerror="alert(2)">',
            backup_management_type="AzureIaasVM",
            start=now - 900,
            duration=200,
            outcome="Failed",
        )
    )
    estate.add_item(
        SimItem(
            DEMO_SUBSCRIPTION, "rg-hostile", HOSTILE, "vm", "vm-</td>", recovery_points=(now - 5 * 86400,)
        )
    )
    sim = await start_simulator(estate)
    try:
        config = demo_config(
            sim.url,
            demo_subscriptions(estate),
            listen="127.0.0.1:0",
            store_path=str(tmp_path / "demo.sqlite3"),
        )
        async with running_watcher(config) as watcher:
            tracker = watcher.tracker
            assert tracker is not None

            def ready() -> bool:
                failed = tracker.store.outcome_counts(("Failed",), now - 86400)
                items = sum(len(data.inventory) for data in tracker.data.values())
                return bool(watcher.scheduler and watcher.scheduler.ready and failed and items >= 20)

            await wait_for(ready, limit=60)
            yield watcher
    finally:
        await sim.close()


def _severe(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def _full_page(driver: Any, path: Path, width: int) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(int(height) + 120, 600), 12000))
    driver.save_screenshot(str(path))


def _no_alert(driver: Any) -> None:
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018  # raises when no alert() ran


async def test_the_demo_status_page_in_chromium(demo: Watcher, browser: Any, artifacts: Path) -> None:
    # The browser is driven from a thread: the watcher serving it runs on this test's event loop.
    await asyncio.to_thread(_look_around, browser, f"http://127.0.0.1:{demo.port}", artifacts)


def _look_around(browser: Any, base: str, artifacts: Path) -> None:
    browser.get(base + "/")
    assert browser.title.startswith("backup-watcher")
    assert _severe(browser) == []
    _no_alert(browser)
    assert browser.find_elements(By.TAG_NAME, "script") == []

    failures = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=failures]")
    codes = [code.text for code in failures.find_elements(By.CSS_SELECTOR, "code.errcode")]
    assert codes
    assert all(code.strip() for code in codes)
    running = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=running]")
    assert running.find_elements(By.CSS_SELECTOR, "tbody tr")
    items = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=items]")
    assert "ago" in items.text  # a stale item with the age of its newest recovery point
    assert "never backed up" in items.text

    # Markup from Azure is text: the vault's name reads as written, no image, no script ran.
    vaults = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=vaults]")
    assert HOSTILE in vaults.text
    assert '<img src=x onerror="alert(2)">' in failures.text
    assert "vm-</td>" in items.text
    assert browser.find_elements(By.TAG_NAME, "img") == []
    _full_page(browser, artifacts / "status-page.png", 1280)

    # Light and dark follow the browser's preference.
    light = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    )
    dark = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert light != dark
    _full_page(browser, artifacts / "status-page-dark.png", 1280)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    # A phone: only the tables scroll sideways, never the page.
    browser.set_window_size(PHONE_WIDTH, 800)
    browser.refresh()
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1
    _full_page(browser, artifacts / "status-page-phone.png", PHONE_WIDTH)

    # A failed job's page opens from the list.
    browser.set_window_size(1280, 1000)
    browser.get(base + "/")
    failures = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=failures]")
    link = failures.find_element(By.LINK_TEXT, "job")
    href = link.get_attribute("href")
    link.click()
    assert browser.current_url == href
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Job ")
    assert "Transitions" in browser.page_source
    assert browser.find_element(By.CSS_SELECTOR, "pre.command").text.startswith("backup-watcher track ")
    assert _severe(browser) == []
    _full_page(browser, artifacts / "status-page-job.png", 1280)
    _no_alert(browser)
