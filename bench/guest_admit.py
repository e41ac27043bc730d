"""Issue 14's figure: a guest's admit-to-video time in Chromium, beside the 1:1 patient's.

In Debian's chromium (headless, fake camera, microphone and everything on loopback) each round
is one visit: the patient consents and waits, the signed-in clinician admits them, and the 1:1
figure runs from that click until the first frame of the remote video is presented on both
pages (as bench/pages.py measures it). With the call running, the clinician invites an
interpreter from the console, the interpreter opens their link, agrees and waits, and the guest
figure runs from the click on the guest's "Admit" until the first frame is presented both of the
guest's video on the clinician's page and of the patient's video on the guest's page
(`requestVideoFrameCallback` on the tiles' <video>, which exist only once the guest is in:
found by polling every 5 ms). All pages read the same clock (`performance.timeOrigin +
performance.now()`). The clinician's camera is already running for the guest (it starts at the
patient's admit), which is what happens in real use too.

Prints every round and the medians, and guest / 1:1 as a ratio.

Run: python bench/guest_admit.py [--rounds N] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

from _common import ROOT, Backend, sqlite_backend, temp_folder
from playwright.async_api import Browser, Page, async_playwright

from app.config import Settings
from app.db import Database, create_engine
from tests.conftest import TEST_SECRET
from tests.e2e.conftest import BASE_ARGS, DESKTOP, FAKE_UI, PHONE
from tests.e2e.helpers import consent_and_join, invite
from tests.factories import PASSWORD, make_staff
from tests.live import start_server
from tests.signaling.helpers import make_visit

NOW = "performance.timeOrigin + performance.now()"
# Resolves with the time the first frame is presented in the <video> under `selector` (polled
# for, every 5 ms, until it exists).
FIRST_FRAME = """selector => new Promise(resolve => {
    const watch = () => {
        const video = document.querySelector(selector);
        if (!video) { setTimeout(watch, 5); return; }
        video.requestVideoFrameCallback(now => resolve(performance.timeOrigin + now));
    };
    watch();
})"""
# Clicks a button and says when.
CLICK = f"""selector => {{
    const at = {NOW};
    document.querySelector(selector).click();
    return at;
}}"""
REMOTE = '[data-testid="remote-video"]'
GUEST_ON_CONSOLE = '[data-testid="participant-tile"][data-participant^="interpreter:"] video'
PATIENT_ON_GUEST = '[data-testid="participant-tile"][data-participant="patient"] video'


async def clicked_until(
    clicker: Page, button: str, watchers: list[tuple[Page, str]]
) -> tuple[float, list[float]]:
    frames = [asyncio.ensure_future(page.evaluate(FIRST_FRAME, sel)) for page, sel in watchers]
    await asyncio.sleep(0.2)  # the watchers are installed before the click
    at: float = await clicker.evaluate(CLICK, button)
    seen = await asyncio.wait_for(asyncio.gather(*frames), 30)
    return max(seen) - at, [t - at for t in seen]


async def phone(browser: Browser, base: str) -> Page:
    context = await browser.new_context(
        base_url=base,
        viewport=PHONE,  # type: ignore[arg-type]  # a ViewportSize dict
        permissions=["camera", "microphone"],
    )
    return await context.new_page()


async def one_round(
    browser: Browser, base: str, clinician: Page, token: str, name: str
) -> tuple[float, float]:
    patient = await phone(browser, base)
    guest = await phone(browser, base)
    try:
        await consent_and_join(patient, token)
        item = clinician.get_by_test_id("queue-item").filter(has_text=name)
        await item.get_by_test_id("admit").wait_for()
        appointment = await item.get_attribute("data-id")
        admit = f'[data-testid="queue-item"][data-id="{appointment}"] [data-testid="admit"]'
        pair, (on_patient, on_console) = await clicked_until(
            clinician, admit, [(patient, REMOTE), (clinician, REMOTE)]
        )
        guest_token = await invite(clinician, "interpreter", f"Ines {name}")
        await consent_and_join(guest, guest_token)
        row = clinician.get_by_test_id("queue-guest").filter(has_text=f"Ines {name}")
        await row.filter(has_text="Waiting").get_by_test_id("admit-guest").wait_for()
        guest_id = await row.get_attribute("data-id")
        button = f'[data-testid="queue-guest"][data-id="{guest_id}"] [data-testid="admit-guest"]'
        three, (guest_on_console, patient_on_guest) = await clicked_until(
            clinician, button, [(clinician, GUEST_ON_CONSOLE), (guest, PATIENT_ON_GUEST)]
        )
        print(
            f"  1:1 admit -> both playing {pair:6.0f} ms"
            f" (patient's page {on_patient:5.0f}, console {on_console:5.0f})"
            f" | guest admit -> both playing {three:6.0f} ms"
            f" (guest on console {guest_on_console:5.0f}, patient on guest's page"
            f" {patient_on_guest:5.0f})"
        )
        await clinician.get_by_test_id("end-call").click()
        await patient.get_by_role("heading", name="Your visit has ended").wait_for()
        return pair, three
    finally:
        await patient.context.close()
        await guest.context.close()


async def run(rounds: int, chromium: str, folder: Path, backend: Backend) -> None:
    db = Database(
        create_engine(
            Settings(environment="test", database_url=backend.url, secret_key=TEST_SECRET)  # type: ignore[arg-type]
        )
    )
    staff = await make_staff(db, secret=TEST_SECRET.encode())
    # Five-minute visits one after the other: every round's waiting room is open (it opens 30
    # minutes before the start) for up to five rounds.
    visits = [
        await make_visit(db, staff.clinician, by=staff.scheduler, name=f"Pat Guest {i}", minutes=5)
        for i in range(rounds)
    ]
    await db.dispose()
    server = start_server(
        {
            "TELEVISIT_ENVIRONMENT": "test",
            "TELEVISIT_DATABASE_URL": backend.url,
            "TELEVISIT_SECRET_KEY": TEST_SECRET,
            "TELEVISIT_PUBLIC_URL": "http://127.0.0.1",
            "TELEVISIT_MEDIA_IPS": "127.0.0.1",
            "TELEVISIT_MEDIA_PEER_ALLOW": "127.0.0.0/8",
            "TELEVISIT_LOG_LEVEL": "WARNING",
        },
        log_path=folder / "server.log",
    )
    pairs: list[float] = []
    guests: list[float] = []
    try:
        async with async_playwright() as driver:
            browser = await driver.chromium.launch(
                executable_path=chromium, headless=True, args=[*BASE_ARGS, FAKE_UI]
            )
            context = await browser.new_context(
                base_url=server.url,
                viewport=DESKTOP,  # type: ignore[arg-type]  # a ViewportSize dict
                permissions=["camera", "microphone"],
            )
            clinician = await context.new_page()
            await clinician.goto("/login")
            await clinician.get_by_test_id("login-email").fill(staff.clinician.user.email)
            await clinician.get_by_test_id("login-password").fill(PASSWORD)
            await clinician.get_by_test_id("login-submit").click()
            await clinician.wait_for_url("**/clinic")
            for index, visit in enumerate(visits):
                pair, guest = await one_round(
                    browser, server.url, clinician, visit.token, f"Pat Guest {index}"
                )
                pairs.append(pair)
                guests.append(guest)
            await browser.close()
    finally:
        server.stop()
    pair_median, guest_median = statistics.median(pairs), statistics.median(guests)
    print(
        f"\nmedians of {len(pairs)}: 1:1 patient admit -> video {pair_median:.0f} ms"
        f" (min {min(pairs):.0f}, max {max(pairs):.0f});"
        f" guest admit -> video {guest_median:.0f} ms"
        f" (min {min(guests):.0f}, max {max(guests):.0f});"
        f" guest / 1:1 = {guest_median / pair_median:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    if not Path(args.chromium).is_file():
        sys.exit(f"{args.chromium} is missing: apt-get install chromium")
    print(
        f"bench/guest_admit.py, {time.strftime('%Y-%m-%d %H:%M')}, run {uuid.uuid4().hex[:6]} ({ROOT})"
    )
    folder = temp_folder()
    backend = sqlite_backend(folder)  # migrates with its own event loop: before ours
    asyncio.run(run(args.rounds, args.chromium, folder, backend))


if __name__ == "__main__":
    main()
