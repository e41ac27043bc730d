"""The outside world of notifications, on loopback: an SMTP server (aiosmtpd) that keeps what
it receives, an SMS gateway (HTTP), and a server that accepts connections and never answers."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.live import free_port


@dataclass
class Received:
    recipients: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Inbox:
    """aiosmtpd's handler: keeps every message it takes; can refuse or stall on purpose."""

    received: list[Received] = field(default_factory=list)
    # Answer 451 to this many RCPTs of each address (a server that says "not now").
    refusals: dict[str, int] = field(default_factory=dict)
    # Refuse every RCPT for good (550).
    reject: bool = False
    # Seconds to wait after the message arrived before answering 250 (a slow server).
    data_delay: float = 0.0
    # Never answer the end of DATA (the message arrived; its sender cannot know).
    data_hang: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        with self.lock:
            if self.reject:
                return "550 5.1.1 no such mailbox"
            if self.refusals.get(address, 0) > 0:
                self.refusals[address] -= 1
                return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        with self.lock:
            self.received.append(Received(list(envelope.rcpt_tos), bytes(content)))
        if self.data_hang:
            await asyncio.sleep(3600)
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        return "250 OK queued"

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if address in r.recipients]

    def message_ids(self) -> Counter[str]:
        with self.lock:
            return Counter(str(r.message["Message-ID"]) for r in self.received)


class MailServer:
    """A real SMTP server on a free loopback port."""

    def __init__(self, inbox: Inbox | None = None) -> None:
        self.inbox = inbox or Inbox()
        self.port = free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> MailServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


class Silent:
    """Accepts TCP connections (the kernel does) and never says a word: a hung SMTP server."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()


@dataclass
class Sms:
    authorization: str | None
    idempotency_key: str | None
    body: dict[str, Any]


class SmsGateway:
    """The practice's SMS webhook: keeps every POST; answers `statuses` in turn, then 200."""

    def __init__(self) -> None:
        self.received: list[Sms] = []
        self.statuses: list[int] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                status = gateway.statuses.pop(0) if gateway.statuses else 200
                if status == 200:
                    gateway.received.append(
                        Sms(
                            self.headers.get("Authorization"),
                            self.headers.get("Idempotency-Key"),
                            body,
                        )
                    )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/sms"

    def start(self) -> SmsGateway:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def to(self, phone: str) -> list[Sms]:
        return [sms for sms in self.received if sms.body.get("to") == phone]
