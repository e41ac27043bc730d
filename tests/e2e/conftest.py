"""Browser tests: Debian's chromium driven by Playwright, against a real `televisit serve`.

Chromium runs headless with a fake camera and microphone; every packet goes to 127.0.0.1
(the relay offers only loopback candidates and may send only to loopback ones). No browser
is downloaded: `/usr/bin/chromium` (scripts/services installs it in CI). Without it, or
without axe-core (`npm ci` in tests/e2e), these tests skip locally and fail in CI.

They run on SQLite only: the pages talk to the API, whose behaviour on both databases the
rest of the suite proves; a second browser run per test would double the slowest part of CI.
Screenshots of each step go to test-artifacts/e2e/.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright

from tests.conftest import ServerFactory
from tests.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("TELEVISIT_TEST_CHROMIUM", "/usr/bin/chromium"))
AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
IN_CI = os.environ.get("CI", "") not in ("", "0", "false") or (
    os.environ.get("TELEVISIT_TEST_REQUIRE_SERVICES") == "1"
)

BASE_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Accepts every camera and microphone prompt; left out where a test denies the camera.
FAKE_UI = "--use-fake-ui-for-media-stream"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}


def missing(what: str) -> None:
    """Skip with the reason, or in CI fail: CI must run the browser tests, never skip them."""
    if IN_CI:
        pytest.fail(f"{what}; CI must run the browser tests")
    pytest.skip(what)


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """SQLite only for browser tests (see the module docstring)."""
    return sqlite_url


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE.is_file():
        missing(f"{AXE.relative_to(ROOT)} is missing (npm ci --prefix tests/e2e)")
    return AXE.read_text(encoding="utf-8")


SERVER_SETTINGS = {"reconnect_grace_seconds": "60", "media_peer_allow": "127.0.0.0/8"}


@pytest.fixture
def server_settings(tmp_path: Path) -> dict[str, str]:
    """A dropped patient keeps their place long enough for a slow CI; recordings in tmp."""
    return {**SERVER_SETTINGS, "recordings_dir": str(tmp_path / "recordings")}


@pytest.fixture
def server(live_server_factory: ServerFactory, server_settings: dict[str, str]) -> LiveServer:
    """The app on loopback (the relay offers and accepts loopback candidates only)."""
    return live_server_factory(**server_settings)


@pytest.fixture
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as driver:
        yield driver


Launch = Callable[..., Awaitable[Browser]]


@pytest.fixture
async def launch(playwright: Playwright, chromium: Path) -> AsyncIterator[Launch]:
    """Start a headless chromium (with `fake_ui=False`, camera prompts are not auto-accepted)."""
    browsers: list[Browser] = []

    async def start(*, fake_ui: bool = True) -> Browser:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium),
            headless=True,
            args=[*BASE_ARGS, *([FAKE_UI] if fake_ui else [])],
        )
        browsers.append(browser)
        return browser

    yield start
    for browser in browsers:
        await browser.close()


@pytest.fixture
async def browser(launch: Launch) -> Browser:
    return await launch()


@dataclass
class Pages:
    """New browser contexts (separate people) on one server, with console errors collected."""

    browser: Browser
    server: LiveServer
    errors: list[str]

    async def context(
        self,
        *,
        viewport: dict[str, int] | None = None,
        permissions: tuple[str, ...] = ("camera", "microphone"),
        browser: Browser | None = None,
    ) -> BrowserContext:
        context = await (browser or self.browser).new_context(
            base_url=self.server.url,
            viewport=viewport or DESKTOP,  # type: ignore[arg-type]  # a ViewportSize dict
            permissions=list(permissions),
            locale="en-US",
        )
        context.set_default_timeout(20_000)
        return context

    async def page(self, **options: Any) -> Page:
        context = await self.context(**options)
        page = await context.new_page()
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on(
            "console",
            lambda message: (
                self.errors.append(f"console: {message.text}") if message.type == "error" else None
            ),
        )
        return page


@pytest.fixture
async def pages(browser: Browser, server: LiveServer) -> AsyncIterator[Pages]:
    collected = Pages(browser=browser, server=server, errors=[])
    yield collected
    # Scripts that throw are bugs even when the test's assertions passed.
    # Console errors (a refused media permission, a failed fetch a test provoked) are shown
    # beside them, for the diagnosis.
    uncaught = [e for e in collected.errors if e.startswith("pageerror")]
    assert not uncaught, collected.errors


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


async def shot(page: Page, folder: Path, name: str) -> None:
    """A screenshot of this step (test-artifacts/e2e/NAME.png)."""
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=False)
