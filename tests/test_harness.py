"""The test run's own messages (tests.harness): the real cause when PostgreSQL cannot be used,
and the closing summary of whole groups that did not run.

The causes are read from a PostgreSQL server of this module's own (initdb in a temporary
folder, password logins, one user refused by pg_hba.conf), never from the shared one's settings.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import unavailable
from tests.harness import postgres_problem
from tests.live import free_port

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "harness-password"  # a throw-away server's


def _postgres_bin(name: str) -> Path | None:
    """A PostgreSQL server program: where pg_config says, else Debian's newest."""
    config = shutil.which("pg_config")
    if config is not None:
        found = subprocess.run([config, "--bindir"], capture_output=True, text=True, check=False)  # noqa: S603
        candidate = Path(found.stdout.strip()) / name
        if candidate.is_file():
            return candidate
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3])
    )
    return versions[-1] if versions else None


@pytest.fixture(scope="module")
def own_server() -> Iterator[int]:
    """A PostgreSQL of this module's own on a free loopback port; its port. Users: `postgres`
    (superuser), `limited` (no CREATEDB), `blocked` (refused by pg_hba.conf), all with
    PASSWORD, asked for by scram-sha-256."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        unavailable("PostgreSQL's initdb", "not installed: apt-get install postgresql")
    # Not under pytest's own folder (private to this user): the server may run as `postgres`.
    folder = Path(tempfile.mkdtemp(prefix="televisit-harness-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    data, log = folder / "data", folder / "server.log"
    (folder / "password").write_text(PASSWORD + "\n", encoding="utf-8")
    if run_as:
        shutil.chown(folder / "password", "postgres")
    port = free_port()

    def run(*args: str | Path) -> None:
        subprocess.run([*run_as, *map(str, args)], check=True, capture_output=True, timeout=120)  # noqa: S603

    try:
        run(initdb, "-D", data, "-U", "postgres", "--pwfile", folder / "password",
            "-A", "scram-sha-256")  # fmt: skip
        hba = data / "pg_hba.conf"
        hba.write_text(
            "host all blocked 127.0.0.1/32 reject\n" + hba.read_text(encoding="utf-8"),
            encoding="utf-8",
        )
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {folder}"
        run(pg_ctl, "-D", data, "-o", options, "-l", log, "-w", "-t", "60", "start")
        try:
            asyncio.run(_add_users(port))
            yield port
        finally:
            run(pg_ctl, "-D", data, "-m", "immediate", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _add_users(port: int) -> None:
    conn = await asyncpg.connect(
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres", timeout=10
    )
    try:
        for user in ("limited", "blocked"):
            await conn.execute(f"CREATE ROLE {user} LOGIN NOCREATEDB PASSWORD '{PASSWORD}'")
    finally:
        await conn.close()


def problem(url: str) -> str | None:
    return asyncio.run(postgres_problem(url))


class TestPostgresCause:
    def test_a_server_the_tests_can_use(self, own_server: int) -> None:
        assert problem(f"postgresql://postgres:{PASSWORD}@127.0.0.1:{own_server}/postgres") is None

    def test_no_password_given(self, own_server: int) -> None:
        why = problem(f"postgresql://postgres@127.0.0.1:{own_server}/postgres")
        assert why is not None
        assert why.startswith(
            'password authentication failed for user "postgres" (no password was given)'
        )
        assert "TELEVISIT_TEST_POSTGRES_URL=postgresql://USER:PASSWORD@HOST:PORT/DATABASE" in why

    def test_a_wrong_password(self, own_server: int) -> None:
        why = problem(f"postgresql://postgres:wrong@127.0.0.1:{own_server}/postgres")
        assert why is not None
        assert "(the password given was refused)" in why
        assert "wrong" not in why

    def test_a_login_the_server_refuses(self, own_server: int) -> None:
        why = problem(f"postgresql://blocked:{PASSWORD}@127.0.0.1:{own_server}/postgres")
        assert why is not None
        assert why.startswith("the server refused the login: pg_hba.conf rejects connection")

    def test_a_database_that_does_not_exist(self, own_server: int) -> None:
        why = problem(f"postgresql://postgres:{PASSWORD}@127.0.0.1:{own_server}/nope")
        assert why is not None
        assert why.startswith('database "nope" does not exist')

    def test_a_user_who_may_not_create_databases(self, own_server: int) -> None:
        why = problem(f"postgresql://limited:{PASSWORD}@127.0.0.1:{own_server}/postgres")
        assert why is not None
        assert why.startswith('user "limited" may not create databases')
        assert 'ALTER ROLE "limited" CREATEDB' in why

    def test_nobody_listening(self) -> None:
        port = free_port()
        why = problem(f"postgresql://postgres@127.0.0.1:{port}/postgres")
        assert why is not None
        assert why.startswith(f"connection refused: no server listens on 127.0.0.1:{port}")


SKIPPING_TESTS = """
import os

