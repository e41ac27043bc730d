"""The `televisit` command, run as users run it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.live import free_port


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "app", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestCommands:
    def test_db_upgrade_and_users_create(self, tmp_path: Path) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
        upgraded = run(["db", "upgrade"], tmp_path, TELEVISIT_DATABASE_URL=url)
        assert upgraded.returncode == 0, upgraded.stderr
        args = [
            "users", "create", "--email", "Doc@Example.org", "--password", "long password 1",
            "--role", "clinician", "--name", "Dr. Cli", "--timezone", "Europe/Paris",
        ]  # fmt: skip
        created = run(args, tmp_path, TELEVISIT_DATABASE_URL=url)
        assert created.returncode == 0, created.stderr
        assert created.stdout.startswith("created clinician ")
        again = run(args, tmp_path, TELEVISIT_DATABASE_URL=url)
        assert again.returncode == 1
        assert "exists" in again.stderr
        bad = run([*args[:-2], "--timezone", "Mars/Base"], tmp_path, TELEVISIT_DATABASE_URL=url)
        assert bad.returncode == 1
        assert "timezone" in bad.stderr

    def test_serve_refuses_a_placeholder_secret_in_production(self, tmp_path: Path) -> None:
        result = run(
            ["serve", "--port", str(free_port())],
            tmp_path,
            TELEVISIT_ENVIRONMENT="production",
            TELEVISIT_SECRET_KEY="changethis",
        )
        assert result.returncode == 2
        assert "TELEVISIT_SECRET_KEY" in result.stderr

    def test_demo_on_a_fresh_folder(self, tmp_path: Path) -> None:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEVISIT_")}
        env["PYTHONPATH"] = str(Path(__file__).parent.parent)
        process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [sys.executable, "-m", "app", "demo", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert process.stdout is not None
            lines: list[str] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any("/visit/" in line for line in lines):
                lines.append(process.stdout.readline())
            output = "".join(lines)
            link = next(line.strip() for line in lines if "/visit/" in line)
            assert link.startswith(f"http://127.0.0.1:{port}/visit/")
            assert "scheduler@televisit.example.org" in output
            base = f"http://127.0.0.1:{port}"
            assert (
                f"API reference (every route, with a token to try them): {base}/api/docs" in output
            )
            for _ in range(100):
                try:
                    if httpx.get(f"{base}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            token = link.rsplit("/", 1)[1]
            visit = httpx.get(f"{base}/api/v1/visits/{token}")
            assert visit.status_code == 200
            assert visit.json()["clinician"]["name"] == "Dr. Amara Okafor"
            docs = httpx.get(f"{base}/api/docs")
            assert docs.status_code == 200
            assert "default-src 'none'" in docs.headers["content-security-policy"]
            login = httpx.post(
                f"{base}/api/v1/auth/token",
                data={"username": "scheduler@televisit.example.org", "password": "televisit-demo"},
            )
            assert login.status_code == 200
            assert (tmp_path / "televisit.db").exists()
        finally:
            process.terminate()
            process.wait(timeout=15)
