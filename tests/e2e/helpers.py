"""Steps the browser tests share: signing in, joining a visit, checking that video plays."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import Page, expect

from tests.factories import PASSWORD, Person

# Serious and critical violations fail a page; minor and moderate ones are reported only.
FAILING_IMPACTS = ("serious", "critical")


def page_kind(page: Page) -> str:
    """Which page, for a failure message: the first part of its path (`/visit`, `/clinic`),
    never the visit's token that follows it in a patient's or a guest's link."""
    return "/" + urlsplit(page.url).path.strip("/").split("/", 1)[0]


async def sign_in(page: Page, person: Person, *, lands_on: str) -> None:
    await page.goto("/login")
    await page.get_by_test_id("login-email").fill(person.user.email)
    await page.get_by_test_id("login-password").fill(PASSWORD)
    await page.get_by_test_id("login-submit").click()
    await page.wait_for_url(f"**{lands_on}")


async def consent_and_join(page: Page, token: str, *, recording: bool = False) -> None:
    """Agree (to the recording too, if `recording`: the box is unticked otherwise) and wait."""
    await page.goto(f"/visit/{token}")
    if recording:
        # Ticked once the visit is shown: showing it sets the box as the visit says.
        await expect(page.locator("#consent-text")).not_to_be_empty()
        box = page.get_by_label("I also agree that the visit may be recorded")
        await box.check()
        await expect(box).to_be_checked()
    await page.get_by_test_id("consent-accept").click()
    # Generous: on a loaded machine the consent's request can take more than the default 5 s.
    await expect(page.get_by_test_id("join")).to_be_enabled(timeout=20_000)
    await page.get_by_test_id("join").click()
    await expect(page.get_by_role("heading", name="You are in the waiting room")).to_be_visible(
        timeout=20_000
    )


async def video_advances(page: Page, test_id: str = "remote-video") -> None:
    """The element shows frames (videoWidth > 0) and its clock moves on."""
    selector = f'[data-testid="{test_id}"]'
    await page.wait_for_function(
        "s => { const v = document.querySelector(s); return v && v.videoWidth > 0 && "
        "v.readyState >= 2 && !v.paused; }",
        arg=selector,
    )
    before = await page.evaluate("s => document.querySelector(s).currentTime", selector)
    await page.wait_for_function(
        "([s, t]) => document.querySelector(s).currentTime > t + 0.5", arg=[selector, before]
    )


async def axe_violations(page: Page, axe_source: str) -> list[dict[str, Any]]:
    """Run axe-core in the page (evaluated, so the page's CSP does not apply to it)."""
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(axe_source)
    result: dict[str, Any] = await page.evaluate(
        """async () => {
            const r = await axe.run(document, {
                runOnly: {
                    type: "tag",
                    values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"],
                },
            });
            return { violations: r.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 5).map(n => n.target.join(" ")),
            })) };
        }"""
    )
    return list(result["violations"])


async def assert_accessible(page: Page, axe_source: str, where: str) -> None:
    violations = await axe_violations(page, axe_source)
    failing = [v for v in violations if v["impact"] in FAILING_IMPACTS]
    assert not failing, f"{where}: " + json.dumps(failing, indent=2)


async def invite(clinician: Page, role: str, name: str) -> str:
    """Invite a guest from the console's call view; their token, from the link shown to copy."""
    await clinician.get_by_test_id("invite-participant").click()
    dialog = clinician.locator("#invite-dialog")
    await dialog.get_by_label("Role").select_option(role)
    await dialog.get_by_label("Name (required)").fill(name)
    await dialog.get_by_role("button", name="Invite").click()
    link = dialog.get_by_test_id("invite-link")
    await expect(link).to_have_value(re.compile(r"/visit/"))
    url = await link.input_value()
    await dialog.get_by_role("button", name="Close").click()
    return url.rsplit("/visit/", 1)[1]


async def admit_guest(clinician: Page, name: str) -> None:
    row = clinician.get_by_test_id("queue-guest").filter(has_text=name)
    await expect(row).to_contain_text("Waiting", timeout=20_000)  # the queue's news, loaded
    await row.get_by_test_id("admit-guest").click()
