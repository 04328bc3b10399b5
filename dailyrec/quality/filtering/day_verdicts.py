"""The rules' verdicts on each history day, kept by content hash and reused by later runs.

    DayVerdicts(folder).days(spans, hashes, salt) -> Days   the window's days, with the verdicts
                                                           of the days judged before
    DayVerdicts.keep(days)                                  store the days this run judged; drop
                                                           the entries of days no longer in it
    file_hashes(spans, ts_us) -> {day: MD5s} | None         what a day's entries are keyed by

What is reused, and why it is safe. Four of the six rules judge a day on its own:
  - crawler_ua and internal judge an event by its own values;
  - repeated judges a day's events against the same day's and the dedupe_seconds before its
    midnight;
  - behaviour flags a user on a day from that day's events and the minute before its midnight,
    among the events the earlier rules left.
So what a day loses to repeated, what it loses to behaviour's day flags and the user-days it
flags are a function of
  - the bytes of the day's files, in the window's order, and of the day before's files when that
    day is in the window (its last minutes are the lead the day's first events are judged
    against; a day the window leaves out, rejected or missing, leads with nothing),
  - the settings those four rules read, the crawler pattern list and the code (the caller's salt:
    rules.day_local_salt),
and of nothing else: not run.date, not the other days, not the window's dictionary codes (the
rules compare codes for equality and count distinct values, whatever numbers they are). An entry's
key is the MD5 of all of that. The verdicts are kept as positions inside the day, so they hold
wherever the day sits in a later window.

What the whole window decides is computed every run, from the masks: a user flagged on bot_days
days loses the window, min_support, and every counter and top list of metrics/filter.json.
crawler_ua and internal run on the window's distinct values (cheap) and are not kept.

shared_ip judges a day too (an address's events and users on the day, and the minute before its
midnight), but on the events the window's bots left: a user who becomes or stops being a bot
changes what it sees on every day of theirs. So its verdicts on a day are kept with the MD5 of
the day's key, shared_ip's settings and which of the events it looks at are alive (a bit each),
and reused only where that is the same; elsewhere the day is judged again and kept anew.

Reuse needs every day's rows to be its own UTC day's (a partition holds its own day's events;
otherwise the days are cut by time, not by file) and the leads shorter than a day
(dedupe_seconds + 60 s); where either fails, every day is judged. Entries live under
DAILYREC_STATE_DIR/day-verdicts, outside DVC: a lost or damaged entry is judged again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dailyrec.core import env
from dailyrec.core import schema as S
from dailyrec.core.files import file_md5, tmp_path

SUFFIX = ".npz"


def default_dir() -> Path:
    return env.state_dir() / "day-verdicts"


@dataclass
class DayVerdict:
    """One day's verdicts, as positions among its rows (in window order)."""
    rows: int
    repeated: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))  # removed
    behaviour: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))  # removed
    flagged: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))  # per flagged
    # user-day: the position of the user's first event of the day it was judged on
    limits: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8))  # per flagged
    # user-day: bit k set when limit k (rules.BEHAVIOUR_LIMITS) was over
    # shared_ip's, for the events left alive it was judged on ("": not judged)
    shared_ip_alive: str = ""
    shared_ip: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))  # removed
    ip_days: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))  # address-days
    # over each limit (rules.SHARED_IP_LIMITS)

    def save(self, path: Path, key: str) -> None:
        tmp = tmp_path(path)
        try:
            with tmp.open("wb") as fh:
                np.savez(fh, key=np.str_(key), rows=np.int64(self.rows), repeated=self.repeated,
                         behaviour=self.behaviour, flagged=self.flagged, limits=self.limits,
                         shared_ip_alive=np.str_(self.shared_ip_alive), shared_ip=self.shared_ip,
                         ip_days=self.ip_days)
            tmp.replace(path)  # whole entries only
        except OSError:  # the cache is an optimisation: a read-only state dir still filters
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path, key: str, rows: int) -> "DayVerdict":
        with np.load(path) as a:
            if str(a["key"]) != key:
                raise ValueError("another day's entry")
            int64 = {name: a[name].astype(np.int64)
                     for name in ("repeated", "behaviour", "flagged", "shared_ip", "ip_days")}
            v = cls(rows=int(a["rows"]), limits=a["limits"].astype(np.uint8),
                    shared_ip_alive=str(a["shared_ip_alive"]), **int64)
        inside = all(((p >= 0) & (p < rows)).all()
                     for p in (v.repeated, v.behaviour, v.flagged, v.shared_ip))
        if v.rows != rows or not inside or len(v.flagged) != len(v.limits) or \
                v.ip_days.shape != (3,):
            raise ValueError("an entry that does not fit its day")
        return v


