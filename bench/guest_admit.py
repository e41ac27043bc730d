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

import asyncio
import statistics
from pathlib import Path

from _common import Backend, phone_page, run_in_chromium, signed_in_clinic
from playwright.async_api import Browser, Page

from tests.e2e.helpers import consent_and_join, invite

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


async def one_round(
    browser: Browser, base: str, clinician: Page, token: str, name: str
) -> tuple[float, float]:
    patient = await phone_page(browser, base)
    guest = await phone_page(browser, base)
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
    names = [f"Pat Guest {i}" for i in range(rounds)]
    pairs: list[float] = []
    guests: list[float] = []
    async with signed_in_clinic(chromium, folder, backend, names) as clinic:
        for name, visit in zip(names, clinic.visits, strict=True):
            pair, guest = await one_round(
                clinic.browser, clinic.server.url, clinic.clinician, visit.token, name
            )
            pairs.append(pair)
            guests.append(guest)
    pair_median, guest_median = statistics.median(pairs), statistics.median(guests)
    print(
        f"\nmedians of {len(pairs)}: 1:1 patient admit -> video {pair_median:.0f} ms"
        f" (min {min(pairs):.0f}, max {max(pairs):.0f});"
        f" guest admit -> video {guest_median:.0f} ms"
        f" (min {min(guests):.0f}, max {max(guests):.0f});"
        f" guest / 1:1 = {guest_median / pair_median:.2f}x"
    )


if __name__ == "__main__":
    run_in_chromium(__file__, __doc__, run)
