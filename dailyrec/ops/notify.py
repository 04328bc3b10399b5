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

import base64
import datetime as dt
import email.utils
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import smtplib
import socket
import sqlite3
import ssl
import threading
import time
import traceback
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

from dailyrec.core import env, privacy
from dailyrec.core.errors import ConfigError

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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "SmtpSettings | None":
        """The SMTP settings, or None when mail is off (no host). Bad values raise ConfigError."""
        env = os.environ if env is None else env
        host = env.get(SMTP_HOST_ENV, "").strip()
        if not host:
            return None
        tls = env.get(SMTP_TLS_ENV, "starttls").strip().lower()
        if tls not in TLS_MODES:
            raise ConfigError(f"{SMTP_TLS_ENV}={tls!r}: expected one of {sorted(TLS_MODES)}")
        port_raw = env.get(SMTP_PORT_ENV, "").strip() or str(TLS_MODES[tls])
        timeout_raw = env.get(SMTP_TIMEOUT_ENV, "").strip() or "10"
        try:
            port, timeout = int(port_raw), float(timeout_raw)
        except ValueError:
            raise ConfigError(f"{SMTP_PORT_ENV}={port_raw!r} / {SMTP_TIMEOUT_ENV}="
                                f"{timeout_raw!r}: expected numbers") from None
        return cls(
            host=host, port=port, tls=tls,
            user=env.get(SMTP_USER_ENV) or None,
            password=env.get(SMTP_PASSWORD_ENV) or None,
            sender=env.get(SMTP_FROM_ENV) or f"dailyrec@{socket.getfqdn()}",
            alert_to=_addresses(env.get(ALERT_TO_ENV, "")),
            report_to=_addresses(env.get(REPORT_TO_ENV, "")),
            timeout=timeout,
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
        _keep(msg)
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


def outbox_dir() -> Path:
    return state_dir() / "outbox"


def _keep(msg: EmailMessage) -> None:
    try:
        box = outbox_dir()
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
    box = outbox_dir()
    settings = settings or SmtpSettings.from_env()
    if settings is None or not box.is_dir():
        return 0
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


# --------------------------------------------------------------------------- scrubbing secrets

# Every mail is scrubbed on its way out (deliver, flush_outbox): the subject and each text part,
# plain and HTML, so the outbox never holds a secret either. Two passes: every secret the process
# knows, however it is written (secret_values, _char_spellings); then credentials anyone could
# have put in a text, recognised by their form (_RULES).
MASK = "[scrubbed]"
MIN_SECRET_LENGTH = 6  # shorter values (TOKEN_TTL=60, "true", "abc") would wreck every mail
# Longer values are left to _RULES (a PEM key): as one pattern each they would cost more to
# match than the mail is worth.
MAX_SECRET_LENGTH = 4096

_SECRET_NAME = re.compile(
    r"(?i)(pass(?:word|wd|phrase)|secret|token|key|salt|auth(?!or(?!iz))|cookie|credential|"
    r"private|session|connection_?string|(?:^|_)(?:pwd|pass|pw|dsn|sas|sig)(?:_|$))")
# Named like a secret but holding a directory, a place, a name or a setting (credentials inside
# such a value, a URL's password say, are still found by _RULES).
_NOT_SECRET_NAME = re.compile(
    r"(?i)^(PWD|OLDPWD|SSH_AUTH_SOCK|DBUS_SESSION_BUS_ADDRESS|XDG_SESSION_\w+)$|"
    r"_(URL|URI|HOST|PORT|ENDPOINT|AUDIENCE|TTL|TIMEOUT|SECONDS|MINUTES|LIMIT|PREFIX|LENGTH|PATH|"
    r"DIR|SOCK|EMAIL|NAME|USER|USERNAME)$|(_|KEY)FILE$")
ALWAYS_SECRET = (privacy.SALT_ENV, "DAILYREC_API_TOKENS")
# Lists of tokens, comma, space or newline separated or JSON (serving/auth.py): each is a secret.
_TOKEN_LIST_NAME = re.compile(r"(?i)(TOKENS|KEYS|SECRETS|PASSWORDS)$")
_USER_NAME_SUFFIXES = ("_USER", "_USERNAME", "_LOGIN", "_CLIENT_ID")
_SECRET_FILE_LIMIT = 64 * 1024  # a *_FILE secret (DAILYREC_API_TOKENS_FILE) is read this far

# Keys whose values are secrets in key=value, key: value and "key": "value" text. A key starts
# where a word does and is bounded: an unbounded [\w.-]* made a long word cost quadratic time.
_KEY_PART = r"[\w.\-]{0,40}"
_SECRET_KEY = (rf"(?<![\w.\-])(?:{_KEY_PART}(?:pass(?:word|wd|phrase)|pwd|secret|token|api[_-]?key|"
               r"access[_-]?key|account[_-]?key|private[_-]?key|credentials?|sessionid|"
               rf"session[_-]?(?:id|key|token)|cookie|salt|signature){_KEY_PART}|sig)(?![\w.\-])")
_UNTIL_QUOTE = r"""(?P<q>["'])?(?P<secret>(?(q)(?:\\.|(?!(?P=q))[^\\\r\n])+|[^\s"',;&)}\]]+))"""
_URL_CHARS = r"""[^\s"'<>?#\\]"""
_RULES = [re.compile(rule) for rule in (
    # Private key blocks, whole or cut off (a log tail), also with escaped newlines.
    r"(?s)-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?P<secret>.*?)"
    r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?P<secret>[A-Za-z0-9+/=:,\-\\\s]+)",
    # Webhook URLs whose path is the secret: Slack, Discord, Teams, and any /webhook(s)/<token>.
    rf"(?i)\bhooks\.slack(?:-gov)?\.com/(?:services|workflows|triggers)/(?P<secret>{_URL_CHARS}+)",
    r"(?i)\bdiscord(?:app)?\.com/api/(?:v\d+/)?webhooks/\d+/(?P<secret>[^\s\"'<>?#/\\]+)",
    rf"(?i)\b(?:outlook\.office(?:365)?\.com|[\w.\-]*webhook\.office\.com)/webhook(?:b2)?/"
    rf"(?P<secret>{_URL_CHARS}+)",
    rf"(?i)://[^\s/\"'<>]+(?:/[^\s/\"'<>?#]+)*?/(?:web)?hooks?/"
    rf"(?P<secret>{_URL_CHARS}*[\w\-~%+=]{{20,}}{_URL_CHARS}*)",
    # Azure connection strings (a SAS runs to the next ';', spaces and '&' included).
    r"(?i)\bSharedAccessSignature\s*=\s*(?P<secret>[^;\"'<>\r\n]+)",
    r"(?i)\b(?:AccountKey|SharedAccessKey)\s*=\s*(?P<secret>[^;\s\"'<>]+)",
    # scheme://user:password@host (a password may hold '@'), scheme://token@host.
    r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s?#@:\"']*:(?P<secret>[^/\s?#]+)@",
    r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://(?P<secret>[^/\s?#:@\"']+)@",
    # Headers, also as a dict's repr or JSON: Authorization (after its scheme), Cookie, Set-Cookie.
    r"(?i)(?<![a-z])(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?"
    r"(?:(?:basic|bearer|token|digest|negotiate|ntlm)\s+)?(?P<secret>[^\s\"',;]+)",
    r"(?i)(?<![\w-])(?:set-)?cookie2?[\"']?\s*:\s*[\"']?(?P<secret>[^\"'\r\n]+)",
    r"(?i)\bbearer\s+(?P<secret>[\w\-.~+/=]{8,})",
    # Query parameters named like a credential (also after &amp; in HTML).
    rf"(?i)(?<=[?&;]){_KEY_PART}(?:token|key|secret|sig|signature|password|passwd|pwd|code|"
    rf"auth(?!or(?!iz))|credential|session|jwt){_KEY_PART}=(?P<secret>[^&#\s\"'<>]+)",
    rf"(?i)(?:{_SECRET_KEY})[\"']?\s*[:=]\s*{_UNTIL_QUOTE}",
)]
# Basic credentials without an Authorization header: base64 that decodes to user:password.
_BASIC = re.compile(r"(?i)\bbasic\s+(?P<secret>[A-Za-z0-9+/]{6,}={0,2})")


