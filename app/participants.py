"""Participant keys: one string per person in a call, the same in every package.

Signaling channels, the relay's participants, consent records' `participant` and chat senders
all name a person this way: `"patient"`, `"clinician"` (the appointment's own clinician), and
`"<role>:<guest id>"` for a guest (`"interpreter:6f1c…"`; a second clinician invited as a guest
is `"clinician:<id>"`). Here, in `app`, because every package may import it.
"""

from __future__ import annotations

import uuid
from typing import Final

PATIENT: Final = "patient"
CLINICIAN: Final = "clinician"
# The roles a guest may have; their order is the order forms offer them.
GUEST_ROLES: Final = ("interpreter", "caregiver", "clinician")
# A call holds the patient, the clinician and at most MAX_GUESTS guests (the database refuses a
# third active guest of an appointment: visit_guests' partial unique index over its two slots).
MAX_GUESTS: Final = 2
MAX_PEOPLE: Final = 2 + MAX_GUESTS


def guest_key(role: str, participant_id: uuid.UUID | str) -> str:
    """The key of a guest: `"<role>:<id>"`."""
    if role not in GUEST_ROLES:
        raise ValueError(f"not a guest role: {role!r}")
    return f"{role}:{uuid.UUID(str(participant_id))}"


def parse_key(key: str) -> tuple[str, uuid.UUID | None]:
    """`(role, guest id)` of a key; the id is None for the patient and the clinician.

    Raises ValueError for anything that is not a participant key."""
    if key in (PATIENT, CLINICIAN):
        return key, None
    role, sep, rest = key.partition(":")
    if not sep or role not in GUEST_ROLES:
        raise ValueError("not a participant key")
    return role, uuid.UUID(rest)


def is_guest(key: str) -> bool:
    """Whether the key names a guest (and is well formed)."""
    try:
        return parse_key(key)[1] is not None
    except ValueError:
        return False
