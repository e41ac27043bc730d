"""Security headers: no-store and nosniff on API responses and pages, HSTS only over https.

On every response, a bug's 500 included."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import AnyHttpUrl

from app.config import Settings
from app.db import Database
from app.main import HSTS, create_app
from tests.factories import PASSWORD, Staff
from tests.signaling.helpers import make_visit


@pytest.fixture
async def https_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings.model_copy(update={"public_url": AnyHttpUrl("https://visits.example.org")})
    )
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def sample_responses(
    http: httpx.AsyncClient, staff: Staff, db: Database
) -> dict[str, httpx.Response]:
    """One response of each kind: token, patient data, errors, pages, assets, operations."""
    visit = await make_visit(db, staff.clinician, by=staff.scheduler)
    form = {"username": staff.admin.user.email, "password": PASSWORD}
    wrong = {"username": staff.admin.user.email, "password": "wrong"}
    page = await http.get("/login")
    asset = next(part for part in page.text.split('"') if part.startswith("/static/"))
    return {
        "token": await http.post("/api/v1/auth/token", data=form),
        "token refused": await http.post("/api/v1/auth/token", data=wrong),
        "visit": await http.get(f"/api/v1/visits/{visit.token}"),
        "visit unknown": await http.get("/api/v1/visits/not-a-real-token-at-all"),
        "consents": await http.get(
            f"/api/v1/appointments/{visit.appointment_id}/consents",
            headers=staff.clinician.headers,
        ),
        "me": await http.get("/api/v1/me", headers=staff.scheduler.headers),
        "unauthenticated": await http.get("/api/v1/me"),
        "invalid body": await http.post("/api/v1/appointments", json={"nope": 1}),
        "unknown api path": await http.get("/api/v1/no-such-thing"),
        "openapi": await http.get("/api/openapi.json"),
        "visit page": await http.get(f"/visit/{visit.token}"),
        "login page": page,
        "asset": await http.get(asset),
        "health": await http.get("/healthz"),
    }


API = (
    "token",
    "token refused",
    "visit",
    "visit unknown",
    "consents",
    "me",
    "unauthenticated",
    "invalid body",
    "unknown api path",
    "openapi",
)


class TestSecurityHeaders:
    async def test_api_responses_and_pages_are_never_stored_or_sniffed(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        responses = await sample_responses(client, staff, db)
        assert responses["token"].status_code == 200
        assert responses["visit"].status_code == 200
        assert responses["consents"].status_code == 200
        for name in (*API, "visit page", "login page"):
            headers = responses[name].headers
            assert headers.get("cache-control") == "no-store", name
            assert headers.get("x-content-type-options") == "nosniff", name
        # Versioned assets stay cacheable; nothing is sniffed anywhere.
        assert "immutable" in responses["asset"].headers["cache-control"]
        for name, response in responses.items():
            assert response.headers.get("x-content-type-options") == "nosniff", name

    async def test_no_hsts_without_https(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        responses = await sample_responses(client, staff, db)
        for name, response in responses.items():
            assert "strict-transport-security" not in response.headers, name

    async def test_every_response_has_hsts_with_an_https_public_url(
        self, https_client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        responses = await sample_responses(https_client, staff, db)
        for name, response in responses.items():
            assert response.headers.get("strict-transport-security") == HSTS, name
        too_large = await https_client.post(
            "/api/v1/auth/token",
            content=b"x" * (1024 * 1024 + 1),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert too_large.status_code == 413
        assert too_large.headers.get("strict-transport-security") == HSTS
        assert too_large.headers.get("cache-control") == "no-store"


class TestUnhandledError:
    """A bug's 500 keeps the contract's headers and error shape (Starlette answers it outside
    every middleware added to the app: app.main.Televisit)."""

    @pytest.mark.parametrize("path", ["/api/v1/test-raises", "/test-raises"])
    async def test_a_500_carries_the_security_headers_and_the_error_shape(
        self, settings: Settings, path: str
    ) -> None:
        app = create_app(
            settings.model_copy(update={"public_url": AnyHttpUrl("https://visits.example.org")})
        )

        async def raises() -> None:
            raise RuntimeError("a bug, with patient data in its message")

        app.add_api_route(path, raises)
        async with LifespanManager(app):
            # The server sees the exception too (uvicorn logs its type); the client the 500.
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                response = await http.get(path)
        assert response.status_code == 500
        assert response.json() == {
            "error": {"code": "internal_error", "message": "An unexpected error occurred."}
        }
        assert "patient data" not in response.text
        assert response.headers.get("x-content-type-options") == "nosniff"
        assert response.headers.get("strict-transport-security") == HSTS
        if path.startswith("/api/"):
            assert response.headers.get("cache-control") == "no-store"