def _secret_named(name: str) -> bool:
    return name in ALWAYS_SECRET or bool(_SECRET_NAME.search(name)
                                          and not _NOT_SECRET_NAME.search(name))


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Every secret the process knows, longest first: the values of secret-named environment
    variables (each token of a token list too), what their *_FILE twins' files hold, credentials
    inside any variable's value (a URL's password, a key=value pair, a webhook's token), the
    base64 user:password a Basic auth header would carry, and (for the process's own
    environment) the PII salt kept in the state directory."""
    own = env is None
    env = os.environ if env is None else env
    found: set[str] = set()
    for name, value in env.items():
        if not value:
            continue
        found |= _credentials_in(value)
        if _secret_named(name):
            found |= _items(value, bool(_TOKEN_LIST_NAME.search(name)))
        elif name.upper().endswith("_FILE") and _SECRET_NAME.search(name[:-5]):
            found |= _items(_file_text(value), bool(_TOKEN_LIST_NAME.search(name[:-5])))
    found |= _basic_credentials(env)
    if own:
        found |= _items(_file_text(str(state_dir() / privacy.SALT_FILE)), False)
    return sorted({s for s in found if MIN_SECRET_LENGTH <= len(s) <= MAX_SECRET_LENGTH},
                  key=len, reverse=True)


def _items(value: str, is_list: bool) -> set[str]:
    """A secret value and, split on commas (and whitespace, or a JSON list, for a token list),
    each of its items."""
    value = value.strip()
    items = {value, *value.split(",")}
    if is_list:
        items.update(re.split(r"[\s,]+", value))
        if value.startswith("["):
            try:
                items.update(str(item) for item in json.loads(value))
            except (ValueError, TypeError):
                pass
    return {item.strip() for item in items if item.strip()}


def _file_text(path: str) -> str:
    try:
        with open(path.strip(), "rb") as fh:
            return fh.read(_SECRET_FILE_LIMIT).decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""


def _credentials_in(value: str) -> set[str]:
    """Credentials inside a value, by their form (a password in a URL, a webhook's token...)."""
    found = {m["secret"] for rule in _RULES for m in rule.finditer(value)}
    if "://" in value and "@" in value:  # a whole URL: its password may hold spaces
        try:
            found.add(urlsplit(value.strip()).password or "")
        except ValueError:
            pass
    return found | {unquote(s) for s in found}


def _basic_credentials(env: Mapping[str, str]) -> set[str]:
    """user:password in base64, as a Basic Authorization header carries it: from URLs with
    both, and from FOO_USER beside FOO_PASSWORD (or _PASS, _PWD, _SECRET, _TOKEN, _KEY)."""
    pairs: set[tuple[str, str]] = set()
    for name, value in env.items():
        for url in re.finditer(r"://(?P<user>[^/\s?#@:\"']+):(?P<password>[^/\s?#]+)@", value):
            pairs.add((url["user"], url["password"]))
            pairs.add((unquote(url["user"]), unquote(url["password"])))
        secret_of = re.fullmatch(r"(?i)(.+)_(?:PASSWORD|PASS|PWD|SECRET|TOKEN|KEY)", name)
        if secret_of and value:
            pairs |= {(env[secret_of[1] + suffix], value) for suffix in _USER_NAME_SUFFIXES
                      if env.get(secret_of[1] + suffix)}
    encoded = set()
    for user, password in pairs:
        if len(password) >= MIN_SECRET_LENGTH:
            raw = f"{user}:{password}".encode()
            encoded |= {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return encoded


_HEX_LETTER = re.compile(r"[a-fA-F]")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"}
_ESCAPES = {"\n": "n", "\r": "r", "\t": "t"}


def _hex(digits: str) -> str:
    """Hex digits in either case."""
    return _HEX_LETTER.sub(lambda m: f"[{m[0].lower()}{m[0].upper()}]", digits)


@functools.lru_cache(maxsize=1024)
def _char_spellings(c: str) -> str:
    """A regex for one character of a secret, however an encoder writes it: as is or after
    backslashes (Python repr, JSON, escaped twice), as \\x, \\u or \\U escapes, %-encoded, or as
    an HTML entity."""
    if c.isascii() and c.isalnum():
        return c
    o, utf8 = ord(c), c.encode("utf-8", "surrogatepass")
    forms = [r"\\*" + re.escape(c), "".join("%" + _hex(f"{b:02X}") for b in utf8),
             "".join(r"\\+x" + _hex(f"{b:02x}") for b in utf8), r"\\+U" + _hex(f"{o:08x}"),
             f"&#0*{o};", f"&#[xX]0*{_hex(f'{o:x}')};"]
    if o < 0x100:
        forms.append(r"\\+x" + _hex(f"{o:02x}"))
    if o < 0x10000:
        forms.append(r"\\+u" + _hex(f"{o:04x}"))
    else:  # JSON writes a surrogate pair
        high, low = 0xD800 + ((o - 0x10000) >> 10), 0xDC00 + ((o - 0x10000) & 0x3FF)
        forms.append(rf"\\+u{_hex(f'{high:04x}')}\\+u{_hex(f'{low:04x}')}")
    if c in _ENTITIES:
        forms.append(_ENTITIES[c])
    if c in _ESCAPES:
        forms.append(r"\\+" + _ESCAPES[c])
    if c == " ":
        forms.append(r"\+")
    return "(?:" + "|".join(forms) + ")"


@functools.lru_cache(maxsize=8)
def _known(secrets: tuple[str, ...]) -> re.Pattern | None:
    spelled = ["".join(map(_char_spellings, secret)) for secret in secrets]
    return re.compile("|".join(spelled)) if spelled else None


def _mask_secret(match: re.Match) -> str:
    """The match with its secret replaced by MASK (left alone if that was done already)."""
    start, end = match.span("secret")
    if match.string.startswith(MASK, start) or start == end:
        return match[0]
    return match.string[match.start():start] + MASK + match.string[end:match.end()]


def _mask_basic(match: re.Match) -> str:
    try:
        decoded = base64.b64decode(match["secret"], validate=True).decode()
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return match[0]
    return _mask_secret(match) if ":" in decoded and decoded.isprintable() else match[0]


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """Text with every secret the process knows (secret_values, however written) and every
    credential recognisable by its form replaced by MASK."""
    if not text:
        return text
    known = _known(tuple(secret_values() if secrets is None else secrets))
    if known is not None:
        text = known.sub(MASK, text)
    for rule in _RULES:
        text = rule.sub(_mask_secret, text)
    return _BASIC.sub(_mask_basic, text)


def scrub_message(msg: EmailMessage, secrets: list[str] | None = None) -> EmailMessage:
    """Scrub a message in place: its subject and every text part (plain and HTML)."""
    secrets = secret_values() if secrets is None else secrets
    subject = msg["Subject"]
    if subject is not None:
        cleaned = re.sub(r"[\r\n]+", " ", scrub(str(subject), secrets))
        if cleaned != str(subject):
            msg.replace_header("Subject", cleaned)
    for part in msg.walk():
        if part.get_content_maintype() != "text":
            continue
        content = part.get_content()
        cleaned = scrub(content, secrets)
        if cleaned != content:
            part.set_content(cleaned, subtype=part.get_content_subtype())
    return msg


# --------------------------------------------------------------------------- throttling

class Throttle:
    """At most one mail per key per window, across processes (SQLite in the state directory).

    admit() answers whether to send now, and how many occurrences were held back since the last
    mail, so that mail can say so. If the state file cannot be used, an in-process table stands in.
    """

    _fallback: dict[str, tuple[float, int]] = {}
    _fallback_lock = threading.Lock()

    def __init__(self, path: Path, minutes: float):
        self.path = Path(path)
        self.window = max(0.0, float(minutes)) * 60.0

    def admit(self, key: str, now: float | None = None) -> tuple[bool, int, float | None]:
        now = time.time() if now is None else now
        failure: Exception | None = None
        for attempt in range(5):  # a locked database is waited for, not given up on
            try:
                return self._admit_sqlite(key, now)
            except sqlite3.OperationalError as err:
                failure = err
                if "locked" not in str(err):
                    break
                time.sleep(0.05 * (attempt + 1))
            except (sqlite3.Error, OSError) as err:
                failure = err
                break
        # The state file cannot be used: throttle in this process only.
        log.warning("alert throttle state %s unusable (%s); throttling in this process only",
                    self.path, failure)
        with self._fallback_lock:
            last, held = self._fallback.get(key, (None, 0))
            if last is not None and now - last < self.window:
                self._fallback[key] = (last, held + 1)
                return False, held + 1, last
            self._fallback[key] = (now, 0)
            return True, held, last

    _local = threading.local()  # one connection per thread and process, kept open

    def _connect(self) -> sqlite3.Connection:
        """A connection to the state file, opened once per thread (and again after a fork).
        Closing a WAL database checkpoints it, which costs more than the whole check."""
        key = (os.getpid(), str(self.path.resolve()))
        cache = self._local.__dict__.setdefault("connections", {})
        if key in cache:
            return cache[key]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Switching a fresh file to WAL takes an exclusive lock that SQLite's busy timeout does
        # not wait for: processes opening it at once (a storm hitting every API worker) got
        # "database is locked", throttled only themselves, and each mailed. One at a time here.
        with open(self.path.with_name(self.path.name + ".setup-lock"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                  check_same_thread=False)
            # WAL + synchronous=NORMAL: a held-back alert costs a fraction of a millisecond,
            # which matters when every request of an error storm comes through here.
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("CREATE TABLE IF NOT EXISTS alerts (key TEXT PRIMARY KEY, "
                        "last_sent REAL NOT NULL, held INTEGER NOT NULL DEFAULT 0)")
        cache[key] = con
        return con

    def _forget_connection(self) -> None:
        cache = self._local.__dict__.get("connections", {})
        con = cache.pop((os.getpid(), str(self.path.resolve())), None)
        if con is not None:
            try:
                con.close()
            except sqlite3.Error:
                pass

    def _admit_sqlite(self, key: str, now: float) -> tuple[bool, int, float | None]:
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")  # one writer at a time: check-and-set is atomic
            row = con.execute("SELECT last_sent, held FROM alerts WHERE key = ?", (key,)).fetchone()
            last, held = row if row else (None, 0)
            if last is not None and now - last < self.window:
                con.execute("UPDATE alerts SET held = held + 1 WHERE key = ?", (key,))
                con.execute("COMMIT")
                return False, held + 1, last
            con.execute("INSERT INTO alerts (key, last_sent, held) VALUES (?, ?, 0) "
                        "ON CONFLICT(key) DO UPDATE SET last_sent = excluded.last_sent, held = 0",
                        (key, now))
            # Forget keys quiet for a week, so the table stays small.
            con.execute("DELETE FROM alerts WHERE last_sent < ? AND held = 0", (now - 7 * 86400,))
            con.execute("COMMIT")
            return True, held, last
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            self._forget_connection()
            raise


def state_dir() -> Path:
    return env.state_dir()


_VARIABLE_PARTS = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|0x[0-9a-fA-F]+|[0-9a-fA-F]{8,}|\d+")


def fingerprint(subject: str, error: BaseException | None) -> str:
    """What makes two alerts 'the same error': the subject and, for an exception, its type and
    where it was raised (numbers, ids and addresses normalised, so a storm over many users or
    requests counts as one)."""
    parts = [_VARIABLE_PARTS.sub("#", subject)]
    if error is not None:
        parts.append(f"{type(error).__module__}.{type(error).__qualname__}")
        frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
        if frames:
            parts += [f"{f.filename}:{f.name}:{f.lineno}" for f in frames]
        else:
            parts.append(_VARIABLE_PARTS.sub("#", str(error)))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


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
        lines += ["", "Context"] + [f"  {k}: {MASK if _secret_named(str(k)) else v}"
                                    for k, v in context.items()]
    if error is not None and error.__traceback__ is not None:
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        lines += ["", trace.rstrip()]
    if log_tail:
        tail = log_tail.rstrip("\n").splitlines()
        lines += ["", f"Last {len(tail)} lines of output", *tail]
    return "\n".join(lines) + "\n"


def alert(subject: str, error: BaseException | None = None, context: dict | None = None,
          log_tail: str | None = None, throttle_minutes: float | None = None) -> bool:
    """Mail an alert (throttled, secrets scrubbed). Never raises; True if a mail went out."""
    try:
        return _alert(subject, error, context, log_tail,
                      DEFAULT_THROTTLE_MINUTES if throttle_minutes is None else throttle_minutes)
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
    """alert(), from a background thread; returns at once (False if the queue was full)."""
    return _queue.put(subject, error=error, context=context, log_tail=log_tail,
                      throttle_minutes=throttle_minutes)


def wait_for_alerts() -> None:
    _queue.join()


def _alert(subject: str, error: BaseException | None, context: dict | None,
           log_tail: str | None, minutes: float) -> bool:
    settings = SmtpSettings.from_env()
    if settings is None or not settings.alert_to:
        log.warning("alert not mailed (%s or %s not set): %s", SMTP_HOST_ENV, ALERT_TO_ENV,
                    scrub(subject))
        return False
    throttle = Throttle(state_dir() / "alerts.sqlite", minutes)
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
