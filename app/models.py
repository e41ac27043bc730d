"""Every table's model, imported in one place for Alembic's metadata."""

from app.audit import AuditEvent
from app.auth.models import PasswordReset, RefreshToken, StaffSession, User
from app.db import Base
from scheduling.chat import ChatMessage
from scheduling.models import (
    Appointment,
    Availability,
    ConsentChain,
    ConsentRecord,
    ConsentText,
    Recording,
    VisitGuest,
)
from scheduling.notifications.models import Notification
from signaling.models import ServerProcess

__all__ = [
    "Appointment",
    "AuditEvent",
    "Availability",
    "Base",
    "ChatMessage",
    "ConsentChain",
    "ConsentRecord",
    "ConsentText",
    "Notification",
    "PasswordReset",
    "Recording",
    "RefreshToken",
    "ServerProcess",
    "StaffSession",
    "User",
    "VisitGuest",
]
