"""The API reference at /api/docs renders in Chromium with no network beyond the service.

Every request to another origin is recorded and refused, as offline: the page must not need
one. Its strict CSP stays on, so a Swagger UI that needed inline code or an outside asset would
show a blank page or a CSP error here.
"""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Request, Route, expect

from tests.e2e.conftest import Pages, shot


class TestApiDocs:
    async def test_renders_offline_under_its_csp(self, pages: Pages, artifacts: Path) -> None:
        page = await pages.page()
        origin = pages.server.url.rstrip("/")
        elsewhere: list[str] = []
        seen: list[str] = []

        async def only_here(route: Route, request: Request) -> None:
            if request.url == origin or request.url.startswith(origin + "/"):
                seen.append(request.url)
                await route.continue_()
            else:
                elsewhere.append(request.url)
                await route.abort("internetdisconnected")

        await page.route("**/*", only_here)
        await page.goto("/api/docs")
        await expect(page.locator(".swagger-ui .info .title")).to_contain_text("Televisit")
        # Every operation of the document is listed; the one staff sign in with among them.
        await expect(page.locator(".opblock").first).to_be_visible()
        token = page.locator(".opblock-summary-path", has_text="/api/v1/auth/token")
        await expect(token.first).to_be_visible()
        await shot(page, artifacts, "api-docs")

        assert elsewhere == []
        assert any(url.endswith("/api/openapi.json") for url in seen), seen
        assert any("/vendor/swagger-ui/" in url for url in seen), seen
        refused = [e for e in pages.errors if "Content Security Policy" in e]
        assert refused == [], refused