import pytest
from tests.conftest import cannot_run


@pytest.mark.parametrize("n", range(3))
def test_on_postgres(n):
    cannot_run("PostgreSQL at db.example:5432/postgres: connection refused")


@pytest.mark.parametrize("n", range(2))
def test_with_redis(n):
    cannot_run("Redis at 127.0.0.1:6379/0 is not answering (ConnectionError)")


def test_turn():
    cannot_run("coturn (turnserver) is not answering (not installed: apt-get install coturn)")


def test_in_a_browser():
    if os.environ.get("TELEVISIT_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail("/usr/bin/chromium is not installed; CI must run the browser tests")
    pytest.skip("/usr/bin/chromium is not installed (apt-get install chromium)")


def test_something_else():
    pytest.skip("only on Windows")


def test_that_runs():
    assert True
"""


def run_pytest(folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest on `folder`, with tests/conftest.py's summary hook, in a process of its own."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TELEVISIT_TEST_")}
    return subprocess.run(  # noqa: S603 (our own interpreter)
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=folder,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture
def skipping_suite(tmp_path: Path) -> Path:
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_terminal_summary  # noqa: F401\n", encoding="utf-8"
    )
    (tmp_path / "test_groups.py").write_text(textwrap.dedent(SKIPPING_TESTS), encoding="utf-8")
    return tmp_path


def summary(output: str) -> list[str]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if "what did not run" in line)
    return [line.rstrip() for line in lines[start + 1 : -1]]


class TestWhatDidNotRun:
    def test_a_run_that_skipped_groups_says_which_and_why(self, skipping_suite: Path) -> None:
        result = run_pytest(skipping_suite)
        assert result.returncode == 0, result.stdout
        assert result.stdout.splitlines()[-1].startswith("1 passed, 8 skipped")
        said = summary(result.stdout)
        assert said[0].startswith("8 tests skipped: the groups below did not run")
        text = "\n".join(said)
        for group, count in [
            ("PostgreSQL tests", 3),
            ("Redis tests", 2),
            ("TURN tests", 1),
            ("browser tests (Chromium)", 1),
            ("other skipped tests", 1),
        ]:
            assert f"  {group}" in text
            assert any(line.startswith(f"  {group}") and line.endswith(f": {count} skipped")
                       for line in said), (group, said)  # fmt: skip
        assert "3 x PostgreSQL at db.example:5432/postgres: connection refused" in text
        assert "to run them: apt-get install coturn" in text
        assert "1 x only on Windows" in text
        assert "accessibility" not in text

    def test_with_services_required_the_would_be_skips_fail_and_are_named(
        self, skipping_suite: Path
    ) -> None:
        result = run_pytest(skipping_suite, TELEVISIT_TEST_REQUIRE_SERVICES="1")
        assert result.returncode == 1
        said = summary(result.stdout)
        text = "\n".join(said)
        assert "7 tests failed or errored because something they need is missing" in text
        assert "  PostgreSQL tests (each database test's PostgreSQL run): 3 failed" in said
        assert "  browser tests (Chromium): 1 failed" in said
        assert "  other skipped tests: 1 skipped" in said

    def test_a_full_run_says_nothing_more(self, tmp_path: Path) -> None:
        (tmp_path / "conftest.py").write_text(
            "from tests.conftest import pytest_terminal_summary  # noqa: F401\n", encoding="utf-8"
        )
        (tmp_path / "test_all.py").write_text("def test_it():\n    assert True\n", encoding="utf-8")
        result = run_pytest(tmp_path)
        assert result.returncode == 0
        assert "what did not run" not in result.stdout
