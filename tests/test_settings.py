"""Production settings a newcomer gets wrong: a PUBLIC_URL only this machine can open, and the
container's data outside its volume."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from tests.conftest import TEST_SECRET
from tests.live import free_port
from tests.test_cli import run

ROOT = Path(__file__).resolve().parents[1]


def production(**values: str) -> Settings:
    return Settings(environment="production", secret_key=TEST_SECRET, **values)  # type: ignore[arg-type]  # pydantic parses strings


class TestPublicUrlInProduction:
    def test_the_default_is_refused(self) -> None:
        with pytest.raises(
            ValidationError, match=re.escape("TELEVISIT_PUBLIC_URL is http://127.0.0.1:8000")
        ):
            production()

    @pytest.mark.parametrize(
        "url",
        [
            "http://localhost:8000",
            "https://LOCALHOST",
            "http://clinic.localhost",
            "http://127.0.0.2",
            "http://[::1]:8000",
            "http://[::ffff:127.0.0.1]",
            "http://0.0.0.0:8000",
        ],
    )
    def test_loopback_addresses_are_refused(self, url: str) -> None:
        with pytest.raises(ValidationError, match="patients and staff reach"):
            production(public_url=url)

    @pytest.mark.parametrize(
        "url", ["https://televisit.example.org", "https://10.0.0.5:8443", "http://[2001:db8::7]"]
    )
    def test_an_address_others_can_reach_is_accepted(self, url: str) -> None:
        assert production(public_url=url).public_base == url

    @pytest.mark.parametrize("environment", ["development", "test"])
    def test_outside_production_the_default_stays(self, environment: str) -> None:
        settings = Settings(environment=environment, secret_key=TEST_SECRET)  # type: ignore[arg-type]
        assert settings.public_base == "http://127.0.0.1:8000"

    def test_serve_refuses_to_start_and_says_why(self, tmp_path: Path) -> None:
        result = run(
            ["serve", "--port", str(free_port())],
            tmp_path,
            TELEVISIT_ENVIRONMENT="production",
            TELEVISIT_SECRET_KEY=TEST_SECRET,
            TELEVISIT_PUBLIC_URL="http://localhost:8000",
            TELEVISIT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'never.db'}",
        )
        assert result.returncode == 2
        assert "TELEVISIT_PUBLIC_URL is http://localhost:8000" in result.stderr
        assert not (tmp_path / "never.db").exists()


class TestContainer:
    def test_everything_written_lives_in_the_data_volume(self) -> None:
        dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
        assert re.search(r'^VOLUME \["/data"\]$', dockerfile, re.MULTILINE)
        assert "TELEVISIT_DATABASE_URL=sqlite+aiosqlite:////data/" in dockerfile
        assert "TELEVISIT_RECORDINGS_DIR=/data/" in dockerfile
        assert re.search(r"^WORKDIR /data$", dockerfile, re.MULTILINE)
