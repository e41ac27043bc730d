"""A visit's chat over HTTP, for the appointment's clinician and admins (schedulers never).

Every read is audited (`chat.list`, with the ids of the messages it returned); the response,
like every API response, carries `Cache-Control: no-store`.
"""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.deps import AuditDep, CurrentUser, SessionDep
from scheduling import chat
from scheduling.access import clinical_access

router = APIRouter(tags=["chat"])


class ChatSender(BaseModel):
    role: str
    name: str
    # The sender's participant key: "patient", "clinician", or "<role>:<id>" for a guest.
    participant: str


class ChatMessageOut(BaseModel):
    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    id: uuid.UUID
    # `from` in JSON, as in the socket's `chat` message (a Python keyword).
    sender: ChatSender = Field(alias="from")
    text: str
    sent_at: dt.datetime


class ChatList(BaseModel):
    items: list[ChatMessageOut]


@router.get("/appointments/{appointment_id}/chat", response_model=ChatList)
async def list_chat(
    appointment_id: uuid.UUID, session: SessionDep, user: CurrentUser, audit: AuditDep
) -> ChatList:
    """The visit's chat, oldest first."""
    event = audit.expect("chat.list", "appointment", appointment_id)
    appointment = await clinical_access(session, user, appointment_id)
    found = await chat.messages_of(session, appointment.id)
    audit.listed(event, [message.id for message in found])
    return ChatList(
        items=[
            ChatMessageOut(
                id=message.id,
                sender=ChatSender(
                    role=chat.sender_role(message.sender),
                    name=message.sender_name,
                    participant=message.sender,
                ),
                text=message.text,
                sent_at=message.sent_at,
            )
            for message in found
        ]
    )
