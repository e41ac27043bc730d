"""`televisit demo`: staff, two clinicians with hours, and a visit starting now."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import service as auth_service
from app.auth.models import User
from app.auth.schemas import UserCreate
from app.config import Settings
from app.db import Database, create_engine
from app.errors import Conflict
from scheduling import service as scheduling
from scheduling import visits
from scheduling.models import Appointment, Status
from scheduling.schemas import AvailabilityBody, Patient

PASSWORD = "televisit-demo"


@dataclass(frozen=True)
class DemoUser:
    email: str
    role: str
    name: str
    timezone: str


STAFF = (
    DemoUser("admin@televisit.example.org", "admin", "Avery Admin", "UTC"),
    DemoUser("scheduler@televisit.example.org", "scheduler", "Sam Scheduler", "America/New_York"),
    DemoUser("okafor@televisit.example.org", "clinician", "Dr. Amara Okafor", "America/New_York"),
    DemoUser("lindqvist@televisit.example.org", "clinician", "Dr. Erik Lindqvist", "Europe/Berlin"),
)
DEMO_PATIENT = Patient(name="Jordan Rivera", email="jordan.rivera@example.org")


async def create_user(
    settings: Settings, *, email: str, password: str, role: str, name: str, timezone: str
) -> uuid.UUID:
    try:
        body = TypeAdapter(UserCreate).validate_python(
            {"email": email, "password": password, "role": role, "name": name, "timezone": timezone}
        )
    except ValidationError as exc:
        raise ValueError("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())) from None
    db = Database(create_engine(settings))
    try:
        async with db.session(write=True) as session:
            user = await auth_service.create_user(session, **body.model_dump())
            return user.id
    except Conflict as exc:
        raise ValueError(exc.message) from None
    finally:
        await db.dispose()


def _hours(timezone: str) -> AvailabilityBody:
    weekdays = [{"weekday": d, "start": "08:00", "end": "18:00"} for d in range(5)]
    weekend = [{"weekday": d, "start": "09:00", "end": "13:00"} for d in (5, 6)]
    return AvailabilityBody.model_validate(
        {"timezone": timezone, "slot_minutes": 20, "weekly": weekdays + weekend}
    )


async def seed(settings: Settings) -> str:
    """Create what is missing and return the text to print."""
    db = Database(create_engine(settings))
    now = dt.datetime.now(dt.UTC)
    link_key = visits.link_key(settings.secret_bytes())
    try:
        async with db.session(write=True) as session:
            users: dict[str, User] = {}
            for person in STAFF:
                user = await auth_service.get_by_email(session, person.email)
                if user is None:
                    user = await auth_service.create_user(
                        session,
                        email=person.email,
                        password=PASSWORD,
                        role=person.role,
                        name=person.name,
                        timezone=person.timezone,
                    )
                    if person.role == "clinician":
                        await scheduling.set_availability(
                            session,
                            clinician_id=user.id,
                            existing=None,
                            body=_hours(person.timezone),
                        )
                users[person.email] = user
            clinician = users[STAFF[2].email]
            visit = await _visit_now(
                session, clinician=clinician, by=users[STAFF[1].email], now=now, link_key=link_key
            )
        token = visits.token_for(link_key, visit.link_salt)
    finally:
        await db.dispose()
    lines = [
        "",
        f"Televisit demo at {settings.public_base}",
        "",
        f"Staff logins at {settings.public_base}/login (password for all: {PASSWORD}):",
        *(f"  {p.role:<10} {p.email:<34} {p.name}" for p in STAFF),
        "",
        f"API reference (every route, with a token to try them): {settings.public_base}/api/docs",
        "",
        f"A visit with {clinician.name} starting now ({DEMO_PATIENT.name}); the patient's link:",
        f"  {visits.visit_url(settings.public_base, token)}",
        "",
    ]
    return "\n".join(lines)


async def _visit_now(
    session: AsyncSession, *, clinician: User, by: User, now: dt.datetime, link_key: bytes
) -> Appointment:
    """The clinician's visit under way now, booked for the demo patient if there is none."""
    start = now.replace(second=0, microsecond=0)
    length = dt.timedelta(minutes=20)
    overlapping = await session.execute(
        select(Appointment)
        .where(
            Appointment.clinician_id == clinician.id,
            Appointment.status != Status.CANCELLED.value,
            Appointment.start_at < start + length,
            Appointment.end_at > start,
        )
        .order_by(Appointment.end_at)
    )
    for appointment in overlapping.scalars():
        if appointment.status in (Status.BOOKED, Status.WAITING):
            return appointment
        start = max(start, appointment.end_at)
    salt = visits.new_salt()
    appointment = Appointment(
        id=uuid.uuid4(),
        clinician_id=clinician.id,
        start_at=start,
        end_at=start + length,
        status=Status.BOOKED.value,
        patient_name=DEMO_PATIENT.name,
        patient_email=DEMO_PATIENT.email,
        link_salt=salt,
        link_hash=visits.token_hash(visits.token_for(link_key, salt)),
        sequence=0,
        created_by_id=by.id,
        created_at=now,
        updated_at=now,
    )
    session.add(appointment)
    await session.flush()
    return appointment
