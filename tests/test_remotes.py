"""DVC remotes: the committed config; push/pull of the pipeline's outputs through real emulators.

A copy of the project runs fetch_delta -> merge_history for four days, committing and pushing after
each to the local folder remote, to GCS (gcp-storage-emulator) and to Azure (Azurite). The remote
URLs are the committed ones; only endpoints and credentials are added, in .dvc/config.local (GCS)
or the environment (Azure), as on a real machine.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from configobj import ConfigObj
from fsspec.implementations.local import LocalFileSystem

from tests import emulators, workspace
from tools.reproduce import dir_manifest, file_md5

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FIRST_EVENT_DAY = dt.date(2026, 11, 14)
RUN_DATES = [FIRST_EVENT_DAY + dt.timedelta(days=i) for i in (1, 2, 3, 4)]
CACHED_OUTS = {"fetch_delta": ["data/delta"],
               "merge_history": ["data/history", "data/quarantine"]}
REMOTES = ("local", "gcs", "azure")


def test_committed_config_declares_three_remotes_and_no_secrets():
    config = ConfigObj(str(ROOT / ".dvc" / "config"))
    remotes = {key.split('"')[1]: dict(value) for key, value in config.items()
               if key.startswith("remote ")}
    assert set(remotes) == {"local", "gcs", "azure"}
    assert config["core"]["remote"] == "local"
    assert "://" not in remotes["local"]["url"]  # a plain folder: works on one machine, no cloud
    assert remotes["gcs"]["url"].startswith("gs://")
    assert remotes["azure"]["url"].startswith("azure://")
    # Endpoints and credentials belong in .dvc/config.local or the environment, never here.
    for name, settings in remotes.items():
        assert set(settings) == {"url"}, f"remote {name} commits {sorted(set(settings) - {'url'})}"
    ignored = (ROOT / ".dvc" / ".gitignore").read_text().split()
    assert "/config.local" in ignored


def object_id(path: str) -> str:
    """A remote object's hash from its path (.../files/md5/ab/cdef... -> abcdef...)."""
    parts = path.rstrip("/").split("/")
    return parts[-2] + parts[-1]


