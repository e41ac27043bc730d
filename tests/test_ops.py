"""Health, readiness, metrics, request ids, logs."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.db import Database, DatabaseUnavailable
from app.main import create_app
from app.observability import JsonFormatter, logging_config, route_template
from tests.conftest import TEST_SECRET
from tests.factories import Staff, booking_body, local_instant, next_weekday
from tests.live import free_port


class TestProbes:
    async def test_healthz_and_readyz(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["database"] == "ok"

    async def test_readyz_is_503_when_redis_is_down(self, settings: Settings, db: Database) -> None:
        closed = free_port()  # nothing listens there
        app = create_app(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed}/0"}))
        async with LifespanManager(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                assert (await http.get("/healthz")).status_code == 200
                ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "not_ready"
        assert ready.json()["error"]["details"]["redis"] == "unavailable"

    async def test_a_process_needs_its_database_to_start(self) -> None:
        """It registers its heartbeat there (`televisit serve` migrates it first anyway); a
        database lost later answers /readyz 503 (tests/test_db_loss.py)."""
        closed = free_port()
        settings = Settings(
            environment="test",
            secret_key=TEST_SECRET,  # type: ignore[arg-type]  # pydantic makes a SecretStr
            database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{closed}/none",
        )
        app = create_app(settings)
        with pytest.raises(DatabaseUnavailable):
            async with LifespanManager(app):
                pass


class TestMetrics:
    async def test_request_and_booking_counters(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        start = local_instant(next_weekday(80), "10:00", "America/New_York")
        await client.post(
            "/api/v1/appointments",
            json=booking_body(staff.clinician.id, start),
            headers=staff.scheduler.headers,
        )
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert 'televisit_bookings_total{outcome="booked"}' in text
        assert "televisit_booking_duration_seconds_bucket" in text
        assert 'route="/api/v1/appointments"' in text
        assert "televisit_http_request_duration_seconds_bucket" in text


class TestRequestIds:
    async def test_given_id_is_echoed_and_a_new_one_made_otherwise(
        self, client: httpx.AsyncClient
    ) -> None:
        given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        assert given.headers["x-request-id"] == "abc-123"
        made = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
        assert made.headers["x-request-id"] != "bad id with spaces"
        assert len(made.headers["x-request-id"]) == 32


class TestLogFormat:
    def test_records_are_json_with_only_allowed_fields(self) -> None:
        record = logging.LogRecord(
            "televisit",
            logging.INFO,
            __file__,
            1,
            "opened %s",
            ("/api/v1/visits/" + "a" * 43,),
            None,
        )
        record.__dict__.update({"route": "/r", "patient_name": "Secret Person"})
        entry = json.loads(JsonFormatter().format(record))
        assert entry["route"] == "/r"
        assert "patient_name" not in entry
        assert "aaaaaaaa" not in entry["msg"]
        assert entry["msg"] == "opened /api/v1/visits/{token}"

    def test_exceptions_are_logged_without_their_message(self) -> None:
        try:
            raise ValueError("Secret Person, born 1980-01-01")
        except ValueError:
            import sys

            record = logging.LogRecord(
                "televisit", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
            )
        text = JsonFormatter().format(record)
        assert "Secret Person" not in text
        assert json.loads(text)["error_type"] == "ValueError"

    def test_route_template_puts_names_back(self) -> None:
        scope = {
            "endpoint": object(),
            "path": "/api/v1/visits/TOKEN123",
            "path_params": {"token": "TOKEN123"},
        }
        assert route_template(scope) == "/api/v1/visits/{token}"
        assert route_template({"path": "/x"}) == "unmatched"


def test_log_level_per_logger_never_lets_sql_parameters_through() -> None:
    config = logging_config("warning, televisit.media=debug, sqlalchemy.engine=DEBUG")
    assert config["root"]["level"] == "WARNING"
    assert config["loggers"]["televisit.media"]["level"] == "DEBUG"
    # Loggers that write SQL parameters (patient data) stay capped whatever is asked.
    assert config["loggers"]["sqlalchemy.engine"]["level"] == "WARNING"
    assert logging_config("INFO")["root"]["level"] == "INFO"
