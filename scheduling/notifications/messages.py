"""What the patient reads: plain, friendly, and no more about them than the visit needs.

A message names the visit's time (in the patient's time zone when the booking gave one, else
the clinician's, always with the zone named), the clinician, and the visit link; never the
patient's name, the reason for the visit, or anything else from the record.

A guest of the visit (an interpreter, a caregiver, a colleague) reads the same facts with their
own link and the role they join as; nothing about the patient either.
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
    # A guest's role ("interpreter", "caregiver", "clinician"); None: the patient's message.
    guest_role: str | None = None


# How a guest's message names the role they join as.
ROLE_PHRASES = {
    "interpreter": "the interpreter",
    "caregiver": "a caregiver",
    "clinician": "a consulting clinician",
}


def role_phrase(role: str) -> str:
    return ROLE_PHRASES.get(role, "a guest")


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
    if visit.guest_role is not None:
        return {
            Kind.GUEST_INVITATION: f"You are invited to a video visit on {at}",
            Kind.RESCHEDULED: f"The video visit you are invited to has moved to {at}",
            Kind.CANCELLED: f"The video visit on {at} is cancelled",
        }[visit.kind]
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


def _guest_paragraphs(visit: Visit) -> list[str]:
    at, who = when(visit), visit.clinician_name
    join = _JOIN.format(url=visit.visit_url)
    role = role_phrase(visit.guest_role or "")
    return {
        Kind.GUEST_INVITATION: [
            f"You are invited to join a video visit with {who} on {at}, as {role}.",
            join,
            "You will be asked for your own consent, and the clinician lets you into the call.",
            _CALENDAR,
        ],
        Kind.RESCHEDULED: [
            f"The video visit with {who} you are invited to has moved. The new time is {at}.",
            join + " It is the same link as before.",
            "The attached calendar file updates the visit in your calendar.",
        ],
        Kind.CANCELLED: [
            f"The video visit with {who} on {at} you were invited to has been cancelled, and "
            "its link no longer opens.",
            "The attached calendar file removes the visit from your calendar.",
        ],
    }[visit.kind]


def mail_text(visit: Visit) -> str:
    if visit.guest_role is not None:
        return "\n\n".join(["Hello,", *_guest_paragraphs(visit), _CONTACT]) + "\n"
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
    if visit.guest_role is not None:
        role = role_phrase(visit.guest_role)
        return {
            Kind.GUEST_INVITATION: f"You are invited to a video visit with {who} on {at} as "
            f"{role}. Join at that time: {url}",
            Kind.RESCHEDULED: f"The video visit with {who} you are invited to has moved to "
            f"{at}. Join: {url}",
            Kind.CANCELLED: f"The video visit with {who} on {at} is cancelled.",
        }[visit.kind]
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