def referenced_objects(cache: Path, lock: dict) -> dict[str, str]:
    """Every cache object a dvc.lock's cached outputs need: object id -> what it is."""
    refs: dict[str, str] = {}
    for stage, outs in CACHED_OUTS.items():
        for path in outs:
            md5 = workspace.out_hash(lock, stage, path)
            refs[md5] = path
            for rel, file_hash in (dir_manifest(cache, md5) or {}).items():
                refs.setdefault(file_hash, f"{path}/{rel}")
    return refs


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, gcs_emulator, azurite):
    """Four daily runs, each committed and pushed to all three remotes; what each push added."""
    ws = workspace.create(tmp_path_factory.mktemp("remotes") / "project")
    ws.python("-m", "tools.simulate", "--url", ws.env["DAILYREC_SOURCE_URL"], "--start",
              FIRST_EVENT_DAY.isoformat(), "--days", str(len(RUN_DATES)), "--users", "300",
              "--items", "120", "--events-per-day", "1500", "--seed", "11")
    ws.configure_remote("gcs", **gcs_emulator.dvc_config)
    ws.env["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
    listings = {"local": (LocalFileSystem(), str(ws.path / "dvc-remote")),
                "gcs": (gcs_emulator.filesystem(), gcs_emulator.url().removeprefix("gs://")),
                "azure": (azurite.filesystem(), azurite.url().removeprefix("azure://"))}
    days = []
    for run_date in RUN_DATES:
        ws.set_run_date(run_date)
        ws.dvc("repro", "merge_history")
        sha = ws.commit(f"daily run {run_date}")
        added = {}
        for name in REMOTES:
            fs, root = listings[name]
            before = emulators.remote_bytes(fs, root)
            ws.dvc("push", "--remote", name)
            after = emulators.remote_bytes(fs, root)
            added[name] = {object_id(p): size for p, size in after.items() if p not in before}
        lock = ws.lock()
        days.append({"run_date": run_date, "sha": sha, "lock": lock, "added": added,
                     "refs": referenced_objects(ws.path / ".dvc" / "cache", lock),
                     "history": (ws.path / "metrics" / "history.json").read_text()})
    return ws, days


@pytest.mark.parametrize("remote", REMOTES)
def test_push_uploads_exactly_the_objects_that_changed(pushed, remote):
    _, days = pushed
    seen: set[str] = set()
    for day in days:
        expected = set(day["refs"]) - seen
        assert set(day["added"][remote]) == expected, f"{remote}, run {day['run_date']}"
        seen |= set(day["refs"])


def test_day_partitioned_history_uploads_only_the_days_it_touched(pushed):
    import json

    ws, days = pushed
    last = days[-1]
    cache = ws.path / ".dvc" / "cache"
    history = dir_manifest(cache, workspace.out_hash(last["lock"], "merge_history",
                                                     "data/history"))
    sizes = {rel: (ws.path / "data" / "history" / rel).stat().st_size for rel in history}
    uploaded = {rel for rel, md5 in history.items() if md5 in last["added"]["gcs"]}
    run = dt.date.fromisoformat(str(last["run_date"]))
    new_day = f"day={run - dt.timedelta(days=1)}/events.parquet"
    # Each run writes only files of its own: the new day's file, and a small arrived-<run> file
    # beside each older day that late events reached. Those, and only those, are uploaded; files
    # written by earlier runs never are.
    touched = {new_day if d == str(run - dt.timedelta(days=1)) else f"day={d}/arrived-{run}.parquet"
               for d, rows in json.loads(last["history"])["added_by_day"].items() if rows > 0}
    assert uploaded == touched
    late_files = uploaded - {new_day}
    assert late_files, "the simulator writes late events: some should reach older days"
    assert all(sizes[rel] < sizes[new_day] / 10 for rel in late_files)
    untouched = set(history) - touched
    assert f"day={FIRST_EVENT_DAY}/events.parquet" in untouched
    assert sum(sizes[rel] for rel in uploaded) < sum(sizes.values())
    # The other remotes received the same objects.
    assert last["added"]["gcs"] == last["added"]["azure"] == last["added"]["local"]


def assert_outputs_match_lock(ws: workspace.Workspace, lock: dict) -> None:
    """Every cached output on disk is, file by file, what the lock records."""
    cache = ws.path / ".dvc" / "cache"
    for stage, outs in CACHED_OUTS.items():
        for path in outs:
            manifest = dir_manifest(cache, workspace.out_hash(lock, stage, path))
            assert manifest, f"{path}: directory listing not pulled"
            on_disk = {p.relative_to(ws.path / path).as_posix(): file_md5(p)
                       for p in (ws.path / path).rglob("*") if p.is_file()}
            assert on_disk == manifest, path


@pytest.mark.parametrize("remote", ["gcs", "azure"])
def test_a_new_machine_pulls_any_commit_from_the_cloud_remote(pushed, remote, tmp_path,
                                                              gcs_emulator, azurite):
    ws, days = pushed
    if remote == "gcs":  # endpoint in .dvc/config.local
        clone = ws.clone(tmp_path / "clone")
        clone.configure_remote("gcs", **gcs_emulator.dvc_config)
    else:  # credentials from the environment only
        clone = ws.clone(tmp_path / "clone",
                         env={"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    assert not (clone.path / ".dvc" / "cache").exists()
    clone.dvc("pull", "--remote", remote, *CACHED_OUTS)
    assert_outputs_match_lock(clone, days[-1]["lock"])
    # An older commit's data comes back too: the first day's history, as it was that day.
    clone.git("checkout", "-q", days[0]["sha"])
    clone.dvc("pull", "--remote", remote, "--force", *CACHED_OUTS)
    assert_outputs_match_lock(clone, days[0]["lock"])
    assert sorted(p.name for p in (clone.path / "data" / "history").iterdir()) == \
        [f"day={FIRST_EVENT_DAY}"]
