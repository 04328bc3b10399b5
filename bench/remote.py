"""What `dvc push` uploads after each daily run, against the size of the history it keeps.

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/remote.py [--days 7] [--events-per-day N]

A throwaway copy of the project simulates the demo's traffic, runs fetch_delta -> merge_history one
day at a time and pushes after each day to the three remotes: the local folder, GCS
(gcp-storage-emulator) and Azure (Azurite). Bytes pushed are measured on the remote itself: the
objects that appeared there, by size. The history is partitioned by day and DVC hashes a directory
file by file, and merge_history never rewrites a file an earlier run wrote (late events go to a
small arrived-<run>.parquet beside their day's file), so a push should carry the new day's file and
the late arrivals, not the whole history.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsspec.implementations.local import LocalFileSystem  # noqa: E402

from bench.report import markdown_table, publish  # noqa: E402
from tests import emulators, workspace  # noqa: E402
from tools.reproduce import dir_manifest  # noqa: E402

FIRST_EVENT_DAY = dt.date(2026, 11, 14)
REMOTES = ("local", "gcs", "azure")
MB = 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--events-per-day", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=5_000)
    args = ap.parse_args(argv)

    gcs = emulators.start_gcs()
    azure = None
    try:
        azure = emulators.start_azurite()
        with tempfile.TemporaryDirectory(prefix="dailyrec-bench-remote-") as tmp:
            rows = run(Path(tmp), gcs, azure, args)
    finally:
        gcs.stop()
        if azure:
            azure.stop()

    header = ["run.date", "history files", "history MB", "history files pushed", "days they hold",
              "late rows into older days", "history MB pushed", "pushed / history",
              "new day's file MB", "all MB pushed",
              "push s: local", "gcs", "azure"]
    last = rows[-1]
    body = (f"{args.days} daily runs of the demo's traffic ({args.events_per_day:,} human events a "
            f"day, {args.users:,} users, {args.items:,} items, plus bots and messy rows), "
            "fetch_delta -> merge_history, then `dvc push` to each remote. Bytes are measured on "
            "the remote (the objects a push added); the three remotes received the same "
            "objects.\n\n"
            + markdown_table(header, rows) + "\n\n"
            f"On the last day the push carried {last[6]:.2f} MB of history out of {last[2]:.2f} MB "
            f"({last[7]}), against {last[8]:.2f} MB for the new day's file alone. The "
            f"{last[5]:,} late rows that reached older days on the last day went to small "
            "arrived-<run.date>.parquet files beside those days' files, which stay untouched and "
            f"are not pushed again: the upload is one day's file plus {last[6] - last[8]:.2f} MB of "
            "late arrivals, whatever history.days (365) is. \"all MB pushed\" adds the day's delta and quarantine.\n")
    publish("remote", "DVC push after a daily run: bytes pushed vs history size", body)
    return 0


def run(tmp: Path, gcs, azure, args) -> list[list]:
    ws = workspace.create(tmp / "project")
    print(f"simulating {args.days} days into {ws.path} ...", flush=True)
    ws.python("-m", "tools.simulate", "--url", ws.env["DAILYREC_SOURCE_URL"], "--start",
              FIRST_EVENT_DAY.isoformat(), "--days", str(args.days), "--users", str(args.users),
              "--items", str(args.items), "--events-per-day", str(args.events_per_day),
              "--seed", "7")
    ws.configure_remote("gcs", **gcs.dvc_config)
    ws.configure_remote("azure", **azure.dvc_config)
    listings = {"local": (LocalFileSystem(), str(ws.path / "dvc-remote")),
                "gcs": (gcs.filesystem(), gcs.url().removeprefix("gs://")),
                "azure": (azure.filesystem(), azure.url().removeprefix("azure://"))}
    rows = []
    for offset in range(1, args.days + 1):
        run_date = FIRST_EVENT_DAY + dt.timedelta(days=offset)
        ws.set_run_date(run_date)
        ws.dvc("repro", "merge_history")
        ws.commit(f"daily run {run_date}")
        added, seconds = {}, {}
        for name in REMOTES:
            fs, root = listings[name]
            before = emulators.remote_bytes(fs, root)
            start = time.perf_counter()
            ws.dvc("push", "--remote", name)
            seconds[name] = time.perf_counter() - start
            after = emulators.remote_bytes(fs, root)
            added[name] = {_object_id(p): size for p, size in after.items() if p not in before}
        if not added["local"] == added["gcs"] == added["azure"]:
            raise SystemExit(f"{run_date}: the remotes received different objects")
        lock = ws.lock()
        manifest = dir_manifest(ws.path / ".dvc" / "cache",
                                workspace.out_hash(lock, "merge_history", "data/history"))
        history = ws.path / "data" / "history"
        sizes = {rel: (history / rel).stat().st_size for rel in manifest}
        pushed = sorted(rel for rel, md5 in manifest.items() if md5 in added["local"])
        new_day = f"day={run_date - dt.timedelta(days=1)}/events.parquet"
        history_mb = sum(sizes.values()) / MB
        pushed_mb = sum(sizes[rel] for rel in pushed) / MB
        days_held = ", ".join(rel.split("/")[0].removeprefix("day=")[5:] for rel in pushed)
        metrics = json.loads((ws.path / "metrics" / "history.json").read_text())
        added_by_day = metrics["added_by_day"]
        late_rows = sum(n for d, n in added_by_day.items() if d != str(run_date - dt.timedelta(1)))
        rows.append([run_date.isoformat(), len(manifest), round(history_mb, 2), len(pushed),
                     days_held, late_rows, round(pushed_mb, 2), f"{pushed_mb / history_mb:.0%}",
                     round(sizes.get(new_day, 0) / MB, 2),
                     round(sum(added["local"].values()) / MB, 2),
                     round(seconds["local"], 1), round(seconds["gcs"], 1),
                     round(seconds["azure"], 1)])
        print(json.dumps(dict(zip(header_keys(), rows[-1]))), flush=True)
    return rows


def header_keys() -> tuple[str, ...]:
    return ("run_date", "history_files", "history_mb", "pushed_files", "days", "late_rows",
            "pushed_mb", "share", "new_day_mb", "all_mb", "local_s", "gcs_s", "azure_s")


def _object_id(path: str) -> str:
    parts = path.rstrip("/").split("/")
    return parts[-2] + parts[-1]


if __name__ == "__main__":
    sys.exit(main())
