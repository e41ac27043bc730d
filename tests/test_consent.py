"""Consent: versioned texts, per-call decisions, the records' append-only hash chain."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import Database
from scheduling import calls, consent, lifecycle
from scheduling.models import Appointment
from tests.factories import Staff
from tests.signaling.helpers import Visit, grant, make_visit

NEW_TEXT = "Consent to a video visit, second edition. " * 3


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def record(
    client: httpx.AsyncClient,
    visit: Visit,
    decision: str,
    scopes: list[str],
    version: int | None = None,
) -> httpx.Response:
    if version is None:  # the current text: other tests may have published a newer one
        shown = await client.get(f"/api/v1/visits/{visit.token}")
        version = shown.json()["consent"]["version"] if shown.status_code == 200 else 1
    return await client.post(
        f"/api/v1/visits/{visit.token}/consent",
        json={"version": version, "decision": decision, "scopes": scopes},
        headers={"User-Agent": "consent-test/1.0"},
    )


class TestDecisions:
    async def test_granting_is_recorded_and_the_visit_says_so(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        before = (await client.get(f"/api/v1/visits/{visit.token}")).json()
        assert before["consented"] is False
        assert "video visit" in before["consent"]["text"]
        response = await record(
            client, visit, "granted", ["video_visit", "recording"], before["consent"]["version"]
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == {"id", "decision", "scopes", "version", "recorded_at"}
        assert body["decision"] == "granted"
        assert sorted(body["scopes"]) == ["recording", "video_visit"]
        assert body["recorded_at"].endswith("Z")
        after = (await client.get(f"/api/v1/visits/{visit.token}")).json()
        assert after["consented"] is True
        assert after["consented_recording"] is True

    async def test_the_latest_decision_per_scope_stands(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await record(client, visit, "granted", ["video_visit", "recording"])
        await record(client, visit, "withdrawn", ["recording"])
        state = (await client.get(f"/api/v1/visits/{visit.token}")).json()
        assert (state["consented"], state["consented_recording"]) == (True, False)
        await record(client, visit, "declined", ["video_visit"])
        assert (await client.get(f"/api/v1/visits/{visit.token}")).json()["consented"] is False

    async def test_another_visits_consent_does_not_count(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        first = await make_visit(db, staff.clinician, by=staff.scheduler)
        second = await make_visit(db, staff.clinician, by=staff.scheduler)
        await record(client, first, "granted", ["video_visit"])
        assert (await client.get(f"/api/v1/visits/{second.token}")).json()["consented"] is False

    async def test_an_old_version_is_refused_with_409(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        published = await client.post(
            "/api/v1/consent-texts", json={"text": NEW_TEXT}, headers=staff.admin.headers
        )
        assert published.status_code == 201, published.text
        new_version = published.json()["version"]
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        stale = await record(client, visit, "granted", ["video_visit"], version=new_version - 1)
        assert stale.status_code == 409
        assert stale.json()["error"]["code"] == "consent_version_mismatch"
        shown = (await client.get(f"/api/v1/visits/{visit.token}")).json()["consent"]
        assert shown["version"] == new_version
        assert shown["text"] == NEW_TEXT.strip()
        current = await record(client, visit, "granted", ["video_visit"], version=new_version)
        assert current.status_code == 201

    @pytest.mark.parametrize(
        "body",
        [
            {"version": 1, "decision": "maybe", "scopes": ["video_visit"]},
            {"version": 1, "decision": "granted", "scopes": []},
            {"version": 1, "decision": "granted", "scopes": ["telepathy"]},
            {"version": 1, "decision": "granted", "scopes": ["video_visit", "video_visit"]},
            {"version": "one", "decision": "granted", "scopes": ["video_visit"]},
            {"decision": "granted", "scopes": ["video_visit"]},
        ],
        ids=["decision", "no-scopes", "scope", "twice", "version-type", "no-version"],
    )
    async def test_bad_bodies_return_422_and_record_nothing(
        self, client: httpx.AsyncClient, staff: Staff, db: Database, body: dict[str, object]
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        response = await client.post(f"/api/v1/visits/{visit.token}/consent", json=body)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"
        listed = await client.get(
            f"/api/v1/appointments/{visit.appointment_id}/consents", headers=staff.admin.headers
        )
        assert listed.json()["items"] == []

    async def test_a_closed_or_unknown_link_records_nothing(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        unknown = await client.post(
            f"/api/v1/visits/{'u' * 43}/consent",
            json={"version": 1, "decision": "granted", "scopes": ["video_visit"]},
        )
        assert unknown.status_code == 404
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await client.post(
            f"/api/v1/appointments/{visit.appointment_id}/cancel", headers=staff.scheduler.headers
        )
        closed = await record(client, visit, "granted", ["video_visit"])
        assert closed.status_code == 410


async def decide(db: Database, visit: Visit, decision: str, scopes: list[str]) -> consent.Decision:
    """A decision and its effects in a transaction of their own, as the consent endpoint writes
    them (without the event that announces them afterwards)."""
    async with db.session(write=True) as session:
        return await _decide(session, visit, decision, scopes)


async def _decide(
    session: AsyncSession, visit: Visit, decision: str, scopes: list[str]
) -> consent.Decision:
    entry = await consent.record(
        session,
        appointment_id=visit.appointment_id,
        participant=consent.PATIENT,
        decision=decision,
        scopes=scopes,
        version=(await consent.current_text(session)).version,
        ip=None,
        user_agent=None,
        now=_now(),
    )
    return await consent.take_effect(session, entry, now=_now())


async def put(db: Database, visit: Visit, **values: object) -> None:
    """Set the appointment's row as a socket or the sweeper would have left it."""
    async with db.session(write=True) as session:
        await session.execute(
            update(Appointment).where(Appointment.id == visit.appointment_id).values(**values)
        )


