"""The `televisit` command: serve, demo, users (create, list, deactivate, reset-password),
db upgrade, audit verify."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging.config
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import uvicorn
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app import migrate
from app.auth.models import User
from app.config import Settings
from app.db import Database, create_engine
from app.observability import logging_config


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # overrides are checked by pydantic
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            print(f"televisit: invalid setting {where}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(settings: Settings, host: str, port: int) -> None:
    from app.main import create_app

    config = logging_config(settings.log_level)
    logging.config.dictConfig(config)
    application = create_app(settings)
    # What is loaded by now (modules, schemas, mappers) lives as long as the process: take it
    # out of the collector's reach, so that a full collection scans only what serving creates.
    # Without this, full collections of the start-up heap stopped the event loop for up to
    # 170 ms at a time under load (bench/signals.py's arrival figure, docs/benchmarks.md).
    gc.collect()
    gc.freeze()
    # Full collections scan every object serving keeps (60-120 ms each with ~1,000 sockets
    # open): one after every 100 middle-generation collections instead of 10. Young and middle
    # collections stay small (under 5 ms). Through bench/signals.py's one-process figures, full
    # collections after start-up went from 3 (15-121 ms) to none (docs/benchmarks.md).
    gc.set_threshold(700, 10, 100)
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_config=config,
        access_log=False,
        # The client's address is read from X-Forwarded-For by the app itself, which trusts it
        # from TELEVISIT_TRUSTED_PROXIES only and checks that it is an address (app.deps).
        proxy_headers=False,
        # Frames up to 1 MiB are read, so the app can answer anything over 64 KiB with an error
        # message instead of the protocol dropping the socket.
        ws_max_size=1024 * 1024,
        # Protocol pings find dead sockets (a laptop closed mid-visit) within ~30 s.
        ws_ping_interval=15.0,
        ws_ping_timeout=15.0,
        # Signaling messages are small; a deflate context costs ~300 KiB per socket and CPU per
        # message, for nothing (SDP is sent once per negotiation).
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=10,
    )


def cmd_serve(args: argparse.Namespace) -> None:
    settings = _settings()
    migrate.upgrade(settings.database_url)
    _serve(settings, args.host, args.port)


def cmd_demo(args: argparse.Namespace) -> None:
    from app import demo

    base = _settings()
    overrides: dict[str, object] = {"environment": "development"}
    if "TELEVISIT_PUBLIC_URL" not in os.environ:
        overrides["public_url"] = f"http://{_display_host(args.host)}:{args.port}"
    settings = _settings(**overrides) if overrides else base
    migrate.upgrade(settings.database_url)
    print(asyncio.run(demo.seed(settings)), flush=True)
    _serve(settings, args.host, args.port)


def cmd_db_upgrade(_args: argparse.Namespace) -> None:
    settings = _settings()
    migrate.upgrade(settings.database_url)
    print("database is at the newest revision")


def cmd_users_create(args: argparse.Namespace) -> None:
    from app import demo

    settings = _settings()
    migrate.upgrade(settings.database_url)
    try:
        user_id = asyncio.run(
            demo.create_user(
                settings,
                email=args.email,
                password=args.password,
                role=args.role,
                name=args.name,
                timezone=args.timezone,
            )
        )
    except ValueError as exc:
        print(f"televisit: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"created {args.role} {user_id}")


T = TypeVar("T")


def _on_database(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one write transaction on the configured database."""

    async def run() -> T:
        db = Database(create_engine(settings))
        try:
            async with db.session(write=True) as session:
                return await work(session)
        finally:
            await db.dispose()

    return asyncio.run(run())


async def _user_by_email(session: AsyncSession, email: str) -> User:
    from app.auth import service

    user = await service.get_by_email(session, email)
    if user is None:
        raise SystemExit(f"televisit: no user with the email {email}")
    return user


async def _audited(session: AsyncSession, action: str, user: User, **details: object) -> None:
    from app.audit import record_event

    await record_event(
        session,
        actor_id=None,
        actor_role="cli",
        action=action,
        resource_type="user",
        resource_id=user.id,
        details=details or None,
    )


def cmd_users_list(_args: argparse.Namespace) -> None:
    from app.auth import service

    settings = _settings()
    users = _on_database(settings, service.list_users)
    print(f"{'email':40} {'role':10} {'active':6} {'name':30} timezone")
    for user in users:
        active = "yes" if user.is_active else "no"
        print(f"{user.email:40} {user.role:10} {active:6} {user.name:30} {user.timezone}")


