"""The calls this process hosts: one owner each.

A call hosted here has one owner: a task with a bounded inbox. The owner holds the call's
subscription to `media:{call}` and is the only code that drives the relay (`MediaPlane`) for that
call or changes whether the call is hosted here. Everything that would do either posts to the
owner's inbox instead, and the owner applies what it receives one at a time, in arrival order:

- `open` (`Hosting.host`: an admission, a takeover, a test): open the relay's room if it has
  none, subscribe the call's channel; nothing when it is hosted already. Each open is a new
  *generation* of hosting, which its caller gets back.
- `close` (`Hosting.unhost`: the call ended, was handed on, or its admission was undone): leave
  the channel, close the room. A close may name the generation it means to end (the
  reconciliation's, an undone admission's); a close of a generation that is gone changes
  nothing, so a late close never takes down the host that came after it.
- what arrives on the call's channel, from any process: negotiation (`offer`, `answer`,
  `candidate`, `leave`, `video`), `consent`, `record`, `close`; only while the subscription that
  received it is the current one (what a closed subscription still delivers is dropped, as the
  broker drops it).
- `takeover` (`Hosting.route`, when a negotiation step reached no process): claim the call in the
  database, open it here, send the other participant to negotiate again, apply the step.

Because no other code touches a call's hosting state, "check, await, store" races cannot
happen: fifty `host` calls at once are fifty `open`s in one inbox, the first opens and the others
find it open; a close and a reopen are applied in the order they were posted; a consent change
and a recording request are applied in the order they arrived, each to its end before the next
begins. A step that fails (the relay raises) is answered to its caller and leaves the call as it
was before that step: an `open` that fails after the relay opened the room closes the room and
leaves no subscription. An owner that hosts nothing and has nothing to do retires; the next
request for its call starts a new one.

The inbox holds at most `INBOX_LIMIT` requests. Past that, a request is refused with
`SignalingError("media_busy")` (its caller answers it like any refusal; a step from the channel
is answered to its participant, whose client negotiates again), except what must not be lost:
a consent change is never refused: while the inbox is full it replaces a consent change still
waiting there (the newer reading, by `seq`, at the later place; both callers are answered when it
is applied); `close` and `leave` are never refused (their callers each await one).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from app.db import Database
from scheduling import calls, guest_calls
from scheduling.models import Appointment, Status
from signaling import messages
from signaling.broker import Broker, BrokerUnavailable, Subscription
from signaling.errors import SignalingError
from signaling.liveness import Liveness
from signaling.media import Consent, GuestConsent, MediaPlane
from signaling.participants import CLINICIAN, PATIENT, Participants

logger = logging.getLogger("televisit.signaling")

INBOX_LIMIT = 256
# Channel requests that are never refused for a full inbox (consent changes are coalesced).
NEVER_REFUSED = frozenset({"close", "leave"})


@dataclass(eq=False)
class _Request:
    """One request in an owner's inbox, and who waits for its outcome."""

    kind: str  # "open", "close", "media", "takeover"
    appointment: Appointment | None = None
    generation: int | None = None
    message: dict[str, Any] = field(default_factory=dict)
    waiting: list[asyncio.Future[Any]] = field(default_factory=list)

    @property
    def op(self) -> str | None:
        return str(self.message.get("op")) if self.kind == "media" else None

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        for future in self.waiting:
            if future.done():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