@dataclass
class Days:
    """The window's days for the rules that judge a day at a time, each by its first row."""
    keys: dict[int, str] = field(default_factory=dict)  # the days that may be kept
    given: dict[int, DayVerdict] = field(default_factory=dict)  # judged before: reused
    found: dict[int, DayVerdict] = field(default_factory=dict)  # judged (in part) by this run
    shared_ip_reused: int = 0

    def judged(self, start: int, stop: int) -> DayVerdict:
        """The entry the day-local rules fill for a day they judge."""
        return self.found.setdefault(start, DayVerdict(rows=stop - start))

    def updated(self, start: int, stop: int) -> DayVerdict:
        """The entry to which a day's shared_ip verdicts are added: the one judged this run, or a
        copy of the one reused (kept again, with them)."""
        if start not in self.found and start in self.given:
            self.found[start] = dataclasses.replace(self.given[start])
        return self.judged(start, stop)

    def alive_keys(self, spans, alive: np.ndarray, salt: str) -> dict[int, str]:
        """Per day that may be kept: the MD5 of the day's key, salt, and which of its events and
        of its lead are alive (what a window-level decision changes). spans: the rules' days,
        (first, start, stop) as rules.day_spans gives them."""
        out = {}
        for first, start, stop in spans:  # a loop over days
            key = self.keys.get(start)
            if key is None:
                continue
            digest = hashlib.md5(f"{key}|{salt}|{start - first}".encode())
            digest.update(np.packbits(alive[first:stop]).tobytes())
            out[start] = digest.hexdigest()
        return out

    def shared_ip_given(self, alive_keys: dict[int, str]) -> dict[int, DayVerdict]:
        """The days whose shared_ip verdicts were judged before on the same events alive."""
        reused = {start: v for start, v in self.given.items()
                  if v.shared_ip_alive and v.shared_ip_alive == alive_keys.get(start)}
        self.shared_ip_reused = len(reused)
        return reused

    def counts(self) -> dict[str, int]:
        """metrics/filter.json's day_verdicts: days whose day-local verdicts were reused and days
        judged; days whose shared_ip verdicts were reused."""
        return {"reused": len(self.given), "judged": len(set(self.found) - set(self.given)),
                "shared_ip_reused": self.shared_ip_reused}


class DayVerdicts:
    """The rules' verdicts on each day, cached by content under folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def days(self, spans: list[tuple[dt.date, list[Path], int, int]],
             hashes: dict[dt.date, list[str]] | None, salt: str) -> Days:
        """Keys for the window's days (spans: each day's date, files and rows, in order;
        hashes: their files' MD5s, as file_hashes gives them), and the verdicts found under
        them. No keys without hashes (a day holds another day's events)."""
        days = Days()
        if not salt or hashes is None:
            return days
        for day, files, start, stop in spans:  # a loop over days
            if stop == start:
                continue
            lead = hashes.get(day - dt.timedelta(days=1), ["-"])
            text = "|".join([salt, "day", *hashes[day], "lead", *lead])
            days.keys[start] = key = hashlib.md5(text.encode()).hexdigest()
            path = self.folder / (key + SUFFIX)
            if path.is_file():
                try:
                    days.given[start] = DayVerdict.load(path, key, stop - start)
                except (OSError, ValueError, KeyError, TypeError, EOFError):
                    path.unlink(missing_ok=True)  # damaged: judged again, then kept anew
        return days

    def keep(self, days: Days) -> None:
        """Store what this run judged; remove the entries of days no longer in the window (and
        a killed run's temporary files)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for start, verdict in days.found.items():  # a loop over days
                if start in days.keys:
                    verdict.save(self.folder / (days.keys[start] + SUFFIX), days.keys[start])
            wanted = {key + SUFFIX for key in days.keys.values()}
            for entry in self.folder.iterdir():
                if entry.name not in wanted:
                    entry.unlink(missing_ok=True)
        except OSError:
            pass


def file_hashes(spans, ts_us: np.ndarray) -> dict[dt.date, list[str]] | None:
    """Each day's files' MD5s, what a day's cached results (these verdicts, data/clean's day
    files) are keyed by; None when a day's rows are not all its own UTC day's."""
    if not aligned(spans, ts_us):
        return None
    return {day: [file_md5(p) for p in files] for day, files, start, stop in spans if files}


def aligned(spans, ts_us: np.ndarray) -> bool:
    """Every day's rows lie in its own UTC day (the window is in time order: its first and last
    row say so); a file outside a day=YYYY-MM-DD folder has no day."""
    for day, _, start, stop in spans:  # a loop over days
        if day is None:
            return False
        if stop > start:
            number = (day - dt.date(1970, 1, 1)).days
            if ts_us[start] // S.MICROS_PER_DAY != number or \
                    ts_us[stop - 1] // S.MICROS_PER_DAY != number:
                return False
    return True
