"""A real SMTP server (aiosmtpd) on loopback for the mail tests, and helpers to read what it got.

    with Mailbox(user="alerts", password="...") as box:
        ... send mail to 127.0.0.1:box.port ...
        box.messages  # email.message.EmailMessage objects, in arrival order

With a user/password the server requires AUTH LOGIN/PLAIN (over plain TCP, loopback only), so a
test also proves the client logs in with the password from the environment.
"""

from __future__ import annotations

import email
import email.policy
import threading
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.servers import free_port


class _Collector:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        msg = email.message_from_bytes(envelope.original_content or envelope.content,
                                       policy=email.policy.default)
        with self.lock:
            self.messages.append(msg)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


class Mailbox:
    def __init__(self, port: int | None = None, user: str | None = None,
                 password: str | None = None):
        self.port = port or free_port()
        self.user, self.password = user, password
        self._collector = _Collector()
        kwargs = {}
        if user:
            kwargs = dict(authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=False)
        self._controller = Controller(self._collector, hostname="127.0.0.1", port=self.port,
                                      **kwargs)

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.user
              and auth_data.password.decode() == self.password)
        return AuthResult(success=ok, handled=False)

    def start(self) -> "Mailbox":
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> "Mailbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def messages(self) -> list[EmailMessage]:
        with self._collector.lock:
            return list(self._collector.messages)

    @property
    def envelopes(self) -> list[tuple[str, list[str]]]:
        with self._collector.lock:
            return list(self._collector.envelopes)

    def env(self, alert_to: str = "oncall@example.test",
            report_to: str = "owner@example.test") -> dict[str, str]:
        """The DAILYREC_SMTP_* settings that point the project at this server."""
        env = {"DAILYREC_SMTP_HOST": "127.0.0.1", "DAILYREC_SMTP_PORT": str(self.port),
               "DAILYREC_SMTP_TLS": "none", "DAILYREC_SMTP_FROM": "dailyrec@example.test",
               "DAILYREC_ALERT_TO": alert_to, "DAILYREC_REPORT_TO": report_to,
               "DAILYREC_SMTP_TIMEOUT": "10"}
        if self.user:
            env |= {"DAILYREC_SMTP_USER": self.user, "DAILYREC_SMTP_PASSWORD": self.password}
        return env


def text_of(msg: EmailMessage) -> str:
    """Every header and every decoded text part of a message, for content and secret checks."""
    parts = [f"{k}: {v}" for k, v in msg.items()]
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            parts.append(part.get_content())
    return "\n".join(parts)


def raw_of(msg: EmailMessage) -> str:
    return msg.as_string()
