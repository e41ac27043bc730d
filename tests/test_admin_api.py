"""`GET /api/v1/admin/settings`: what the administration page shows read-only (admins only)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app
from tests.factories import Staff

URL = "/api/v1/admin/settings"


class TestAdminSettings:
    async def test_an_admin_reads_the_retention_default(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        response = await client.get(URL, headers=staff.admin.headers)
        assert response.status_code == 200
        assert response.json() == {"recordings_retention_days": 30}
        assert response.headers["cache-control"] == "no-store"

    @pytest.mark.parametrize("who", ["scheduler", "clinician"])
    async def test_other_roles_are_refused(
        self, client: httpx.AsyncClient, staff: Staff, who: str
    ) -> None:
        response = await client.get(URL, headers=getattr(staff, who).headers)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"

    async def test_without_a_token_it_asks_for_one(self, client: httpx.AsyncClient) -> None:
        response = await client.get(URL)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "not_authenticated"


@pytest.fixture
async def client_kept_a_week(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(settings.model_copy(update={"recordings_retention_days": 7}))
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def test_the_configured_period_is_shown(
    client_kept_a_week: httpx.AsyncClient, staff: Staff
) -> None:
    response = await client_kept_a_week.get(URL, headers=staff.admin.headers)
    assert response.json() == {"recordings_retention_days": 7}


@pytest.mark.parametrize("days", ["0", "-1", "many"])
def test_a_period_that_makes_no_sense_is_refused_at_start(
    days: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TELEVISIT_RECORDINGS_RETENTION_DAYS", days)
    with pytest.raises(ValueError, match="recordings_retention_days"):
        Settings(environment="test", secret_key="s" * 40)  # type: ignore[arg-type]
