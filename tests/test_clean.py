"""data/clean as a file per UTC day (dailyrec.quality.filtering.clean).

What the layout promises, each a test below:
- a day file's bytes depend only on that day's events: a day shared by two windows (different
  neighbours, different window dictionaries, pieces cut differently) is the same file in both, so
  DVC stores and pushes it once;
- reading the days back gives the events written, in order, in the canonical schema;
- a model trained from the day files is the model trained from the same events in one file,
  byte for byte (the layout changes no result);
- a failed or out-of-order write leaves the previous data/clean as it was, and what a killed run
  left beside it is removed by the next.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dailyrec.quality.filtering import clean
from dailyrec.core import schema as S
from dailyrec.core.errors import DataError
from dailyrec.model import training
from dailyrec.model import settings as model
from tests import params as raw_params
from tests.clean_events import human_events

FIRST = dt.date(2026, 11, 1)


def events(days: int = 4, first: dt.date = FIRST, seed: int = 3) -> pa.Table:
    """Simulated human events, in time order; some user agents and addresses missing (NULL)."""
    frame = human_events(first, days, users=120, items=50, events_per_day=400, seed=seed)
    frame.loc[frame.index % 7 == 0, "user_agent"] = None
    frame.loc[frame.index % 11 == 0, "ip"] = None
    frame.loc[frame.index % 5 == 0, "quantity"] = 2.0
    return S.to_table(frame)


def day_of(table: pa.Table, day: dt.date) -> pa.Table:
    days = S.ts_micros(table) // S.MICROS_PER_DAY
    return table.filter(pa.array(days == (day - dt.date(1970, 1, 1)).days))


def write(path, *pieces: pa.Table) -> dict[str, bytes]:
    with clean.DayWriter(path) as writer:
        for piece in pieces:
            writer.add(piece)
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_a_day_file_depends_only_on_that_days_events(tmp_path):
    full = events(days=6)
    # Window A: days 1-4 in one piece; window B: days 3-6, as dictionary columns over all six
    # days' values (the window's dictionary), cut into pieces of 97 rows.
    a = write(tmp_path / "a", pa.concat_tables([day_of(full, FIRST + dt.timedelta(d))
                                                 for d in range(4)]))
    later = pa.concat_tables([day_of(full, FIRST + dt.timedelta(d)) for d in range(2, 6)])
    coded = pa.Table.from_arrays(
        [pa.chunked_array([full.column(n).combine_chunks().dictionary_encode()
                           .take(pa.array(np.arange(len(full))[-later.num_rows:]))])
         if n in clean.DICTIONARY_COLUMNS else later.column(n) for n in later.column_names],
        names=later.column_names)
    b = write(tmp_path / "b", *(coded.slice(i, 97) for i in range(0, coded.num_rows, 97)))
    assert sorted(a) == [f"2026-11-0{d}.parquet" for d in range(1, 5)]
    assert sorted(b) == [f"2026-11-0{d}.parquet" for d in range(3, 7)]
    assert a["2026-11-03.parquet"] == b["2026-11-03.parquet"]
    assert a["2026-11-04.parquet"] == b["2026-11-04.parquet"]
    # and a day whose events differ by one is another file
    fewer = day_of(full, FIRST + dt.timedelta(2)).slice(1)
    assert write(tmp_path / "c", fewer)["2026-11-03.parquet"] != a["2026-11-03.parquet"]


def test_the_days_read_back_are_the_events_written(tmp_path):
    full = events()
    write(tmp_path / "clean", full)
    assert clean.read(tmp_path / "clean", list(S.COLUMNS)).equals(full)
    # any Parquet reader gets the canonical schema back, with no dictionary types
    whole = pq.read_table(tmp_path / "clean")
    assert whole.schema.equals(S.EVENT_SCHEMA, check_metadata=False)
    assert whole.sort_by([("ts", "ascending"), ("event_id", "ascending")]).equals(full)
    coded = training.read_events(tmp_path / "clean", columns=list(S.COLUMNS), dictionary=True)
    assert coded.column("user_id").type == pa.dictionary(pa.int32(), pa.string())
    assert coded.cast(S.EVENT_SCHEMA).equals(full)


def test_each_days_dictionaries_hold_only_its_own_values_sorted(tmp_path):
    full = events(days=2)
    write(tmp_path / "clean", full)
    first = pq.read_table(tmp_path / "clean" / "2026-11-01.parquet",
                          read_dictionary=clean.DICTIONARY_COLUMNS)
    for name in clean.DICTIONARY_COLUMNS:
        values = first.column(name).chunk(0).dictionary.to_pylist()
        assert values == sorted(set(day_of(full, FIRST).column(name).drop_null().to_pylist()))


def test_a_model_from_the_day_files_is_the_model_from_one_file(tmp_path):
    full = events(days=5)
    write(tmp_path / "clean", full)
    pq.write_table(full, tmp_path / "one.parquet")
    config = model.train(raw_params.of(raw_params.project_params("2026-11-06")))
    end = dt.datetime(2026, 11, 6, tzinfo=dt.timezone.utc)
    for name, source in (("days", tmp_path / "clean"), ("one", tmp_path / "one.parquet")):
        training.train(config, dt.date(2026, 11, 6), end, source, tmp_path / f"model-{name}")
    for part in ("als.npz", "ids.npz", "user_items.npz"):
        assert (tmp_path / "model-days" / part).read_bytes() == \
            (tmp_path / "model-one" / part).read_bytes(), part


def test_an_empty_window_is_an_empty_directory(tmp_path):
    assert write(tmp_path / "clean", S.EVENT_SCHEMA.empty_table()) == {}
    table = training.read_events(tmp_path / "clean", dictionary=True)
    assert table.num_rows == 0 and table.column_names == ["user_id", "item_id", "event_type",
                                                          "ts", "quantity"]


def test_a_failed_write_leaves_the_old_days_and_nothing_beside_them(tmp_path):
    full = events(days=3)
    before = write(tmp_path / "clean", full)
    with pytest.raises(DataError, match="events out of time order: a day 2026-11-01 after "
                                        "2026-11-03"):
        write(tmp_path / "clean", day_of(full, FIRST + dt.timedelta(2)), day_of(full, FIRST))
    with pytest.raises(RuntimeError, match="killed"):
        with clean.DayWriter(tmp_path / "clean") as writer:
            writer.add(day_of(full, FIRST))
            raise RuntimeError("killed")
    assert {p.name: p.read_bytes() for p in (tmp_path / "clean").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean"]


def test_what_a_killed_run_left_is_removed_by_the_next(tmp_path):
    (tmp_path / ".clean.123.abc.tmp").mkdir()
    (tmp_path / ".clean.123.abc.tmp" / "2026-11-01.parquet").write_bytes(b"half")
    (tmp_path / ".clean.123.def.old").mkdir()
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "events.parquet").write_bytes(b"an older layout's file")
    write(tmp_path / "clean", events(days=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean"]
    assert [p.name for p in (tmp_path / "clean").iterdir()] == ["2026-11-01.parquet"]


def test_a_day_over_a_row_group_is_cut_as_one_write_would(tmp_path, monkeypatch):
    monkeypatch.setattr(clean, "ROW_GROUP_ROWS", 100)
    full = day_of(events(days=1), FIRST)
    write(tmp_path / "clean", *(full.slice(i, 33) for i in range(0, full.num_rows, 33)))
    meta = pq.ParquetFile(tmp_path / "clean" / "2026-11-01.parquet").metadata
    assert meta.num_row_groups == -(-full.num_rows // 100) > 1
    assert pd.Series([meta.row_group(i).num_rows for i in range(meta.num_row_groups)]).sum() == \
        full.num_rows


def test_a_kept_day_gone_before_it_is_linked_is_written(tmp_path):
    """KeptDays found a file that is gone when it is linked (the state folder cleaned meanwhile):
    the writer says so, the day is written from its events, and nothing is left beside it."""
    full = events(days=2)
    with clean.DayWriter(tmp_path / "clean") as writer:
        assert not writer.add_file(FIRST, tmp_path / "gone.parquet", 10)
        writer.add(full)
    assert write(tmp_path / "fresh", full) == \
        {p.name: p.read_bytes() for p in sorted((tmp_path / "clean").iterdir())}
    assert writer.rows == full.num_rows
