"""Secrets scrubbed from everything that leaves by mail (dailyrec.ops.notify): the subject and each
text part, plain and HTML, so the outbox never holds a secret either. Two passes: every secret the
process knows, however it is written (secret_values, _char_spellings); then credentials anyone
could have put in a text, recognised by their form (_RULES).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
from email.message import EmailMessage
from typing import Mapping
from urllib.parse import unquote, urlsplit

from dailyrec.core import privacy
from dailyrec.core.env import state_dir



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


def secret_named(name: str) -> bool:
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
        if secret_named(name):
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
