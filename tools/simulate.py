"""A production simulator: writes a realistic, messy interaction log into a source database.

    python -m tools.simulate --start 2026-11-14 --days 7 [--url sqlite:///source.db] [--seed 7]

What it writes, per day, all vectorised with NumPy (seeded: the same arguments give the same rows):
- humans: power-law activity (Pareto) over users, Zipf popularity over items, users with a taste for
  a few of the catalogue's genres, sessions (a diurnal start time, a geometric number of events a few
  seconds to minutes apart, a handful of items each), and a view > click > add_to_cart > purchase funnel;
- the mess of production: three source tables with different schemas and types (web_events,
  app_events, legacy_clicks), ids as int, text and float text ("123.0"), timestamps as ISO strings in
  several zones, epoch milliseconds and epoch seconds, event names in several spellings and cases,
  NULLs, garbage rows, future and ancient timestamps, exact duplicates, and late events (written the
  day after they happened);
- noise: crawlers with real crawler user agents, scrapers with browser user agents and inhuman rates,
  internal admin accounts on the office network, and a few heavy but human users.

Which users are crawlers, scrapers and admins goes to the table `sim_truth`, so filtering can be
measured against the truth. Nothing here is read by the pipeline itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

import numpy as np
import pandas as pd
import sqlalchemy as sa

from dailyrec.core import env

TABLES = ("web_events", "app_events", "legacy_clicks")
TRUTH_TABLE = "sim_truth"
EVENT_TYPES = np.array(["view", "click", "add_to_cart", "purchase"])
FUNNEL = np.array([0.70, 0.20, 0.07, 0.03])

# Each table spells event types its own way (and not always consistently).
SPELLINGS = {
    "web_events": [["View", "view", "PAGE_VIEW"], ["Click", "CLICK"], ["add-to-cart", "Add To Cart"],
                   ["Purchase", "purchase"]],
    "app_events": [["view"], ["click", "tap"], ["cart_add"], ["purchase", "order"]],
    "legacy_clicks": [["VIEW"], ["CLICK"], ["ADDTOCART"], ["BUY"]],
}
BROWSER_UAS = np.array([
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
])
APP_UAS = np.array(["DailyShop/5.2.1 (iPhone; iOS 18.1)", "DailyShop/5.2.0 (Android 14; Pixel 8)",
                    "DailyShop/5.1.9 (Android 13; SM-S911B)"])
CRAWLER_UAS = np.array([
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
    "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
])
# Zones the web front end writes its ISO timestamps in.
ZONE_OFFSETS_MIN = np.array([0, 0, 60, -300, 330, 540, -480])
ADMIN_NETWORK = "10.20.0.0/16"
ADMIN_ID_BASE = 9_000_000
SLEEP_HOURS = 6
ROTATOR_POOL = 300  # user ids one scraper rotates through, behind one IP
ROTATOR_IP = "93.184.216.34"
# A headless browser whose user agent no crawler list knows.
HEADLESS_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
               "Chrome/131.0.0.0 Safari/537.36")


def build_truth(seed: int, n_users: int) -> pd.DataFrame:
    """The population's noise accounts: fixed for a seed, so every day uses the same bots."""
    rng = np.random.default_rng([seed, 0])
    n_crawlers = max(3, n_users // 2000)
    n_scrapers = max(3, n_users // 2500)
    n_admins = max(2, n_users // 5000)
    n_slow = max(1, n_users // 10000)
    n_headless = max(2, n_users // 10000)
    human_ids = rng.permutation(np.arange(1, n_users + 1))
    crawler_ids = human_ids[:n_crawlers] + n_users  # outside the human id range, like real ones
    scraper_ids = human_ids[n_crawlers:n_crawlers + n_scrapers] + 2 * n_users
    admin_ids = ADMIN_ID_BASE + np.arange(1, n_admins + 1)
    # One scraper behind one IP rotating a pool of user ids (made up, so outside the humans').
    rotator_ids = 3 * n_users + np.arange(1, ROTATOR_POOL + 1)
    slow_ids = 4 * n_users + np.arange(1, n_slow + 1)
    headless_ids = 5 * n_users + np.arange(1, n_headless + 1)
    kinds = {"crawler": crawler_ids, "scraper": scraper_ids, "admin": admin_ids,
             "rotator": rotator_ids, "slow_crawler": slow_ids, "headless": headless_ids}
    return pd.DataFrame({
        "user_id": np.concatenate(list(kinds.values())).astype(str),
        "kind": np.repeat(list(kinds), [len(v) for v in kinds.values()]),
    })


class Population:
    """Users, items and tastes; the same for every day of one seed."""

    def __init__(self, seed: int, n_users: int, n_items: int, n_genres: int = 24):
        rng = np.random.default_rng([seed, 1])
        self.n_users, self.n_items, self.n_genres = n_users, n_items, n_genres
        self.activity = rng.pareto(1.6, n_users) + 0.05  # power law: a few users do a lot
        self.activity /= self.activity.sum()
        self.user_genres = rng.integers(0, n_genres, size=(n_users, 2))
        self.user_platform = rng.choice(3, size=n_users, p=[0.5, 0.35, 0.15])
        self.user_ua = rng.integers(0, len(BROWSER_UAS), n_users)
        self.user_ip = _public_ips(rng, n_users)
        # Everyone sleeps: six hours a day without a session, starting at a personal hour.
        self.user_sleep = rng.integers(22, 30, n_users) % 24
        item_genre = rng.integers(0, n_genres, n_items)
        popularity = 1.0 / np.arange(1, n_items + 1) ** 1.05  # Zipf
        popularity = popularity[rng.permutation(n_items)]
        order = np.lexsort((-popularity, item_genre))
        self.genre_items = order  # items grouped by genre, most popular first within a genre
        self.genre_start = np.searchsorted(item_genre[order], np.arange(n_genres + 1))
        self.genre_cdf = [np.cumsum(popularity[order[a:b]]) / popularity[order[a:b]].sum()
                          for a, b in zip(self.genre_start[:-1], self.genre_start[1:])]
        self.global_cdf = np.cumsum(popularity) / popularity.sum()

    def sample_items(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        """80% from one of the user's genres (by popularity there), 20% from the whole catalogue."""
        items = np.searchsorted(self.global_cdf, rng.random(len(users)))
        in_taste = rng.random(len(users)) < 0.8
        genres = self.user_genres[users, rng.integers(0, 2, len(users))]
        for g in range(self.n_genres):  # a loop over genres (a few dozen), not over events
            pick = in_taste & (genres == g)
            n = int(pick.sum())
            if n and len(self.genre_cdf[g]):
                pos = np.searchsorted(self.genre_cdf[g], rng.random(n))
                items[pick] = self.genre_items[self.genre_start[g] + np.minimum(
                    pos, len(self.genre_cdf[g]) - 1)]
        return np.minimum(items, self.n_items - 1) + 1  # item ids start at 1


def _public_ips(rng: np.random.Generator, n: int) -> np.ndarray:
    octets = rng.integers(1, 255, size=(n, 4))
    octets[:, 0] = rng.choice([23, 31, 45, 62, 81, 94, 109, 151, 176, 185, 203], n)
    return _dotted(octets)


def _dotted(octets: np.ndarray) -> np.ndarray:
    parts = [pd.Series(octets[:, i].astype(str)) for i in range(4)]
    return parts[0].str.cat(parts[1:], sep=".").to_numpy(dtype=object)


def human_events(rng, pop: Population, day_start: pd.Timestamp, n_events: int) -> pd.DataFrame:
    mean_session = 6.0
    n_sessions = max(1, int(n_events / mean_session))
    users = rng.choice(pop.n_users, size=n_sessions, p=pop.activity)
    lengths = rng.geometric(1 / mean_session, n_sessions)
    # Diurnal: most sessions start in the evening, few at night.
    hours = rng.choice(24, n_sessions, p=_diurnal())
    asleep = (hours - pop.user_sleep[users]) % 24 < SLEEP_HOURS
    hours = np.where(asleep, (pop.user_sleep[users] + SLEEP_HOURS) % 24, hours)  # wakes up
    starts = hours * 3600 + rng.integers(0, 3600, n_sessions)
    session = np.repeat(np.arange(n_sessions), lengths)
    offsets = np.arange(len(session)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    gaps = rng.exponential(40.0, len(session)) + 2.0  # seconds between a human's actions
    gaps[offsets == 0] = 0.0
    seconds = starts[session] + _cumsum_by_group(gaps, lengths)
    ev_users = users[session]
    # Each session looks at a few items: revisits inside a session are common.
    first_items = pop.sample_items(rng, ev_users)
    revisit = (rng.random(len(session)) < 0.35) & (offsets > 0)
    session_first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    items = np.where(revisit, first_items[session_first], first_items)
    types = rng.choice(4, len(session), p=FUNNEL)
    keep = seconds < 86_400
    return pd.DataFrame({
        "user": ev_users[keep] + 1, "item": items[keep], "type": types[keep],
        "ts": day_start + pd.to_timedelta(seconds[keep], unit="s"),
        "platform": pop.user_platform[ev_users[keep]],
        "ua": np.where(pop.user_platform[ev_users[keep]] == 1,
                       APP_UAS[pop.user_ua[ev_users[keep]] % len(APP_UAS)],
                       BROWSER_UAS[pop.user_ua[ev_users[keep]]]),
        "ip": pop.user_ip[ev_users[keep]],
    })


def _diurnal() -> np.ndarray:
    w = 1.0 + 0.9 * np.sin((np.arange(24) - 14) / 24 * 2 * np.pi) + (np.arange(24) >= 18) * 0.8
    w = np.clip(w, 0.1, None)
    return w / w.sum()


def _cumsum_by_group(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    total = np.cumsum(values)
    group_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return total - total[group_start] + values[group_start]


def noise_events(rng, pop: Population, truth: pd.DataFrame, day_start: pd.Timestamp,
                 n_human: int) -> pd.DataFrame:
    """Crawlers, scrapers and admins for one day."""
    frames = []
    for kind, per_user, rate in (("crawler", 400, 0.5), ("scraper", 2500, 4.0), ("admin", 250, 0.02)):
        ids = truth.loc[truth["kind"] == kind, "user_id"].astype(int).to_numpy()
        counts = rng.poisson(per_user * max(1.0, n_human / 200_000), len(ids))
        users = np.repeat(ids, counts)
        n = len(users)
        start = rng.integers(0, 86_400 // 2, len(ids))
        # Bots act at `rate` events per second in one burst; admins spread clicks over a work day.
        gaps = rng.exponential(1.0 / rate, n)
        seconds = np.repeat(start, counts) + _cumsum_by_group(gaps, counts) if n else gaps
        if kind == "admin":
            seconds = 9 * 3600 + rng.integers(0, 9 * 3600, n)
        items = rng.integers(1, pop.n_items + 1, n)  # bots walk the whole catalogue
        if kind == "crawler":
            ua = CRAWLER_UAS[np.repeat(np.arange(len(ids)) % len(CRAWLER_UAS), counts)]
            ip = np.full(n, "66.249.66.1")
        elif kind == "scraper":
            ua = BROWSER_UAS[np.repeat(np.arange(len(ids)) % len(BROWSER_UAS), counts)]
            ip = np.full(n, "185.220.101.7")
        else:
            ua = BROWSER_UAS[np.zeros(n, dtype=int)]
            k = np.arange(len(ids))
            office = _dotted(np.stack([np.full_like(k, 10), np.full_like(k, 20), k % 250,
                                       10 + k % 200], axis=1))
            ip = office[np.repeat(k, counts)]
        frames.append(pd.DataFrame({
            "user": users, "item": items, "type": rng.choice(4, n, p=[0.85, 0.13, 0.015, 0.005]),
            "ts": day_start + pd.to_timedelta(np.minimum(seconds, 86_399), unit="s"),
            "platform": np.zeros(n, dtype=int) if kind != "admin" else rng.choice([0, 1], n),
            "ua": ua, "ip": ip,
        }))
    frames += [_rotator(rng, pop, truth, day_start, n_human),
               _slow_crawler(rng, pop, truth, day_start),
               _headless(rng, pop, truth, day_start, n_human)]
    return pd.concat(frames, ignore_index=True)


def _bot_frame(users, items, seconds, day_start, ua, ip) -> pd.DataFrame:
    n = len(users)
    return pd.DataFrame({
        "user": users, "item": items, "type": np.zeros(n, dtype=int),
        "ts": day_start + pd.to_timedelta(np.clip(seconds, 0, 86_399), unit="s"),
        "platform": np.zeros(n, dtype=int), "ua": ua, "ip": ip})


def _rotator(rng, pop, truth, day_start, n_human) -> pd.DataFrame:
    """Up to 6,000 views a day (3% of the humans', at least 300) from one IP over eight hours,
    each under one of 300 user ids: per id it looks like a light human; per address it is one
    machine (the shared_ip rule: 300 events over 300 ids still make ~190 distinct ids a day)."""
    pool = truth.loc[truth["kind"] == "rotator", "user_id"].astype(int).to_numpy()
    n = int(rng.poisson(min(6000.0, max(300.0, 0.03 * n_human)) * max(1.0, n_human / 200_000)))
    seconds = 8 * 3600 + np.sort(rng.integers(0, 8 * 3600, n))
    ua = BROWSER_UAS[rng.integers(0, len(BROWSER_UAS), n)]
    return _bot_frame(rng.choice(pool, n), rng.integers(1, pop.n_items + 1, n), seconds,
                      day_start, ua, np.full(n, ROTATOR_IP))


def _slow_crawler(rng, pop, truth, day_start) -> pd.DataFrame:
    """One page every two minutes, around the clock, walking the catalogue in order: far under
    every rate limit, but active in every hour of the day (the active-hours limit)."""
    ids = truth.loc[truth["kind"] == "slow_crawler", "user_id"].astype(int).to_numpy()
    per = 720
    seconds = np.tile(np.arange(per) * 120, len(ids)) + rng.integers(0, 60, per * len(ids))
    start = rng.integers(0, pop.n_items, len(ids))
    items = (np.repeat(start, per) + np.tile(np.arange(per), len(ids))) % pop.n_items + 1
    k = np.repeat(np.arange(len(ids)), per)
    ip = _dotted(np.stack([np.full_like(k, 34), 200 + k % 50, np.full_like(k, 12), 7 + k],
                          axis=1))
    return _bot_frame(np.repeat(ids, per), items, seconds, day_start,
                      np.full(per * len(ids), BROWSER_UAS[2]), ip)


def _headless(rng, pop, truth, day_start, n_human) -> pd.DataFrame:
    """A headless browser with an ordinary Chrome user agent: sessions of 30 pages a minute
    (under the per-minute limit) over 1,500+ distinct items a day (the distinct-items limit)."""
    ids = truth.loc[truth["kind"] == "headless", "user_id"].astype(int).to_numpy()
    counts = rng.poisson(1600 * max(1.0, n_human / 200_000), len(ids))
    users = np.repeat(ids, counts)
    start = np.repeat(rng.integers(0, 12 * 3600, len(ids)), counts)
    seconds = start + _cumsum_by_group(np.full(len(users), 2.0), counts)
    k = np.repeat(np.arange(len(ids)), counts)
    ip = _dotted(np.stack([np.full_like(k, 52), np.full_like(k, 14), 3 + k % 200, 40 + k % 200],
                          axis=1))
    return _bot_frame(users, rng.integers(1, pop.n_items + 1, len(users)), seconds, day_start,
                      np.full(len(users), HEADLESS_UA), ip)


def mess_up(rng, events: pd.DataFrame, day_start: pd.Timestamp) -> pd.DataFrame:
    """Late writes, duplicates, NULLs, garbage and impossible timestamps, as production has."""
    n = len(events)
    write_delay = rng.exponential(20.0, n)  # seconds from event to database
    late = rng.random(n) < 0.02
    write_delay[late] = 86_400 + rng.integers(0, 6 * 3600, late.sum())
    events = events.assign(written=events["ts"] + pd.to_timedelta(write_delay, unit="s"),
                           late=late, garbage="")
    # Events whose write lands after midnight of the next day belong to the next fetch: fine.
    dup = events.sample(frac=0.01, random_state=int(rng.integers(2**31)))
    events = pd.concat([events, dup], ignore_index=True)
    m = len(events)
    kinds = rng.choice(["", "null_user", "null_item", "bad_user", "bad_type", "future", "ancient"],
                       m, p=[0.9915, 0.002, 0.0015, 0.0015, 0.0015, 0.001, 0.001])
    events["garbage"] = kinds
    return events


def to_tables(rng, events: pd.DataFrame, day_start: pd.Timestamp) -> dict[str, pd.DataFrame]:
    out = {}
    for platform, name in enumerate(TABLES):
        ev = events[events["platform"] == platform].reset_index(drop=True)
        k = len(ev)
        spell = SPELLINGS[name]
        choice = rng.random(k)
        names = np.empty(k, dtype=object)
        for t in range(4):
            options = np.array(spell[t], dtype=object)
            sel = ev["type"].to_numpy() == t
            names[sel] = options[(choice[sel] * len(options)).astype(int) % len(options)]
        ts_s = _epoch(ev["ts"], "1s")
        user = ev["user"].to_numpy().astype(object)
        item = ev["item"].to_numpy().astype(object)
        g = ev["garbage"].to_numpy()
        user[g == "null_user"] = None
        item[g == "null_item"] = None
        bad_user = g == "bad_user"
        user[bad_user] = rng.choice(np.array(["undefined", "<script>alert(1)</script>", "user 12",
                                              "NULL", "-1' OR '1'='1"], dtype=object),
                                    bad_user.sum())
        names[g == "bad_type"] = rng.choice(np.array(["hover", "scroll", "???"], dtype=object),
                                             (g == "bad_type").sum())
        ts_s = np.where(g == "future", ts_s + 86_400 * 365 * 30, ts_s)
        ts_s = np.where(g == "ancient", rng.integers(0, 10**9, k), ts_s)
        written_ms = _epoch(ev["written"], "1ms")
        if name == "web_events":
            offs = ZONE_OFFSETS_MIN[rng.integers(0, len(ZONE_OFFSETS_MIN), k)]
            local = pd.to_datetime(ts_s + offs * 60, unit="s")
            iso = pd.Series(local.strftime("%Y-%m-%dT%H:%M:%S"))
            hh = pd.Series(np.abs(offs) // 60).astype(str).str.zfill(2)
            mm = pd.Series(np.abs(offs) % 60).astype(str).str.zfill(2)
            zone = pd.Series(np.where(offs < 0, "-", "+")).str.cat([hh, mm], sep="")
            zone = (zone.str[:3] + ":" + zone.str[3:]).replace("+00:00", "Z")
            ts_text = iso.str.cat(zone)
            ts_text[g == "ancient"] = "not a date"
            # Stable ids: a duplicate keeps its uuid, exactly like a retried write.
            uid = pd.util.hash_pandas_object(pd.DataFrame({"u": ev["user"], "i": ev["item"],
                                             "t": ts_s}), index=False)
            out[name] = pd.DataFrame({
                "event_uuid": np.char.mod("%016x", uid.to_numpy()),
                "userId": pd.Series(user).astype("str").where(pd.Series(user).notna()),
                "productId": pd.Series(item).astype("str").where(pd.Series(item).notna()),
                "eventType": names, "ts": ts_text, "userAgent": ev["ua"].to_numpy(),
                "ip": ev["ip"].to_numpy(), "ingested_at": written_ms,
            })
        elif name == "app_events":
            # The app writes integer ids; its garbage is a negative id.
            app_user = pd.to_numeric(pd.Series(user), errors="coerce")
            app_user[bad_user] = -1
            out[name] = pd.DataFrame({
                "user_id": app_user.astype("Int64"),
                "item_id": pd.to_numeric(pd.Series(item)).astype("Int64"),
                "event_name": names, "event_time_ms": ts_s * 1000,
                "device_ua": ev["ua"].to_numpy(), "client_ip": ev["ip"].to_numpy(),
                "written_at": pd.to_datetime(written_ms, unit="ms"),
            })
        else:
            # The legacy system writes ids as floats ("123.0"), no user agent, no write time.
            u = pd.Series(user)
            numeric = pd.to_numeric(u, errors="coerce")
            u = numeric.astype("float64").astype(str).where(numeric.notna(), u)
            out[name] = pd.DataFrame({
                "UserID": u.astype(object), "ItemID": pd.to_numeric(pd.Series(item)).astype(float),
                "Action": names, "EventTime": ts_s, "RemoteAddr": ev["ip"].to_numpy(),
            })
    return out


def _epoch(times: pd.Series, unit: str) -> np.ndarray:
    return ((times - pd.Timestamp(0)) // pd.Timedelta(unit)).to_numpy(dtype="int64")


def simulate_day(seed: int, day: dt.date, pop: Population, truth: pd.DataFrame,
                 events_per_day: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng([seed, 2, day.toordinal()])
    day_start = pd.Timestamp(day)
    humans = human_events(rng, pop, day_start, events_per_day)
    noise = noise_events(rng, pop, truth, day_start, len(humans))
    events = pd.concat([humans, noise], ignore_index=True)
    events = mess_up(rng, events, day_start)
    return to_tables(rng, events, day_start)


def write(url: str, start: dt.date, days: int, seed: int, users: int, items: int,
          events_per_day: int, append: bool = False, chunksize: int = 50_000) -> dict[str, int]:
    engine = sa.create_engine(url)
    pop = Population(seed, users, items)
    truth = build_truth(seed, users)
    counts = dict.fromkeys(TABLES, 0)
    with engine.begin() as conn:
        if not append:
            for name in (*TABLES, TRUTH_TABLE):
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        truth.assign(seed=seed).to_sql(TRUTH_TABLE, conn, if_exists="replace", index=False)
    for offset in range(days):
        day = start + dt.timedelta(days=offset)
        tables = simulate_day(seed, day, pop, truth, events_per_day)
        with engine.begin() as conn:
            for name, frame in tables.items():
                frame.to_sql(name, conn, if_exists="append", index=False, chunksize=chunksize)
                counts[name] += len(frame)
    engine.dispose()
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=env.source_url(), help="SQLAlchemy URL (env DAILYREC_SOURCE_URL)")
    ap.add_argument("--start", required=True, type=dt.date.fromisoformat, help="first day, YYYY-MM-DD")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--events-per-day", type=int, default=100_000)
    ap.add_argument("--append", action="store_true", help="add days instead of replacing tables")
    args = ap.parse_args(argv)
    counts = write(args.url, args.start, args.days, args.seed, args.users, args.items,
                   args.events_per_day, append=args.append)
    print(f"simulated {args.days} days from {args.start} into {args.url}: "
          + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
