"""The room's consent and what hangs on it: the patient's gate, the recording, the call's end.

Nothing from the patient is forwarded (or recorded) while their `video_visit` consent does not
stand, or while the relay cannot read it (media.gate). Decisions arrive as announcements from
signaling and as the consent watch's readings; both are steps of the room's owner, applied in
the order they arrived, the newer decision (higher `seq`) winning. A recording starts only on a
fresh reading and keeps only what later readings confirm (media.recording). Every function
here runs in the room's owner.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from functools import partial

from app.participants import is_guest
from media.owner import Step
from media.recording import Recorder
from media.room import Room
from media.tracks import Publisher
from signaling.media import Consent, GuestConsent
from signaling.media import error as error_message

# Why a recording stops when a guest present has not consented to it (joined without it, or
# withdrew it): the patient's own withdrawal is "consent_withdrawn".
WITHOUT_CONSENT = "participant_without_consent"
# A recording's file finished because someone's media joined it: it goes on in the next file.
JOINED = "participant_joined"
ROLL_EVERY = 1.0  # seconds between asks for a roll (each reads the consent)


async def announced(room: Room, consent: Consent, *, braked: bool) -> None:
    """The patient's decision as signaling announced it (`braked`: a withdrawal that pulled
    the brake). Guests it names are applied too, each if newer; the others are kept."""
    if braked:
        room.withdrawals_waiting -= 1
    guests = dict(room.consent.guests)
    for key, standing in consent.guests.items():
        if _newer(standing, guests.get(key)):
            guests[key] = standing
    if consent.seq and consent.seq < room.consent.seq:
        # A reading brought a newer one already: the patient's part as that one left it.
        consent = replace(room.consent, guests=guests)
    else:
        consent = replace(consent, guests=guests)
    await _apply(room, consent)


async def guest_announced(room: Room, key: str, standing: GuestConsent, *, braked: bool) -> None:
    """One guest's decision as signaling announced it (`braked`: a withdrawal)."""
    if braked:
        room.guest_withdrawals[key] -= 1
        if room.guest_withdrawals[key] <= 0:
            del room.guest_withdrawals[key]
    if not _newer(standing, room.consent.guest(key)):
        room.gate()  # a reading brought a newer one already
        return
    await _apply(room, replace(room.consent, guests={**room.consent.guests, key: standing}))


def _newer(standing: GuestConsent, known: GuestConsent | None) -> bool:
    return known is None or not standing.seq or standing.seq >= known.seq


async def reading(
    room: Room,
    consent: Consent | None,
    started: float,
    brake: int | None = None,
    guest_brakes: Mapping[str, int] | None = None,
) -> None:
    """A reading begun at `started` found this (None: the call is no longer under way); it
    releases the reading brakes that stood when it was posted (`brake`, `guest_brakes`), if
    none came since. Its guests are the call's guests: one it does not name is allowed nothing
    (unless an announced decision is newer than what it found)."""
    if brake is not None and room.reading_brake == brake:
        room.reading_brake = None
    for key, number in (guest_brakes or {}).items():
        if room.guest_reading_brakes.get(key) == number:
            del room.guest_reading_brakes[key]
    room.consent_read_at = max(room.consent_read_at, started)
    room.in_doubt = False
    if room.doubt_since is not None and started >= room.doubt_since:
        room.doubt_since = None
    if consent is None:
        await _apply(room, Consent(False, False, room.consent.seq))
        return
    guests = {}
    for key, found in consent.guests.items():
        known = room.consent.guest(key)
        guests[key] = known if known is not None and found.seq < known.seq else found
    # Older than an announced decision: the patient's part as that one left it.
    patient = consent if consent.seq >= room.consent.seq else room.consent
    await _apply(room, replace(patient, guests=guests))
    if room.recorder is not None and _confirms_recording(room, consent):
        room.recorder.confirm(started)


def _confirms_recording(room: Room, found: Consent) -> bool:
    """The reading found the recording consent standing, as the room has it, for the patient
    and every guest present."""
    if not (found.recording and found.seq == room.consent.seq):
        return False
    for key in room.present():
        if not is_guest(key):
            continue
        standing, known = found.guest(key), room.consent.guest(key)
        if standing is None or known is None or not standing.recording:
            return False
        if standing.seq != known.seq:
            return False
    return True


async def doubt(room: Room, since: float) -> None:
    """No reading for too long: nothing of the patient's or a guest's goes anywhere until one
    answers. A recording goes on: it writes only what a later reading confirms (media.gate)."""
    if room.in_doubt or room.consent_read_at >= since:
        return  # in doubt already, or a reading begun after the lapse came first
    room.in_doubt = True
    room.gate()


async def unknown(room: Room, since: float) -> None:
    """No reading for much longer (media.gate.UNKNOWN_SECONDS): the database is out of reach,
    and a recording running stops, keeping only what readings confirmed."""
    if room.consent_read_at >= since:
        return  # a reading begun since answered first
    room.in_doubt = True
    room.gate()
    if room.recorder is not None:
        await stop_recording(room, reason="consent_unknown")


