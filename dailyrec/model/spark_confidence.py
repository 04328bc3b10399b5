"""The confidence aggregation on Apache Spark: events -> (user, item, strength) triplets, the same
sums as dailyrec.model.confidence.aggregate, for event sets past one machine (docs/scaling.md).

    triplets(events, config, now, spark) -> DataFrame     user_id, item_id, strength (r_ui), and
                                                          one counts row per group of users
    interactions(triplets) -> confidence.Interactions     the users x items matrix, on this machine

One definition: each group of users (all of a user's events, in history order) goes through
confidence.aggregate itself. A user's row of the matrix depends on that user's events only, and
SciPy sums a row's duplicates in the order the row's events come, so each group's rows are the
whole set's rows, bit for bit; only the id maps are global, and they are rebuilt here from the
triplets with confidence.encode_ids (sorted ids: the same maps as the local build).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from dailyrec.core import spark as SP
from dailyrec.model import confidence as C
from dailyrec.model.settings import ConfidenceConfig

TRIPLETS = "user_id string, item_id string, strength double, events long, events_ignored long"


def triplets(events, config: ConfidenceConfig, now: dt.datetime, spark):
    """events: canonical columns with file_index and row_index (dailyrec.core.spark.read_events).
    Triplet rows have NULL counts; each group adds one row of counts with NULL ids."""
    columns = C.MATRIX_COLUMNS + ["quantity"]

    def aggregate(group: pa.Table) -> pa.Table:
        part = C.aggregate(SP.in_history_order(group).select(columns), config, now)
        rows = part.strength.tocoo()
        counts = pa.table({"user_id": pa.nulls(1, pa.string()), "item_id": pa.nulls(1, pa.string()),
                           "strength": pa.nulls(1, pa.float64()),
                           "events": [part.events], "events_ignored": [part.events_ignored]})
        found = pa.table({"user_id": pa.array(part.user_ids[rows.row], pa.string()),
                          "item_id": pa.array(part.item_ids[rows.col], pa.string()),
                          "strength": pa.array(rows.data, pa.float64()),
                          "events": pa.nulls(rows.nnz, pa.int64()),
                          "events_ignored": pa.nulls(rows.nnz, pa.int64())})
        return pa.concat_tables([found, counts])

    from pyspark.sql import functions as F

    return SP.by_group(events.select(*columns, *SP.ORDER), F.col("user_id"), aggregate,
                       TRIPLETS, spark)


def interactions(found) -> C.Interactions:
    """The triplets (a DataFrame) as the users x items strength matrix, ids sorted."""
    table = found.toArrow()
    counts = pc.is_null(table.column("user_id"))
    totals = table.filter(counts)
    cells = table.filter(pc.invert(counts))
    users, user_ids = C.encode_ids(cells.column("user_id"))
    items, item_ids = C.encode_ids(cells.column("item_id"))
    strength = sp.csr_matrix((cells.column("strength").to_numpy(), (users, items)),
                             shape=(len(user_ids), len(item_ids)))  # one cell per (user, item)
    strength.sort_indices()
    return C.Interactions(user_ids=user_ids, item_ids=item_ids, strength=strength,
                          events=int(np.sum(totals.column("events").to_numpy())),
                          events_ignored=int(np.sum(totals.column("events_ignored").to_numpy())))
