"""Email: alerts on failures and the business owner's daily report.

    alert(subject, error=None, context=None, log_tail=None, throttle_minutes=None) -> bool
        Mail the exception, its traceback, the context and a log tail to the alert recipients.
        Secrets are scrubbed; the same error is mailed at most once per throttle_minutes (the
        caller's alerts.throttle_minutes, or the API's setting; 60 by default), shared by every
        process on the machine, and the next mail says how many were held back. Never raises: a
        mail failure is logged. Returns True if a mail went out. Reads no params.yaml.

    send_report(report) -> bool
        Mail a dailyrec.ops.report.Report (HTML + plain text + inline chart) to the report recipients.

Every mail is scrubbed on its way out, the copy kept in the outbox too (scrub_message): the
values of secret-named environment variables, however written (repr, JSON, %-encoded, HTML, a
Basic header's base64), and credentials by their form (URL passwords, Authorization and Cookie
headers, credential query parameters, webhook URLs, Azure keys and SAS, private key blocks).

SMTP settings come from the environment (never from a committed file); without DAILYREC_SMTP_HOST
mail is off and alerts are only logged. Mail that cannot be sent (the server is down) is kept in
the outbox (<state dir>/outbox) and sent, marked "[delayed]", after the next mail that goes out.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import fcntl
import logging
import os
import re
import smtplib
import socket
import ssl
import threading
import time
import traceback
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Mapping

from dailyrec.core import env
from dailyrec.core.errors import ConfigError
from dailyrec.ops.throttle import Throttle, fingerprint
from dailyrec.ops.scrub import MASK, scrub, scrub_message, secret_named, secret_values

log = logging.getLogger("dailyrec.ops.notify")

# Environment variables.
SMTP_HOST_ENV = "DAILYREC_SMTP_HOST"
SMTP_PORT_ENV = "DAILYREC_SMTP_PORT"
SMTP_TLS_ENV = "DAILYREC_SMTP_TLS"  # none | starttls | ssl
SMTP_USER_ENV = "DAILYREC_SMTP_USER"
SMTP_PASSWORD_ENV = "DAILYREC_SMTP_PASSWORD"
SMTP_FROM_ENV = "DAILYREC_SMTP_FROM"
SMTP_TIMEOUT_ENV = "DAILYREC_SMTP_TIMEOUT"
ALERT_TO_ENV = "DAILYREC_ALERT_TO"  # comma-separated addresses
REPORT_TO_ENV = "DAILYREC_REPORT_TO"  # comma-separated addresses
STATE_DIR_ENV = env.STATE_DIR  # where the alert throttle keeps its state

TLS_MODES = {"none": 25, "starttls": 587, "ssl": 465}
DEFAULT_THROTTLE_MINUTES = 60.0
SUBJECT_PREFIX = "[dailyrec]"


# --------------------------------------------------------------------------- settings and sending

@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    tls: str
    user: str | None
    password: str | None
    sender: str
    alert_to: tuple[str, ...]
    report_to: tuple[str, ...]
    timeout: float
    # Where the throttle and the outbox live for these settings: read with them, so an alert
    # sent later from a queue goes where it was raised (tests/test_notify.py: a mail queued by
    # one test never lands in the next one's mailbox).
    state: Path = field(default_factory=env.state_dir)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "SmtpSettings | None":
        """The SMTP settings, or None when mail is off (no host). Bad values raise ConfigError."""
        environ = os.environ if environ is None else environ
        host = environ.get(SMTP_HOST_ENV, "").strip()
        if not host:
            return None
        tls = environ.get(SMTP_TLS_ENV, "starttls").strip().lower()
        if tls not in TLS_MODES:
            raise ConfigError(f"{SMTP_TLS_ENV}={tls!r}: expected one of {sorted(TLS_MODES)}")
        port_raw = environ.get(SMTP_PORT_ENV, "").strip() or str(TLS_MODES[tls])
        timeout_raw = environ.get(SMTP_TIMEOUT_ENV, "").strip() or "10"
        try:
            port, timeout = int(port_raw), float(timeout_raw)
        except ValueError:
            raise ConfigError(f"{SMTP_PORT_ENV}={port_raw!r} / {SMTP_TIMEOUT_ENV}="
                                f"{timeout_raw!r}: expected numbers") from None
        return cls(
            host=host, port=port, tls=tls,
            user=environ.get(SMTP_USER_ENV) or None,
            password=environ.get(SMTP_PASSWORD_ENV) or None,
            sender=environ.get(SMTP_FROM_ENV) or f"dailyrec@{socket.getfqdn()}",
            alert_to=_addresses(environ.get(ALERT_TO_ENV, "")),
            report_to=_addresses(environ.get(REPORT_TO_ENV, "")),
            timeout=timeout,
            state=Path(environ[STATE_DIR_ENV]) if environ.get(STATE_DIR_ENV) else env.state_dir(),
        )


def _addresses(raw: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in raw.replace(";", ",").split(",") if a.strip())


def deliver(msg: EmailMessage, settings: SmtpSettings, recipients: tuple[str, ...]) -> bool:
    """Scrub and send one message. Never raises: a failure is logged (scrubbed), the message is
    kept in the outbox for a later delivery, and False is returned. After a success, the outbox
    is sent."""
    scrub_message(msg)
    msg["From"] = settings.sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = email.utils.make_msgid(domain="dailyrec")
    if not _send(msg, settings, recipients):
        _keep(msg, settings.state)
        return False
    flush_outbox(settings)
    return True


def _send(msg: EmailMessage, settings: SmtpSettings, recipients: tuple[str, ...]) -> bool:
    try:
        if settings.tls == "ssl":
            smtp = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
        with smtp:
            if settings.tls == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if settings.user:
                smtp.login(settings.user, settings.password or "")
            smtp.send_message(msg, to_addrs=list(recipients))
        return True
    except Exception as err:  # noqa: BLE001 - mail must never break the caller
        log.error("could not send mail %r via %s:%s (%s): %s", msg["Subject"], settings.host,
                  settings.port, settings.tls, scrub(f"{type(err).__name__}: {err}"))
        return False


# --------------------------------------------------------------------------- the outbox

# Mail that could not be sent waits here (already scrubbed) and goes out, marked delayed, after
# the next mail that does: an SMTP outage loses no alert and no report. Bounded: after a long
# outage the oldest go first.
OUTBOX_LIMIT = 200
DELAYED_PREFIX = "[delayed] "


def outbox_dir(state: Path | None = None) -> Path:
    return (state or state_dir()) / "outbox"


def _keep(msg: EmailMessage, state: Path) -> None:
    try:
        box = outbox_dir(state)
        box.mkdir(parents=True, exist_ok=True)
        target = box / f"{time.time_ns():020d}-{os.getpid()}.eml"
        partial = box / f".{target.name}.tmp"
        partial.write_bytes(bytes(msg))
        partial.chmod(0o600)
        os.replace(partial, target)
        kept = sorted(box.glob("*.eml"))
        for old in kept[:-OUTBOX_LIMIT]:
            old.unlink(missing_ok=True)
            log.warning("outbox full (%d mails): dropped the oldest, %s", OUTBOX_LIMIT, old.name)
        log.warning("mail kept in %s; it is sent after the next mail that goes out", box)
    except OSError:
        log.exception("could not keep the unsent mail %r", msg["Subject"])


def flush_outbox(settings: SmtpSettings | None = None) -> int:
    """Send the kept mails, oldest first, to the recipients they were addressed to, with
    "[delayed]" before their subject; stops at the first failure. One process at a time (an
    flock). Returns how many were sent."""
    settings = settings or SmtpSettings.from_env()
    if settings is None or not outbox_dir(settings.state).is_dir():
        return 0
    box = outbox_dir(settings.state)
    import email.policy

    with (box / ".lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another process is sending them
        sent, secrets = 0, secret_values()
        for path in sorted(box.glob("*.eml")):
            try:
                msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            except FileNotFoundError:
                continue
            recipients = tuple(a for _, a in email.utils.getaddresses(msg.get_all("To", [])))
            scrub_message(msg, secrets)  # kept by an older version, or a secret added since
            subject = str(msg["Subject"] or "")
            if not subject.startswith(DELAYED_PREFIX):
                del msg["Subject"]
                msg["Subject"] = DELAYED_PREFIX + subject
            if not recipients or not _send(msg, settings, recipients):
                break
            path.unlink(missing_ok=True)
            sent += 1
        if sent:
            log.info("sent %d delayed mail(s) from %s", sent, box)
        return sent


def state_dir() -> Path:
    return env.state_dir()


# --------------------------------------------------------------------------- alerts

def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def alert_body(subject: str, error: BaseException | None, context: Mapping[str, Any] | None,
               log_tail: str | None, held: int = 0, held_since: float | None = None,
               minutes: float = DEFAULT_THROTTLE_MINUTES, now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [subject, ""]
    if held:
        lines += [f"Note: {held} more occurrence(s) of this alert since {_utc(held_since or now)} "
                  f"were not mailed (at most one mail per {minutes:g} minutes).", ""]
    lines += [f"When:  {_utc(now)}", f"Host:  {socket.gethostname()} (pid {os.getpid()})"]
    if error is not None:
        lines.append(f"Error: {type(error).__name__}: {error}")
    if context:
        lines += ["", "Context"] + [f"  {k}: {MASK if secret_named(str(k)) else v}"
                                    for k, v in context.items()]
    if error is not None and error.__traceback__ is not None:
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        lines += ["", trace.rstrip()]
    if log_tail:
        tail = log_tail.rstrip("\n").splitlines()
        lines += ["", f"Last {len(tail)} lines of output", *tail]
    return "\n".join(lines) + "\n"


def alert(subject: str, error: BaseException | None = None, context: dict | None = None,
          log_tail: str | None = None, throttle_minutes: float | None = None,
          smtp: "SmtpSettings | None | str" = "from the environment") -> bool:
    """Mail an alert (throttled, secrets scrubbed). Never raises; True if a mail went out.
    smtp: the settings to mail with (alert_later reads them when the alert is raised)."""
    try:
        if smtp == "from the environment":
            smtp = SmtpSettings.from_env()
        return _alert(subject, error, context, log_tail,
                      DEFAULT_THROTTLE_MINUTES if throttle_minutes is None else throttle_minutes,
                      smtp)
    except Exception:  # noqa: BLE001 - an alert must never hide the error it reports
        log.exception("alert %r could not be prepared", subject)
        return False


class AlertQueue:
    """Alerts sent off the caller's thread, from a bounded queue: a request never waits on the
    throttle's state file or on SMTP. When the queue is full (SMTP hanging through a storm) the
    alert is dropped and counted; the throttle counts held-back mails once sending resumes."""

    def __init__(self, size: int = 100):
        import queue

        self.queue: "queue.Queue" = queue.Queue(maxsize=size)
        self.dropped = 0
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def put(self, subject: str, **kwargs) -> bool:
        """Queue an alert; False when the queue is full (it is dropped, and counted)."""
        import queue

        self._start()
        try:
            self.queue.put_nowait((subject, kwargs))
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def _start(self) -> None:
        with self._lock:  # one sender per process (the API server forks its workers)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="alert-sender",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            subject, kwargs = self.queue.get()
            try:
                alert(subject, **kwargs)
            finally:
                self.queue.task_done()

    def join(self) -> None:
        """Wait until every queued alert has been handled (tests, shutdown)."""
        self.queue.join()


_queue = AlertQueue()


def alert_later(subject: str, error: BaseException | None = None, context: dict | None = None,
                log_tail: str | None = None, throttle_minutes: float | None = None) -> bool:
    """alert(), from a background thread; returns at once (False if the queue was full). Where
    it goes (SMTP, recipients, the throttle's and the outbox's folder) is read now, not when the
    thread sends it."""
    try:
        smtp = SmtpSettings.from_env()
    except ConfigError:
        log.exception("alert %r not queued: the SMTP settings are not valid", scrub(subject))
        return False
    return _queue.put(subject, error=error, context=context, log_tail=log_tail,
                      throttle_minutes=throttle_minutes, smtp=smtp)


def wait_for_alerts() -> None:
    _queue.join()


def _alert(subject: str, error: BaseException | None, context: dict | None,
           log_tail: str | None, minutes: float, settings: "SmtpSettings | None") -> bool:
    if settings is None or not settings.alert_to:
        log.warning("alert not mailed (%s or %s not set): %s", SMTP_HOST_ENV, ALERT_TO_ENV,
                    scrub(subject))
        return False
    throttle = Throttle(settings.state / "alerts.sqlite", minutes)
    key = fingerprint(subject, error)
    send, held, since = throttle.admit(key)
    if not send:
        log.info("alert throttled (%d held back): %s", held, scrub(subject))
        return False
    body = alert_body(subject, error, context, log_tail, held, since, minutes)
    msg = EmailMessage()
    # One line: a \r or \n in a subject would make the header invalid and the alert be dropped.
    msg["Subject"] = re.sub(r"[\r\n]+", " ", f"{SUBJECT_PREFIX} ALERT: {subject}")
    msg.set_content(body)
    return deliver(msg, settings, settings.alert_to)  # scrubbed; kept in the outbox if it fails


# --------------------------------------------------------------------------- the daily report

def report_message(report) -> EmailMessage:
    """multipart/alternative: plain text, and HTML with the chart as an inline (cid:) PNG."""
    msg = EmailMessage()
    msg["Subject"] = f"{SUBJECT_PREFIX} {report.subject}"
    msg.set_content(report.text)
    msg.add_alternative(report.html(image_src=f"cid:{report.chart_cid}"), subtype="html")
    if report.chart_png:
        msg.get_payload()[1].add_related(report.chart_png, maintype="image", subtype="png",
                                         cid=f"<{report.chart_cid}>",
                                         filename=f"{report.chart_cid.split('@')[0]}.png")
    return msg


def send_report(report) -> bool:
    """Mail the daily report to the report recipients. Never raises; True if it went out."""
    try:
        settings = SmtpSettings.from_env()
        if settings is None or not settings.report_to:
            log.warning("daily report not mailed (%s or %s not set)", SMTP_HOST_ENV, REPORT_TO_ENV)
            return False
        return deliver(report_message(report), settings, settings.report_to)
    except Exception:  # noqa: BLE001
        log.exception("daily report could not be mailed")
        return False
