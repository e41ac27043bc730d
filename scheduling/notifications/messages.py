"""What the patient reads: plain, friendly, and no more about them than the visit needs.

A message names the visit's time (in the patient's time zone when the booking gave one, else
the clinician's, always with the zone named), the clinician, and the visit link; never the
patient's name, the reason for the visit, or anything else from the record.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from zoneinfo import ZoneInfo

from scheduling.notifications.models import Kind


@dataclass(frozen=True)
class Visit:
    """The facts of one notification, read at send time."""

    notification_id: uuid.UUID
    kind: Kind
    start_at: dt.datetime
    timezone: str
    clinician_name: str
    visit_url: str


def zone_label(timezone: str) -> str:
    """'America/New_York' -> 'New York time'."""
    return timezone.rsplit("/", 1)[-1].replace("_", " ") + " time"


def when(visit: Visit, *, short: bool = False) -> str:
    local = visit.start_at.astimezone(ZoneInfo(visit.timezone))
    day = (
        f"{local:%a} {local.day} {local:%b}"
        if short
        else f"{local:%A} {local.day} {local:%B} {local.year}"
    )
    return f"{day} at {local:%H:%M} ({zone_label(visit.timezone)})"


def subject(visit: Visit) -> str:
    at = when(visit)
    return {
        Kind.INVITATION: f"Your video visit on {at}",
        Kind.RESCHEDULED: f"Your video visit has moved to {at}",
        Kind.CANCELLED: f"Your video visit on {at} is cancelled",
        Kind.REMINDER: f"Reminder: your video visit on {at}",
    }[visit.kind]


_JOIN = (
    "To join, open this link at the time of the visit, on a phone or computer with a camera "
    "and a microphone (there is nothing to install):\n{url}\n\n"
    "The link is yours alone: please do not pass it on."
)
_CALENDAR = "The attached calendar file adds the visit to your calendar."
_CONTACT = "If you cannot make it, or have a question, please contact the practice."


def mail_text(visit: Visit) -> str:
    at, who = when(visit), visit.clinician_name
    join = _JOIN.format(url=visit.visit_url)
    paragraphs = {
        Kind.INVITATION: [f"You have a video visit with {who} on {at}.", join, _CALENDAR],
        Kind.RESCHEDULED: [
            f"Your video visit with {who} has moved. The new time is {at}.",
            join + " It is the same link as before.",
            "The attached calendar file updates the visit in your calendar.",
        ],
        Kind.CANCELLED: [
            f"Your video visit with {who} on {at} has been cancelled, and its link no longer "
            "opens.",
            "The attached calendar file removes the visit from your calendar.",
        ],
        Kind.REMINDER: [f"A reminder of your video visit with {who} on {at}.", join],
    }[visit.kind]
    return "\n\n".join(["Hello,", *paragraphs, _CONTACT]) + "\n"


def sms_text(visit: Visit) -> str:
    at, who, url = when(visit, short=True), visit.clinician_name, visit.visit_url
    return {
        Kind.INVITATION: f"Video visit with {who} on {at}. Join at that time: {url}",
        Kind.RESCHEDULED: f"Your video visit with {who} has moved to {at}. Join: {url}",
        Kind.CANCELLED: f"Your video visit with {who} on {at} is cancelled.",
        Kind.REMINDER: f"Reminder: video visit with {who} on {at}. Join: {url}",
    }[visit.kind]


def mail(
    visit: Visit, *, sender: str, recipient: str, domain: str, ics: bytes | None
) -> EmailMessage:
    """The message, with the visit's `.ics` attached when there is one."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject(visit)
    message["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    # One id per notification: a receiving system that sees it twice can tell.
    message["Message-ID"] = f"<{visit.notification_id}@{domain}>"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(mail_text(visit))
    if ics is not None:
        method = "CANCEL" if visit.kind is Kind.CANCELLED else "PUBLISH"
        message.add_attachment(
            ics,
            maintype="text",
            subtype="calendar",
            filename="visit.ics",
            params={"method": method},
        )
    return message