async def record(room: Room, action: str) -> None:
    """The clinician's request: start, or stop (keeping the end only if consent stood)."""
    if action == "start":
        await _start_recording(room)
        return
    if room.recorder is not None:
        await _read_now(room)  # keeps the recording's end, if consent stood
    await stop_recording(room, reason="stopped")


async def stop_recording(room: Room, *, reason: str, announce: bool = True) -> None:
    recorder, room.recorder = room.recorder, None
    if recorder is None:
        return
    size = await recorder.close()
    recordings = room.services.recordings
    if recordings is not None:
        await recordings.stopped(room.id, recorder.id, size, reason)
    if announce:
        await room.announce({"type": "recording", "state": "off"})


async def _apply(room: Room, consent: Consent) -> None:
    """The standing decisions, newer than the room's: the gates, the recording, the call."""
    previous, room.consent = room.consent, consent
    room.gate()
    if room.recorder is not None:
        guests = [key for key in room.present() if is_guest(key)]
        if not consent.recording:
            await stop_recording(room, reason="consent_withdrawn")
        elif not consent.recording_stands(guests):
            await stop_recording(room, reason=WITHOUT_CONSENT)
        elif consent.seq != previous.seq or any(
            consent.guest(key) != previous.guest(key) for key in guests
        ):
            room.recorder.drop_unconfirmed()  # a decision came in: what came since is unsure
    guard = room.services.guard
    if not consent.video_visit and guard is not None and not room.over_reported:
        room.over_reported = True
        room.services.spawn(guard.call_over(room.id))


async def _start_recording(room: Room) -> None:
    services = room.services
    if room.recorder is not None or services.recordings is None:
        return
    # The consent as committed now, not as last announced: a withdrawal racing this request
    # is either seen here or stops the recording, and what came after it is never written.
    if not await _read_now(room) or not room.consent.recording_stands(room.present()):
        await room.tell(
            "clinician",
            error_message(
                "recording_consent_required", "Every participant must consent to recording first."
            ),
        )
        if services.guard is not None:
            services.spawn(services.guard.recording_refused(room.id))
        return
    await _open_recorder(room)
    await room.announce({"type": "recording", "state": "on"})


async def roll(room: Room) -> None:
    """Media the recording lacks is flowing, and would be kept (a guest admitted after it
    began, a screen shared): a file's streams are fixed once it is written, so the file is
    finished (`participant_joined`) and the recording goes on in a new one holding everyone's.
    For the people in the call the recording never stopped: nobody is told. Consent is read
    first, as for a start; if it does not stand, the recording stops as it would anyway."""
    if not lacked(room):
        return
    if not await _read_now(room):
        return  # in doubt: the recording goes on as it is (readings failing for long stop it)
    finished = room.recorder
    if finished is None:
        return  # the reading stopped it (announced)
    if not room.consent.recording_stands(room.present()):
        await stop_recording(room, reason=WITHOUT_CONSENT)
        return
    try:
        await _open_recorder(room)  # listening before the old one stops: no frame falls between
    finally:
        # Finished whatever happened to the next part: never a file left open.
        size = await finished.close()
        recordings = room.services.recordings
        if recordings is not None:
            await recordings.stopped(room.id, finished.id, size, JOINED)


def ask_roll(room: Room, publisher: Publisher, now: float) -> None:
    """A frame of `publisher` passed its gate (on the forwarding path, per frame while a
    recording runs: the common case returns at the first test): if the recording lacks it, ask
    for a roll, at most one a second, however many frames come while a reading is in doubt."""
    recorder = room.recorder
    if recorder is None or recorder.listens_to(publisher):
        return
    if now >= recorder.roll_asked + ROLL_EVERY and _would_keep(room, publisher):
        recorder.roll_asked = now
        room.post(Step(partial(roll, room), key="roll"))


def lacked(room: Room) -> bool:
    """Whether a recording runs without a stream for media it would keep."""
    recorder = room.recorder
    return recorder is not None and any(
        not recorder.listens_to(p) and _would_keep(room, p) for p in room.publishers.values()
    )


def _would_keep(room: Room, publisher: Publisher) -> bool:
    """Whether a recording would keep `publisher`'s frames now: forwarded, sending, and theirs
    whose recording consent stands."""
    return (
        publisher.allowed
        and publisher.forwarding
        and publisher.frames > 0
        and room.may_record(publisher.role)
    )


async def _open_recorder(room: Room) -> None:
    services = room.services
    assert services.recordings is not None
    recorder = Recorder(
        services.settings.recordings_dir,
        room.id,
        room.publishers.values(),
        room.video_codec,
        key=services.settings.recordings_seal_key(),
        held=services.guard is not None,
        recordable=room.may_record,
    )
    room.recorder = recorder
    await services.recordings.started(room.id, recorder.id, recorder.path.name)
    for publisher in room.publishers.values():
        publisher.ask_keyframe()


async def _read_now(room: Room) -> bool:
    """Apply a reading made now; False when none could be made (the relay then doubts)."""
    watch = room.services.watch
    if watch is None:
        return True  # a relay on its own: signaling's word is the consent
    started = time.monotonic()
    found = await watch.read([room.id], started=started)
    if found is None or room.owner.closing:
        return False
    await reading(room, found.get(room.id), started)
    return True
