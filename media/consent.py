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

from media.recording import Recorder
from media.room import Room
from signaling.media import Consent
from signaling.media import error as error_message


async def announced(room: Room, consent: Consent, *, braked: bool) -> None:
    """A decision as signaling announced it (`braked`: a withdrawal that pulled the brake)."""
    if braked:
        room.withdrawals_waiting -= 1
    if consent.seq and consent.seq < room.consent.seq:
        room.gate()  # a reading brought a newer one already: the gate as that one left it
        return
    await _apply(room, consent)


async def reading(
    room: Room, consent: Consent | None, started: float, brake: int | None = None
) -> None:
    """A reading begun at `started` found this (None: the call is no longer under way); it
    releases the reading brake that stood when it was posted (`brake`), if none came since."""
    if brake is not None and room.reading_brake == brake:
        room.reading_brake = None
    room.consent_read_at = max(room.consent_read_at, started)
    room.in_doubt = False
    if room.doubt_since is not None and started >= room.doubt_since:
        room.doubt_since = None
    if consent is None:
        await _apply(room, Consent(False, False, room.consent.seq))
    elif consent.seq >= room.consent.seq:
        await _apply(room, consent)
    else:
        room.gate()  # older than an announced decision: the gate as that one left it
    if (
        room.recorder is not None
        and consent is not None
        and consent.seq == room.consent.seq
        and consent.recording
    ):
        room.recorder.confirm(started)


async def doubt(room: Room, since: float) -> None:
    """No reading for too long: nothing of the patient's goes anywhere until one answers."""
    if room.in_doubt or room.consent_read_at >= since:
        return  # in doubt already, or a reading begun after the lapse came first
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
    """The patient's standing decisions, newer than the room's: gate, recording, the call."""
    previous, room.consent = room.consent, consent
    room.gate()
    if room.recorder is not None:
        if not consent.recording:
            await stop_recording(room, reason="consent_withdrawn")
        elif consent.seq != previous.seq:
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
    if not await _read_now(room) or not room.consent.recording:
        await room.tell(
            "clinician",
            error_message(
                "recording_consent_required", "Every participant must consent to recording first."
            ),
        )
        if services.guard is not None:
            services.spawn(services.guard.recording_refused(room.id))
        return
    recorder = Recorder(
        services.settings.recordings_dir,
        room.id,
        room.publishers.values(),
        room.video_codec,
        key=services.settings.recordings_seal_key(),
        held=services.guard is not None,
    )
    room.recorder = recorder
    await services.recordings.started(room.id, recorder.id, recorder.path.name)
    for publisher in room.publishers.values():
        publisher.ask_keyframe()
    await room.announce({"type": "recording", "state": "on"})


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
