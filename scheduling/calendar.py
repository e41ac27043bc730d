"""RFC 5545 invitations. The event carries the visit link and the clinician, never the reason."""

from __future__ import annotations

import datetime as dt

from icalendar import Calendar, Event

from scheduling.models import Appointment, Status

PRODID = "-//Televisit//Televisit video visits//EN"


def invitation(
    appointment: Appointment, *, clinician_name: str, visit_url: str, domain: str
) -> bytes:
    cancelled = appointment.status == Status.CANCELLED
    calendar = Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    calendar.add("method", "CANCEL" if cancelled else "PUBLISH")

    event = Event()
    # Stable across reschedules, so calendars update the event instead of adding another.
    event.add("uid", f"{appointment.id}@{domain}")
    event.add("sequence", appointment.sequence)
    event.add("dtstamp", dt.datetime.now(dt.UTC).replace(microsecond=0))
    event.add("dtstart", appointment.start_at)
    event.add("dtend", appointment.end_at)
    event.add("summary", f"Video visit with {clinician_name}")
    event.add(
        "description",
        f"Join your video visit from this link at the time of the visit:\n{visit_url}",
    )
    event.add("location", visit_url)
    event.add("url", visit_url)
    event.add("status", "CANCELLED" if cancelled else "CONFIRMED")
    event.add("transp", "OPAQUE")
    calendar.add_component(event)
    return bytes(calendar.to_ical())