def cmd_users_deactivate(args: argparse.Namespace) -> None:
    from app.auth import service
    from app.errors import Conflict

    async def deactivate(session: AsyncSession) -> int:
        user = await _user_by_email(session, args.email)
        try:
            _, ended = await service.update_user(session, user_id=user.id, active=False)
        except Conflict as exc:
            raise SystemExit(f"televisit: {exc.message}") from None
        await _audited(session, "user.update", user, fields=["active"], active=False)
        return len(ended)

    ended = _on_database(_settings(), deactivate)
    # Other processes' caches hold a session for at most 5 s; consoles close within seconds.
    print(f"deactivated {args.email}; {ended} session(s) ended")


def cmd_users_reset_password(args: argparse.Namespace) -> None:
    from app.auth import service

    settings = _settings()

    async def issue(session: AsyncSession) -> str:
        user = await _user_by_email(session, args.email)
        url = await service.issue_reset(
            session, user_id=user.id, by=None, public_base=settings.public_base
        )
        await _audited(session, "user.password_reset_issue", user)
        return url

    url = _on_database(settings, issue)
    print(f"password-reset link for {args.email} (single use, valid 1 hour):")
    print(url)


def cmd_audit_verify(_args: argparse.Namespace) -> None:
    from scheduling import consent

    settings = _settings()

    async def verify() -> consent.ChainReport:
        db = Database(create_engine(settings))
        try:
            async with db.session(write=False) as session:
                return await consent.verify_chain(session)
        finally:
            await db.dispose()

    report = asyncio.run(verify())
    print(f"consent records: {report.records}")
    # Keep the head somewhere else too: a chain cannot prove it was not rewritten whole.
    print(f"chain head: seq {report.head_seq} {report.head_hash}")
    if not report.intact:
        print(f"BROKEN: {report.problem}")
        raise SystemExit(1)
    print("intact: every record is unaltered, present and in order")


def cmd_recordings_seal(_args: argparse.Namespace) -> None:
    from scheduling import recordings

    settings = _settings()

    async def seal() -> int:
        db = Database(create_engine(settings))
        try:
            files = recordings.RecordingFiles(
                settings.recordings_dir, settings.recordings_seal_key()
            )
            return await recordings.seal_plain(db, files)
        finally:
            await db.dispose()

    print(f"recordings sealed: {asyncio.run(seal())}")


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 (a comparison)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="televisit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    for name, handler, text in (
        ("serve", cmd_serve, "apply migrations, then serve HTTP and WebSocket"),
        ("demo", cmd_demo, "like serve, on demo data; prints logins and a patient link"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, default=8000)
        sub.set_defaults(handler=handler)

    users = commands.add_parser("users", help="manage staff accounts")
    users_commands = users.add_subparsers(dest="users_command", required=True)
    create = users_commands.add_parser("create", help="create a staff account")
    create.add_argument("--email", required=True)
    create.add_argument("--password", required=True)
    create.add_argument("--role", required=True, choices=["admin", "scheduler", "clinician"])
    create.add_argument("--name", required=True)
    create.add_argument("--timezone", default="UTC")
    create.set_defaults(handler=cmd_users_create)
    listing = users_commands.add_parser("list", help="every staff account, active or not")
    listing.set_defaults(handler=cmd_users_list)
    deactivate = users_commands.add_parser(
        "deactivate", help="deactivate an account: its sessions end now, its consoles in seconds"
    )
    deactivate.add_argument("--email", required=True)
    deactivate.set_defaults(handler=cmd_users_deactivate)
    reset = users_commands.add_parser(
        "reset-password", help="print a single-use link (1 hour) to set a new password"
    )
    reset.add_argument("--email", required=True)
    reset.set_defaults(handler=cmd_users_reset_password)

    audit = commands.add_parser("audit", help="the consent records' hash chain")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify", help="walk the chain; name the first record altered, removed or reordered"
    )
    verify.set_defaults(handler=cmd_audit_verify)

    kept = commands.add_parser("recordings", help="call recordings at rest")
    kept_commands = kept.add_subparsers(dest="recordings_command", required=True)
    seal = kept_commands.add_parser(
        "seal", help="seal recordings written before sealing (plain WebM) with the key"
    )
    seal.set_defaults(handler=cmd_recordings_seal)

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply every migration (alembic upgrade head)")
    upgrade.set_defaults(handler=cmd_db_upgrade)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
