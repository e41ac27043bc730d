"""The owner of a room: one task that performs every change to the room's state, in order.

Whatever would change a room (a participant's offer, answer, candidate, departure or video
switch, the clinician's record request, a consent decision, a consent reading, the timers'
bandwidth, stall and stats rounds, the call's end) is a `Step` posted to the room's inbox;
the owner takes them one at a time and awaits each to its end before the next, so no two
steps ever interleave at an await, and each sees the state the previous one left.

The inbox is bounded, with one policy for everything a participant can send: at most
WORK_LIMIT steps wait per participant; more are refused with `media_busy` (a client flooding
candidates), except a departure, which replaces that participant's waiting negotiation (moot
once they leave). The relay's own recurring steps carry a `key`: at most one of each waits,
and a newer one takes the waiting one's place (a reading replaces an older reading, a tick the
tick not yet run). The call's end replaces everything that waits; after it the owner stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from signaling.media import SignalingError
from signaling.media import error as error_message

logger = logging.getLogger("televisit.media")

# Steps waiting for one participant (offers, answers, candidates, video and record requests);
# more are refused with `media_busy`, except a `leave`, which replaces their negotiation.
WORK_LIMIT = 256
# What the relay's own steps without a participant (consent announcements) count against.
RELAY = "relay"

Tell = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(eq=False, slots=True)
class Step:
    """One change to a room, run by its owner."""

    run: Callable[[], Awaitable[None]]
    # The participant it comes from: counted against their bound, told if it fails.
    role: str | None = None
    # Negotiation (offer, answer, candidate) is what that participant's departure makes moot.
    negotiation: bool = False
    # The relay's recurring steps: one of each key waits at most, the newest in its place.
    key: str | None = None
    # What the participant hears when the step fails unexpectedly: (code, message).
    failure: tuple[str, str] = ("media_error", "The relay could not do that.")
    # Set when whoever posted it waits for it: its outcome goes there, not to the participant.
    done: asyncio.Future[None] | None = None


NEGOTIATION_FAILED = (
    "negotiation_failed",
    "The relay could not use that description; offer again.",
)


class Owner:
    """A room's inbox and the one task that empties it."""

    def __init__(self, name: str, *, tell: Tell) -> None:
        self._tell = tell
        self._inbox: deque[Step] = deque()
        self._waiting: Counter[str] = Counter()  # per participant (or RELAY)
        self._keyed: dict[str, Step] = {}
        self._wake = asyncio.Event()
        self.closing = False
        self.task = asyncio.create_task(self._run(), name=name)

    def waiting(self, role: str | None = None) -> int:
        """How many steps wait (for one participant, or in all)."""
        return len(self._inbox) if role is None else self._waiting[role]

    def post(self, step: Step) -> bool:
        """Queue a step; False when refused (the owner is ending, or the bound is reached)."""
        if self.closing:
            return False
        if step.key is not None:
            waiting = self._keyed.get(step.key)
            if waiting is not None:
                waiting.run = step.run  # the newer one, where the older one waited
                return True
            self._keyed[step.key] = step
        else:
            whose = step.role or RELAY
            if self._waiting[whose] >= WORK_LIMIT:
                return False
            self._waiting[whose] += 1
        self._inbox.append(step)
        self._wake.set()
        return True

    def submit(self, step: Step) -> asyncio.Future[None] | None:
        """Post a step that will be waited for: its outcome, or None if it was refused."""
        step.done = asyncio.get_running_loop().create_future()
        return step.done if self.post(step) else None

    async def run(self, step: Step) -> None:
        """Post a step and wait until the owner has run it; its failure is raised here."""
        done = self.submit(step)
        if done is None:
            if self.closing:
                raise SignalingError("not_in_call", "This call is not under way.")
            raise SignalingError("media_busy", "Too many media messages at once; slow down.")
        await done

    def leave(self, step: Step) -> None:
        """A participant's departure: their waiting negotiation is dropped; never refused."""
        if self.closing:
            return
        assert step.role is not None
        kept = [s for s in self._inbox if not (s.negotiation and s.role == step.role)]
        self._waiting[step.role] -= len(self._inbox) - len(kept)
        self._inbox = deque(kept)
        self._waiting[step.role] += 1
        self._inbox.append(step)
        self._wake.set()

    def close(self, step: Step) -> None:
        """The last step: everything that waits is dropped, nothing is taken after it."""
        if self.closing:
            return
        self.closing = True
        for dropped in self._inbox:
            if dropped.done is not None and not dropped.done.done():
                dropped.done.set_exception(
                    SignalingError("not_in_call", "This call is not under way.")
                )
        self._inbox.clear()
        self._waiting.clear()
        self._keyed.clear()
        self._inbox.append(step)
        self._wake.set()

    async def closed(self) -> None:
        """Until the owner has run its last step (at once, if asked from that step itself)."""
        if asyncio.current_task() is not self.task:
            await asyncio.shield(self.task)

    async def _run(self) -> None:
        while True:
            if not self._inbox:
                if self.closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            step = self._inbox.popleft()
            if step.key is not None:
                self._keyed.pop(step.key, None)
            else:
                self._waiting[step.role or RELAY] -= 1
            await self._perform(step)

    async def _perform(self, step: Step) -> None:
        if step.done is not None:
            await self._perform_for(step, step.done)
            return
        try:
            await step.run()
        except asyncio.CancelledError:
            raise
        except SignalingError as exc:
            if step.role is not None:
                await self._quietly(step.role, error_message(exc.code, exc.message))
        except Exception as exc:
            logger.warning(
                "relay step failed", extra={"role": step.role, "error_type": type(exc).__name__}
            )
            if step.role is not None:
                await self._quietly(step.role, error_message(*step.failure))

    async def _perform_for(self, step: Step, done: asyncio.Future[None]) -> None:
        """A step someone waits for: they hear how it went (and tell the participant)."""
        try:
            await step.run()
        except asyncio.CancelledError:
            if not done.done():
                done.cancel()
            raise
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
            return
        if not done.done():
            done.set_result(None)

    async def _quietly(self, role: str, message: dict[str, Any]) -> None:
        """Tell a participant; a failure to tell must not end the owner."""
        try:
            await self._tell(role, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("relay could not tell", extra={"error_type": type(exc).__name__})
