"""What a test run needs from outside, and what it says when that is missing.

- `postgres_problem`: why the tests cannot use a PostgreSQL server, in words a newcomer can act
  on (the password it asked for, the login refused, the database missing, nobody listening, a
  user who may not create databases), instead of an exception's class name.
- `did_not_run`: the closing summary (tests/conftest.py's `pytest_terminal_summary`) of whole
  groups that did not run, and why, with counts: a run that skipped the PostgreSQL or browser
  tests still exits 0 on a developer's machine, and must not pass for a full one.
"""

from __future__ import annotations

import re
import socket
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

OVERRIDE = "TELEVISIT_TEST_POSTGRES_URL"
URL_SHAPE = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
CONNECT_SECONDS = 3.0


def postgres_where(url: str) -> str:
    """host:port/database of a PostgreSQL URL: what a message may show (no user, no password)."""
    return url.rsplit("@", 1)[-1].split("://", 1)[-1]


async def postgres_problem(url: str) -> str | None:
    """None when the tests can use the server at `url`; otherwise why not, with what to do."""
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_SECONDS)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return postgres_cause(exc, url)
    try:
        may_create = await conn.fetchval(
            "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        user = await conn.fetchval("SELECT current_user")
    finally:
        await conn.close()
    if not may_create:
        return (
            f'user "{user}" may not create databases, and the tests make their own '
            f'(ALTER ROLE "{user}" CREATEDB, or name another user in {OVERRIDE}={URL_SHAPE})'
        )
    return None


def postgres_cause(exc: BaseException, url: str) -> str:
    """A failed connection's cause, in words, with the setting that mends it."""
    parts = urlsplit(url)
    user = unquote(parts.username or "") or "(the login name)"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 5432
    point_elsewhere = f"set {OVERRIDE}={URL_SHAPE}"
    if isinstance(exc, asyncpg.InvalidPasswordError):
        given = "the password given was refused" if parts.password else "no password was given"
        return f'password authentication failed for user "{user}" ({given}): {point_elsewhere}'
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return f"the server refused the login: {exc} ({point_elsewhere} with a user it accepts)"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"{exc} (the one named in {OVERRIDE} must exist; the tests create theirs beside it)"
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"connection refused: no server listens on {host}:{port} "
            f"(start one: scripts/services does, or {point_elsewhere})"
        )
    if isinstance(exc, socket.gaierror):
        return f"the host {host} is not known ({exc.strerror}): {point_elsewhere}"
    if isinstance(exc, TimeoutError):
        return f"no answer from {host}:{port} within {CONNECT_SECONDS:g} s (a firewall? busy?)"
    if isinstance(exc, OSError):
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Group:
    """Tests that stand or fall together on one thing from outside."""

    name: str
    reason: re.Pattern[str]
    remedy: str


GROUPS = (
    Group(
        "PostgreSQL tests (each database test's PostgreSQL run)",
        re.compile(r"PostgreSQL"),
        f"a PostgreSQL the tests may log in to: scripts/services, or {OVERRIDE}",
    ),
    Group(
        "Redis tests (several processes, shared limits)",
        re.compile(r"\bRedis\b|redis-server"),
        "Redis on 127.0.0.1:6379 (or TELEVISIT_TEST_REDIS_URL) and redis-server on PATH",
    ),
    Group(
        "TURN tests (calls relayed through coturn)",
        re.compile(r"coturn|turnserver"),
        "apt-get install coturn (turnserver on PATH)",
    ),
    Group(
        "accessibility checks (axe-core)",
        re.compile(r"axe-core"),
        "npm ci --prefix tests/e2e (scripts/test does it where npm is installed)",
    ),
    Group(
        "browser tests (Chromium)",
        re.compile(r"chromium", re.IGNORECASE),
        "apt-get install chromium, or TELEVISIT_TEST_CHROMIUM=/path/to/chromium",
    ),
)
OTHER = Group("other skipped tests", re.compile(""), "")
# What tests/conftest.py and tests/e2e/conftest.py add when a would-be skip fails instead.
FAILED_FOR_WANT = re.compile(r"forbids skipping|CI must run the browser tests")


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return str(reason).removeprefix("Skipped: ")


def _failure_reason(report: Any) -> str | None:
    text = str(getattr(report, "longreprtext", "") or "")
    for line in reversed(text.splitlines()):
        found = FAILED_FOR_WANT.search(line)
        if found:
            return line.removeprefix("E").strip().removeprefix("Failed: ")
    return None


def _group_of(reason: str) -> Group:
    return next((group for group in GROUPS if group.reason.search(reason)), OTHER)


def _tally(reasons: Iterable[str]) -> dict[Group, Counter[str]]:
    tally: dict[Group, Counter[str]] = {}
    for reason in reasons:
        tally.setdefault(_group_of(reason), Counter())[reason] += 1
    return tally


def _describe(tally: dict[Group, Counter[str]], verb: str, most: int = 3) -> list[str]:
    lines: list[str] = []
    for group in (*GROUPS, OTHER):
        reasons = tally.get(group)
        if not reasons:
            continue
        lines.append(f"  {group.name}: {sum(reasons.values())} {verb}")
        for reason, count in reasons.most_common(most):
            lines.append(f"      {count} x {reason}")
        if len(reasons) > most:
            lines.append(f"      ... and {len(reasons) - most} other reasons")
        if group.remedy:
            lines.append(f"      to run them: {group.remedy}")
    return lines


def did_not_run(stats: Mapping[str, Sequence[Any]]) -> list[str]:
    """The closing summary's lines (none when every test ran), from pytest's own tallies."""
    skipped = [
        _skip_reason(report)
        for report in stats.get("skipped", ())
        if getattr(report, "longrepr", None) is not None
    ]
    failed = [
        reason
        for report in [*stats.get("failed", ()), *stats.get("error", ())]
        if (reason := _failure_reason(report)) is not None
    ]
    lines: list[str] = []
    if skipped:
        lines.append(
            f"{_tests(len(skipped))} skipped: the groups below did not run, and this run "
            "proves nothing about them (with TELEVISIT_TEST_REQUIRE_SERVICES=1, as in CI, "
            "a skip for want of a service or program fails instead)."
        )
        lines.extend(_describe(_tally(skipped), "skipped"))
    if failed:
        lines.append(
            f"{_tests(len(failed))} failed or errored because something they need is missing "
            "(TELEVISIT_TEST_REQUIRE_SERVICES=1 forbids skipping):"
        )
        lines.extend(_describe(_tally(failed), "failed"))
    return lines


def _tests(count: int) -> str:
    return "1 test" if count == 1 else f"{count} tests"
