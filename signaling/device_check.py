"""The device check over HTTP: the patient's page offers, a short-lived relay connection answers.

`POST /api/v1/visits/{token}/connection-test` lets the page tell whether media reaches the relay
directly or only through TURN (the page then reports its verdict on its socket). The answer comes
from this process's relay (signaling.media), at most 50 probes at once and 5 per link.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, StringConstraints

from app.deps import SessionDep, read_only
from app.errors import ServiceBusy, ValidationFailed
from app.ratelimit import Policy
from app.validation import NulFree
from scheduling import visits
from scheduling.access import Verification, link_of, rate_limits
from signaling.errors import SignalingError

router = APIRouter(tags=["visits"])

# Per visit link, whatever the address (docs/reliability.md, "Abuse"): a device check holds one
# of the relay's 50 probe slots for 20 s, so one link holds at most 5.
CONNECTION_TESTS = Policy("visit-connection-test", "5/minute;30/hour")


class Sdp(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sdp: Annotated[str, StringConstraints(min_length=1, max_length=64 * 1024), NulFree]


@router.post("/visits/{token}/connection-test", response_model=Sdp)
@read_only
async def connection_test(
    request: Request,
    token: str,
    body: Sdp,
    session: SessionDep,
    verification: Verification = None,
) -> Sdp:
    """The device check: a short-lived peer connection answers, so the page can tell whether
    media reaches the relay directly or only through TURN."""
    await link_of(request, session, token, verification)
    await rate_limits(request).enforce(CONNECTION_TESTS, visits.token_hash(token))
    relay = request.app.state.signaling.media
    if relay is None:
        raise ServiceBusy("No media relay runs here.")
    try:
        answer = await relay.connection_test(body.sdp)
    except SignalingError as exc:
        if exc.code == "busy":
            raise ServiceBusy(exc.message, headers={"Retry-After": "5"}) from None
        raise ValidationFailed(exc.message, code=exc.code) from None
    return Sdp(sdp=answer)