class CallOwner:
    """The one task that hosts a call in this process (see the module's docstring)."""

    def __init__(self, hosting: Hosting, call_id: uuid.UUID) -> None:
        self.hosting, self.call_id = hosting, call_id
        self._inbox: deque[_Request] = deque()
        self._wake = asyncio.Event()
        # The call's channel while hosted here; None otherwise. Only `_run` changes these.
        self.subscription: Subscription | None = None
        self.generation = 0
        self.task = asyncio.create_task(self._run(), name="call-owner")

    @property
    def hosting_now(self) -> bool:
        return self.subscription is not None

    # Posting (any task) --------------------------------------------------------------------

    def post(self, request: _Request) -> asyncio.Future[Any]:
        """Queue a request; its future has the outcome. Synchronous: no await between the
        look at the inbox and the append, so requests are queued in the order posted."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        request.waiting.append(future)
        if len(self._inbox) >= INBOX_LIMIT:
            if request.op == "consent":
                self._coalesce(request)
            elif request.kind != "close" and request.op not in NEVER_REFUSED:
                self.hosting.refused += 1
                logger.warning("call owner's inbox full: request refused")
                raise SignalingError("media_busy", "The call is busy; try again.")
        self._inbox.append(request)
        self._wake.set()
        return future

    def _coalesce(self, request: _Request) -> None:
        """A full inbox: the consent change waiting there, if any, gives way to this one (the
        newer of the two readings), which goes at the end."""
        for pending in reversed(self._inbox):
            if pending.op == "consent":
                self._inbox.remove(pending)
                if int(pending.message.get("seq") or 0) > int(request.message.get("seq") or 0):
                    request.message = pending.message
                request.waiting[:0] = pending.waiting
                self.hosting.coalesced += 1
                return

    # The owner's task ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                if not self._inbox:
                    if self.subscription is None:
                        return  # nothing hosted, nothing to do: retire (finally)
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                request = self._inbox.popleft()
                try:
                    result = await self._apply(request)
                except asyncio.CancelledError:
                    request.settle(
                        error=SignalingError("media_unavailable", "The relay is stopping.")
                    )
                    raise
                except Exception as exc:
                    request.settle(error=exc)
                else:
                    request.settle(result)
        finally:
            # Retiring: no await from the last look at the inbox to here, so nothing can be
            # posted to this owner after it stopped looking.
            self.hosting._retire(self)
            for request in self._inbox:
                request.settle(error=SignalingError("media_unavailable", "The relay stopped."))
            self._inbox.clear()

    async def _apply(self, request: _Request) -> Any:
        if request.kind == "open":
            assert request.appointment is not None
            return await self._open(request.appointment)
        if request.kind == "close":
            await self._close(request.generation)
            return None
        if request.kind == "takeover":
            await self._take_over(request.message)
            return None
        # From the call's channel: only for the subscription that received it.
        if self.subscription is None or request.generation != self.generation:
            return None
        if request.op == "close":
            await self._close(None)
            return None
        await self._media(request.message)
        return None

    async def _open(self, appointment: Appointment) -> int:
        if self.subscription is not None:
            return self.generation
        media, call_id = self.hosting.media, self.call_id
        opened = False
        generation = next(self.hosting.generations)
        try:
            if media is not None and not media.has_call(call_id):
                standing = await self.hosting.standing(call_id)
                opened = True  # a relay failing half-way may have made the room: close it
                await media.open_call(
                    call_id, consent=standing, ice_servers=self.hosting.ice_servers(appointment)
                )
            # The relay's work (a teardown, a recording) takes milliseconds: across processes
            # the channel's messages wait on a task of the channel's own, not on the reader.
            subscription = await self.hosting.broker.subscribe(
                f"media:{call_id}",
                lambda message: self._arrived(message, generation),
                may_wait=True,
            )
        except BaseException:
            if opened and media is not None and media.has_call(call_id):
                with contextlib.suppress(Exception):
                    await media.close_call(call_id)
            raise
        self.subscription, self.generation = subscription, generation
        return generation

    async def _close(self, generation: int | None) -> None:
        if generation is not None and generation != self.generation:
            return  # that hosting is gone already; a later one stands
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.cancel()
        media = self.hosting.media
        if media is not None and media.has_call(self.call_id):
            await media.close_call(self.call_id)

    async def _arrived(self, message: dict[str, Any], generation: int) -> None:
        """The call's channel: hand the message to the owner and wait for it to be applied
        (across processes this runs on the channel's own task, which keeps the channel's
        order and its bound; in one process the publisher waits, as before)."""
        request = _Request("media", generation=generation, message=message)
        try:
            await self.post(request)
        except SignalingError as exc:
            await self.hosting.participants.to_participant(
                self.call_id, str(message.get("role")), messages.error(exc.code, exc.message)
            )

    async def _take_over(self, request: dict[str, Any]) -> None:
        """No process received a negotiation step: host the call here, if it is still under
        way and its host is gone."""
        hosting, call_id = self.hosting, self.call_id
        appointment = await calls.get(hosting.db, call_id)
        if appointment is None or appointment.status != Status.IN_CALL:
            raise SignalingError("not_in_call", "This call is not under way.")
        host = appointment.call_host
        if host is not None and host != hosting.process_id and await hosting.liveness.alive(host):
            raise SignalingError("media_unavailable", "The call's relay did not answer.")
        claimed = await calls.claim_host(
            hosting.db, call_id, previous=host, process=hosting.process_id
        )
        if claimed is None:
            raise SignalingError("media_unavailable", "The call moved; try again.")
        await self._open(claimed)
        # The others' media went with the old host: they negotiate anew (the patient and the
        # guests on `admitted`, the console on `call`).
        role = str(request.get("role"))
        guests = await guest_calls.in_call(hosting.db, call_id)
        servers = hosting.ice_servers(claimed)
        for other in (PATIENT, CLINICIAN, *(guest_calls.key_of(guest) for guest in guests)):
            if other == role:
                continue
            again = (
                messages.call(call_id, servers)
                if other == CLINICIAN
                else messages.admitted(servers)
            )
            await hosting.participants.to_participant(call_id, other, again)
        await self._media(request)

    async def _media(self, request: dict[str, Any]) -> None:
        op, role = request.get("op"), str(request.get("role"))
        call_id, media = self.call_id, self.hosting.media
        tell = self.hosting.participants.to_participant
        if media is None:
            refusal = messages.error("media_unavailable", "No media relay runs here.")
            await tell(call_id, role, refusal)
            return
        try:
            if op == "offer":
                await media.offer(call_id, role, str(request["sdp"]))
            elif op == "answer":
                await media.answer(call_id, role, str(request["sdp"]))
            elif op == "candidate":
                await media.candidate(call_id, role, request.get("candidate"))
            elif op == "leave":
                await media.leave(call_id, role)
            elif op == "consent" and role != PATIENT:
                # A guest's decision (role: their participant key), theirs alone.
                await media.guest_consent(
                    call_id,
                    role,
                    GuestConsent(
                        bool(request.get("video_visit")),
                        bool(request.get("recording")),
                        int(request.get("seq") or 0),
                    ),
                )
            elif op == "consent":
                await media.consent(
                    call_id,
                    Consent(
                        bool(request.get("video_visit")),
                        bool(request.get("recording")),
                        int(request.get("seq") or 0),
                    ),
                )
            elif op == "record":
                await media.record(call_id, str(request.get("action")))
            elif op == "video":
                await media.video(call_id, role, enabled=bool(request.get("enabled")))
            elif op == "screen":
                await media.screen(call_id, role, enabled=bool(request.get("enabled")))
        except SignalingError as exc:
            await tell(call_id, role, messages.error(exc.code, exc.message))
        except Exception as exc:
            logger.exception("relay request failed", extra={"error_type": type(exc).__name__})
            await tell(call_id, role, messages.error("media_error", "The relay could not do that."))


class Hosting:
    """The owners of the calls hosted in this process, and the way to them."""

    def __init__(
        self,
        *,
        db: Database,
        broker: Broker,
        process_id: str,
        liveness: Liveness,
        participants: Participants,
        standing: Callable[[uuid.UUID], Awaitable[Consent]],
        ice_servers: Callable[[Appointment], list[dict[str, Any]]],
    ) -> None:
        self.db, self.broker, self.process_id = db, broker, process_id
        self.liveness, self.participants = liveness, participants
        self.standing, self.ice_servers = standing, ice_servers
        self.media: MediaPlane | None = None
        # Changed only synchronously (no await between a look and a change).
        self._owners: dict[uuid.UUID, CallOwner] = {}
        # Unique in this process, across owners: a close naming an old hosting of a call never
        # matches a later one, even by an owner that came after.
        self.generations = itertools.count(1)
        self.refused = 0
        self.coalesced = 0

    def _owner(self, call_id: uuid.UUID) -> CallOwner:
        owner = self._owners.get(call_id)
        if owner is None:
            owner = self._owners[call_id] = CallOwner(self, call_id)
        return owner

    def _retire(self, owner: CallOwner) -> None:
        if self._owners.get(owner.call_id) is owner:
            del self._owners[owner.call_id]

    async def host(self, appointment: Appointment) -> int:
        """Host the call here (once, however many ask at once); its hosting's generation."""
        result: int = await self._owner(appointment.id).post(
            _Request("open", appointment=appointment)
        )
        return result

    async def unhost(self, call_id: uuid.UUID, generation: int | None = None) -> None:
        """Stop hosting the call here (only that generation of it, if one is named)."""
        owner = self._owners.get(call_id)
        if owner is None:
            media = self.media
            if media is None or not media.has_call(call_id):
                return
            owner = self._owner(call_id)  # a room without an owner: its owner closes it
        await owner.post(_Request("close", generation=generation))

    def hosted(self) -> dict[uuid.UUID, int]:
        """The calls hosted here now, each with its generation (opening ones left out)."""
        return {
            call_id: owner.generation
            for call_id, owner in self._owners.items()
            if owner.hosting_now
        }

    async def route(
        self, call_id: uuid.UUID, role: str, op: str, payload: dict[str, Any], *, reroute: bool
    ) -> None:
        """Deliver a request to the call's owner, wherever it runs; with `reroute`, take the
        call over when no process hosts it any more (it died, or never opened it)."""
        request = {"op": op, "role": role, **payload}
        try:
            if await self.broker.publish(f"media:{call_id}", request):
                return
        except BrokerUnavailable:
            if not reroute:
                return
            raise SignalingError(
                "media_unavailable", "The call's relay cannot be reached just now; try again."
            ) from None
        if not reroute:
            return
        await self._owner(call_id).post(_Request("takeover", message=request))

    async def stop(self) -> None:
        owners = list(self._owners.values())
        for owner in owners:
            owner.task.cancel()
        for owner in owners:
            with contextlib.suppress(asyncio.CancelledError):
                await owner.task
