"""Issue 5's figure: from the clinician's click on "Admit" until both remote videos play.

In Debian's chromium (headless, fake camera and microphone, everything on loopback), a patient
consents and joins the waiting room, the signed-in clinician admits them, and the clock runs
from the click until the first frame of the remote video is presented on both pages
(`requestVideoFrameCallback`); both pages read the same clock (`performance.timeOrigin +
performance.now()`). The clinician's camera starts at the click, as in real use, so its start-up
is part of the figure. Five rounds, each with a new patient page; the median is the figure
(target: at most 1.5 s on loopback).

Run: python bench/pages.py [--rounds N] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

from _common import Backend, phone_page, run_in_chromium, signed_in_clinic
from playwright.async_api import Browser, Page

NOW = "performance.timeOrigin + performance.now()"
# Resolves with the time the remote video presents its first frame.
FIRST_FRAME = """() => new Promise(resolve => {
    const video = document.querySelector('[data-testid="remote-video"]');
    video.requestVideoFrameCallback(now => resolve(performance.timeOrigin + now));
})"""
# Clicks the patient's Admit button and says when.
ADMIT = f"""name => {{
    const item = [...document.querySelectorAll('[data-testid="queue-item"]')]
        .find(li => li.textContent.includes(name));
    const at = {NOW};
    item.querySelector('[data-testid="admit"]').click();
    return at;
}}"""


async def one_round(browser: Browser, base: str, clinician: Page, token: str, name: str) -> float:
    patient = await phone_page(browser, base)
    try:
        await patient.goto(f"/visit/{token}")
        await patient.get_by_test_id("consent-accept").click()
        await patient.get_by_test_id("join").click()
        await patient.locator("#waiting-position").filter(has_text="next").wait_for()
        item = clinician.get_by_test_id("queue-item").filter(has_text=name)
        await item.get_by_test_id("admit").wait_for()
        patient_frame = asyncio.ensure_future(patient.evaluate(FIRST_FRAME))
        clinician_frame = asyncio.ensure_future(clinician.evaluate(FIRST_FRAME))
        await asyncio.sleep(0.2)  # both watchers are installed before the click
        admitted_at: float = await clinician.evaluate(ADMIT, name)
        patient_at, clinician_at = await asyncio.wait_for(
            asyncio.gather(patient_frame, clinician_frame), 30
        )
        figure = max(patient_at, clinician_at) - admitted_at
        print(
            f"  admit -> both playing {figure:7.0f} ms"
            f"   (patient's page {patient_at - admitted_at:5.0f} ms,"
            f" clinician's page {clinician_at - admitted_at:5.0f} ms)"
        )
        await clinician.get_by_test_id("end-call").click()
        await patient.get_by_role("heading", name="Your visit has ended").wait_for()
        return figure
    finally:
        await patient.context.close()


async def run(rounds: int, chromium: str, folder: Path, backend: Backend) -> None:
    names = [f"Pat Bench {i}" for i in range(rounds)]
    figures: list[float] = []
    async with signed_in_clinic(chromium, folder, backend, names) as clinic:
        for name, visit in zip(names, clinic.visits, strict=True):
            figures.append(
                await one_round(
                    clinic.browser, clinic.server.url, clinic.clinician, visit.token, name
                )
            )
    median = statistics.median(figures)
    print(
        f"\nadmit -> both remote videos playing, median of {len(figures)}: {median:.0f} ms"
        f" (min {min(figures):.0f}, max {max(figures):.0f}); target <= 1500 ms:"
        f" {'met' if median <= 1500 else 'NOT met'}"
    )


if __name__ == "__main__":
    run_in_chromium(__file__, __doc__, run)
