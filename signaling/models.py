"""The serving processes, as the database knows them: who lives, and how they fan out.

Each `televisit serve` process keeps a row here and writes its heartbeat every few seconds. The
others take a process whose heartbeat is older than `TELEVISIT_LIVENESS_SECONDS` for gone (its
patients start their grace period); a process that was only stalled finds its row again and
takes its patients back (signaling.liveness).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class ServerProcess(Base):
    __tablename__ = "server_processes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # "memory" (no Redis: this process alone), or "redis:" and a digest of where Redis is.
    fanout: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