async def row(db: Database, visit: Visit) -> Appointment:
    async with db.session(write=False) as session:
        found = await session.get(Appointment, visit.appointment_id)
        assert found is not None
        return found


WAITING = {"status": "waiting", "patient_presence": "connected", "patient_process": "elsewhere"}


class TestConsentOnTheAppointment:
    async def test_the_row_follows_every_decision(self, staff: Staff, db: Database) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        seen = []
        for decision, scopes in [
            ("granted", ["video_visit", "recording"]),
            ("withdrawn", ["recording"]),
            ("granted", ["recording"]),
            ("declined", ["video_visit"]),
        ]:
            made = await decide(db, visit, decision, scopes)
            appointment = await row(db, visit)
            assert appointment.consent_seq == made.record.seq
            seen.append(appointment.patient_consent)
        assert seen == [
            "recording video_visit",
            "video_visit",
            "recording video_visit",
            "recording",
        ]

    async def test_check_in_and_admission_need_the_video_consent(
        self, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)

        async def move(transition: lifecycle.Transition) -> Appointment | None:
            async with db.session(write=True) as session:
                return await lifecycle.move(session, transition, visit.appointment_id)

        assert await move(lifecycle.CHECK_IN) is None
        await decide(db, visit, "granted", ["recording"])
        assert await move(lifecycle.CHECK_IN) is None  # recording alone is not the visit
        await decide(db, visit, "granted", ["video_visit"])
        assert (await move(lifecycle.CHECK_IN)) is not None
        await put(db, visit, patient_presence="connected")
        admitted = await calls.admit(
            db, visit.appointment_id, clinician_id=staff.clinician.id, host="h", now=_now()
        )
        assert admitted is not None
        assert admitted.status == "in_call"

    async def test_the_patients_socket_checks_in_only_with_the_video_consent_standing(
        self, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)

        async def check_in() -> Appointment | None:
            return await calls.check_in(
                db,
                visit.appointment_id,
                process="p1",
                connection="c" * 32,
                now=_now(),
                opens_before=dt.timedelta(days=1),
            )

        assert await check_in() is None  # in the statement itself, not only in the socket
        assert (await row(db, visit)).status == "booked"
        await decide(db, visit, "granted", ["video_visit"])
        checked_in = await check_in()
        assert checked_in is not None
        assert checked_in.status == "waiting"

    async def test_a_withdrawal_while_waiting_leaves_the_queue_in_its_transaction(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await record(client, visit, "granted", ["video_visit"])
        await put(db, visit, **WAITING)
        response = await record(client, visit, "withdrawn", ["video_visit"])
        assert response.status_code == 201
        appointment = await row(db, visit)
        assert (appointment.status, appointment.patient_presence) == ("booked", None)
        admitted = await calls.admit(
            db, visit.appointment_id, clinician_id=staff.clinician.id, host="h", now=_now()
        )
        assert admitted is None

    async def test_a_withdrawal_during_a_call_completes_it_in_its_transaction(
        self, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await decide(db, visit, "granted", ["video_visit", "recording"])
        await put(db, visit, **WAITING)
        admitted = await calls.admit(
            db, visit.appointment_id, clinician_id=staff.clinician.id, host="h", now=_now()
        )
        assert admitted is not None
        made = await decide(db, visit, "withdrawn", ["video_visit"])
        assert made.withdrawal is not None
        assert made.withdrawal.ended is not None
        appointment = await row(db, visit)
        assert (appointment.status, appointment.end_reason) == ("completed", "consent_withdrawn")
        # Its end is announced once, by whichever process releases the host first.
        assert appointment.call_host == "h"
        assert await calls.release_host(db, visit.appointment_id) is not None
        assert await calls.release_host(db, visit.appointment_id) is None

    async def test_withdrawing_recording_only_keeps_the_call(
        self, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await decide(db, visit, "granted", ["video_visit", "recording"])
        await put(db, visit, status="in_call")
        made = await decide(db, visit, "withdrawn", ["recording"])
        assert made.withdrawal is None
        assert (await row(db, visit)).status == "in_call"

    async def test_an_admission_waiting_on_a_withdrawal_admits_no_one(
        self, staff: Staff, db: Database
    ) -> None:
        """The withdrawal holds the row's lock until it commits; the admission waiting on it then
        re-checks the row as the withdrawal left it (PostgreSQL's READ COMMITTED re-reads the
        row, not other tables: this is why the consent is on the row)."""
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await decide(db, visit, "granted", ["video_visit"])
        await put(db, visit, **WAITING)
        admission: asyncio.Task[Appointment | None] | None = None
        async with db.session(write=True) as session:
            await _decide(session, visit, "withdrawn", ["video_visit"])
            admission = asyncio.create_task(
                calls.admit(
                    db,
                    visit.appointment_id,
                    clinician_id=staff.clinician.id,
                    host="h",
                    now=_now(),
                )
            )
            await asyncio.sleep(0.2)  # let it reach the database and wait there
            assert not admission.done()
        assert await admission is None
        assert (await row(db, visit)).status == "booked"


async def _admit(db: Database, visit: Visit, staff: Staff, *, after: float) -> Appointment | None:
    await asyncio.sleep(after)
    return await calls.admit(
        db, visit.appointment_id, clinician_id=staff.clinician.id, host="h", now=_now()
    )


async def _withdraw(db: Database, visit: Visit, *, after: float) -> consent.Decision:
    await asyncio.sleep(after)
    return await decide(db, visit, "withdrawn", ["video_visit"])


class TestAdmissionRacingAWithdrawal:
    async def _round(self, db: Database, staff: Staff, order: str, offset: float = 0.0) -> str:
        """An admission and a withdrawal on their own connections, `order` "race" (at once,
        the admission `offset` seconds later), "admit" or "withdraw" (that one committed before
        the other starts); the call's final status."""
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await decide(db, visit, "granted", ["video_visit"])
        await put(db, visit, **WAITING)
        if order == "race":
            admitted, withdrawn = await asyncio.gather(
                _admit(db, visit, staff, after=max(offset, 0)),
                _withdraw(db, visit, after=max(-offset, 0)),
            )
        elif order == "admit":
            admitted = await _admit(db, visit, staff, after=0)
            withdrawn = await _withdraw(db, visit, after=0)
        else:
            withdrawn = await _withdraw(db, visit, after=0)
            admitted = await _admit(db, visit, staff, after=0)
        final = await row(db, visit)
        assert final.status != "in_call"
        assert final.patient_consent == ""
        assert withdrawn.withdrawal is not None
        if admitted is not None:
            # Admitted first: the withdrawal ended that call, in its own transaction.
            assert withdrawn.withdrawal.ended is not None
            assert (final.status, final.end_reason) == ("completed", "consent_withdrawn")
        else:
            assert withdrawn.withdrawal.left_queue is not None
            assert final.status == "booked"
        return final.status

    async def test_never_a_call_in_progress_without_consent(
        self, staff: Staff, db: Database
    ) -> None:
        """100 times: the admission and the withdrawal, at once, on their own connections.

        Which one wins a round is the machine's business (a loaded machine may give every
        round to one side); whatever the order, no call is left in progress without consent.
        """
        for round_ in range(100):
            # Either may start first, by a few milliseconds.
            await self._round(db, staff, "race", offset=(round_ % 7 - 3) / 1000)

    @pytest.mark.parametrize(("first", "status"), [("admit", "completed"), ("withdraw", "booked")])
    async def test_each_order_ends_as_it_should(
        self, staff: Staff, db: Database, first: str, status: str
    ) -> None:
        """Each side of the race, the other starting once the first has committed."""
        assert await self._round(db, staff, first) == status


class TestRecordList:
    async def test_oldest_first_with_text_hash_address_and_agent(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await record(client, visit, "granted", ["video_visit"])
        await record(client, visit, "withdrawn", ["video_visit"])
        for person in (staff.admin, staff.clinician):
            response = await client.get(
                f"/api/v1/appointments/{visit.appointment_id}/consents", headers=person.headers
            )
            assert response.status_code == 200
            listed = response.json()["items"]
            assert [r["decision"] for r in listed] == ["granted", "withdrawn"]
            first = listed[0]
            assert set(first) == {
                "id", "participant", "decision", "scopes", "version", "text_sha256",
                "recorded_at", "ip", "user_agent",
            }  # fmt: skip
            assert first["participant"] == "patient"
            assert first["user_agent"] == "consent-test/1.0"
            assert first["ip"] == "127.0.0.1"
            shown = (await client.get(f"/api/v1/visits/{visit.token}")).json()["consent"]["text"]
            assert first["text_sha256"] == consent.text_hash(shown)

    async def test_schedulers_and_other_clinicians_see_none(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        url = f"/api/v1/appointments/{visit.appointment_id}/consents"
        assert (await client.get(url, headers=staff.scheduler.headers)).status_code == 403
        assert (await client.get(url, headers=staff.other_clinician.headers)).status_code == 404
        assert (await client.get(url)).status_code == 401
        unknown = f"/api/v1/appointments/{uuid.uuid4()}/consents"
        assert (await client.get(unknown, headers=staff.admin.headers)).status_code == 404

    async def test_only_admins_publish_texts(self, client: httpx.AsyncClient, staff: Staff) -> None:
        for person in (staff.scheduler, staff.clinician):
            response = await client.post(
                "/api/v1/consent-texts", json={"text": NEW_TEXT}, headers=person.headers
            )
            assert response.status_code == 403
        short = await client.post(
            "/api/v1/consent-texts", json={"text": "too short"}, headers=staff.admin.headers
        )
        assert short.status_code == 422


class TestAppendOnlyChain:
    @pytest.mark.parametrize(
        "statement",
        ["UPDATE consent_records SET decision = 'granted'", "DELETE FROM consent_records"],
    )
    async def test_records_cannot_be_changed_or_removed(
        self, client: httpx.AsyncClient, staff: Staff, db: Database, statement: str
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await record(client, visit, "declined", ["video_visit"])
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.session(write=True) as session:
                await session.execute(text(statement))

    async def test_the_chain_verifies_and_names_an_altered_record(
        self, client: httpx.AsyncClient, staff: Staff, db: Database, settings: Settings
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        for decision in ("granted", "withdrawn", "granted"):
            await record(client, visit, decision, ["video_visit"])
        async with db.session(write=False) as session:
            report = await consent.verify_chain(session)
        assert report.intact, report.problem
        ok = await asyncio.to_thread(_cli_verify, settings)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "intact" in ok.stdout

        async with db.session(write=False) as session:
            target = (
                await session.execute(
                    text(
                        "SELECT seq FROM consent_records WHERE appointment_id = :a "
                        "ORDER BY seq LIMIT 1 OFFSET 1"
                    ),
                    {"a": visit.appointment_id if not db.is_sqlite else visit.appointment_id.hex},
                )
            ).scalar_one()
        await _tamper(db, f"UPDATE consent_records SET decision = 'granted' WHERE seq = {target}")  # noqa: S608 (an integer we read)
        try:
            async with db.session(write=False) as session:
                report = await consent.verify_chain(session)
            assert not report.intact
            assert f"seq {target}" in (report.problem or "")
            assert "altered" in (report.problem or "")
            broken = await asyncio.to_thread(_cli_verify, settings)
            assert broken.returncode == 1
            assert f"seq {target}" in broken.stdout
        finally:
            await _tamper(
                db,
                f"UPDATE consent_records SET decision = 'withdrawn' WHERE seq = {target}",  # noqa: S608
            )

    async def test_a_removed_record_is_named(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        for decision in ("granted", "withdrawn", "granted"):
            await record(client, visit, decision, ["video_visit"])
        async with db.session(write=False) as session:
            rows = (
                (
                    await session.execute(
                        text("SELECT * FROM consent_records ORDER BY seq DESC LIMIT 2")
                    )
                )
                .mappings()
                .all()
            )
        middle = rows[1]
        await _tamper(db, f"DELETE FROM consent_records WHERE seq = {middle['seq']}")  # noqa: S608
        try:
            async with db.session(write=False) as session:
                report = await consent.verify_chain(session)
            assert not report.intact
            assert f"seq {middle['seq']} is missing" in (report.problem or "")
        finally:
            await _restore(db, dict(middle))
        async with db.session(write=False) as session:
            assert (await consent.verify_chain(session)).intact


async def _tamper(db: Database, statement: str) -> None:
    """What an attacker with database access does, around the append-only triggers."""
    async with db.session(write=True) as session:
        if db.is_sqlite:
            for event in ("update", "delete"):
                await session.execute(text(f"DROP TRIGGER consent_records_no_{event}"))
            await session.execute(text(statement))
            for event in ("UPDATE", "DELETE"):
                await session.execute(
                    text(
                        f"CREATE TRIGGER consent_records_no_{event.lower()} BEFORE {event} "
                        "ON consent_records BEGIN SELECT RAISE(ABORT, "
                        "'table consent_records is append-only'); END"
                    )
                )
        else:
            await session.execute(text("SET LOCAL session_replication_role = replica"))
            await session.execute(text(statement))


async def _restore(db: Database, row: dict[str, object]) -> None:
    columns = ", ".join(row)
    values = ", ".join(f":{name}" for name in row)
    async with db.session(write=True) as session:
        statement = f"INSERT INTO consent_records ({columns}) VALUES ({values})"  # noqa: S608
        await session.execute(text(statement), row)


def _cli_verify(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "audit", "verify"],
        env={
            **os.environ,
            "TELEVISIT_DATABASE_URL": settings.database_url,
            "PYTHONPATH": str(Path(__file__).parent.parent),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestBirthDateCheck:
    async def test_the_link_shows_nothing_until_the_birth_date_matches(
        self, staff: Staff, db: Database, settings: Settings
    ) -> None:
        import datetime as dt

        from asgi_lifespan import LifespanManager

        from app.main import create_app

        strict = settings.model_copy(update={"visit_birth_date_check": True})
        app = create_app(strict)
        born = dt.date(1980, 2, 29)
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, birth_date=born)
        async with LifespanManager(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                hidden = await http.get(f"/api/v1/visits/{visit.token}")
                assert hidden.status_code == 401
                assert hidden.json()["error"]["code"] == "verification_required"
                assert "clinician" not in hidden.text
                wrong = await http.post(
                    f"/api/v1/visits/{visit.token}/verify", json={"birth_date": "1980-03-01"}
                )
                assert wrong.status_code == 401
                assert wrong.json()["error"]["code"] == "verification_failed"
                right = await http.post(
                    f"/api/v1/visits/{visit.token}/verify", json={"birth_date": born.isoformat()}
                )
                assert right.status_code == 200
                proof = right.json()["verification"]
                shown = await http.get(
                    f"/api/v1/visits/{visit.token}", headers={"X-Visit-Verification": proof}
                )
                assert shown.status_code == 200
                assert shown.json()["birth_date_check"] is True
                other = await make_visit(db, staff.clinician, by=staff.scheduler, birth_date=born)
                reused = await http.get(
                    f"/api/v1/visits/{other.token}", headers={"X-Visit-Verification": proof}
                )
                assert reused.status_code == 401  # a proof opens its own link only
                await grant_with(http, visit.token, proof)

    async def test_guessing_is_throttled(
        self, staff: Staff, db: Database, settings: Settings
    ) -> None:
        import datetime as dt

        from asgi_lifespan import LifespanManager

        from app.main import create_app

        app = create_app(settings.model_copy(update={"visit_birth_date_check": True}))
        visit = await make_visit(
            db, staff.clinician, by=staff.scheduler, birth_date=dt.date(1970, 1, 1)
        )
        async with LifespanManager(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                codes = [
                    (
                        await http.post(
                            f"/api/v1/visits/{visit.token}/verify",
                            json={"birth_date": f"1971-01-{day:02d}"},
                        )
                    ).status_code
                    for day in range(1, 7)
                ]
        assert codes[:5] == [401] * 5
        assert codes[5] == 429


async def grant_with(http: httpx.AsyncClient, token: str, proof: str) -> None:
    headers = {"X-Visit-Verification": proof}
    version = (await http.get(f"/api/v1/visits/{token}", headers=headers)).json()["consent"][
        "version"
    ]
    response = await http.post(
        f"/api/v1/visits/{token}/consent",
        json={"version": version, "decision": "granted", "scopes": ["video_visit"]},
        headers=headers,
    )
    assert response.status_code == 201
    without = await http.post(
        f"/api/v1/visits/{token}/consent",
        json={"version": version, "decision": "granted", "scopes": ["video_visit"]},
    )
    assert without.status_code == 401


__all__ = ["grant"]
