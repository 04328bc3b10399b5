"""serving/keys.py: the layout publish writes and the API reads must agree byte for byte."""

import numpy as np
import pyarrow as pa

from dailyrec.publish import connection
from dailyrec.publish import keys as K


def test_vectorised_bucket_matches_the_apis_per_request_hash():
    ids = ["", "0", "1", "u42", "user-0-17", "ünïcødé", "用户", "a" * 300, "9000001",
           *(f"u{i}" for i in range(2000))]
    for n_buckets in (1, 2, 64, 4096):
        vectorised = K.buckets_of(np.array(ids), n_buckets)
        assert vectorised.tolist() == [K.bucket_of(u, n_buckets) for u in ids]
    # a sliced Arrow array (non-zero offset) hashes the same
    sliced = pa.array(ids).slice(5, 100)
    assert K.user_hashes(sliced).tolist() == [K.user_hash(u) for u in ids[5:105]]


def test_users_spread_over_every_bucket():
    n_buckets = K.bucket_count(20_000)
    assert n_buckets == 256  # 20k / 128 per bucket, rounded up to a power of two
    counts = np.bincount(K.buckets_of(np.array([f"u{i}" for i in range(20_000)]), n_buckets),
                         minlength=n_buckets)
    assert counts.min() > 40 and counts.max() < 130
    assert K.bucket_count(0) == 1 and K.bucket_count(129) == 2


def test_records_round_trip_and_drop_empty_slots():
    positions = np.array([[5, 0, 7], [3, -1, -1]])
    scores = np.array([[0.9, 0.5, -0.25], [1.5, 0.0, 0.0]], dtype=np.float32)
    records = K.encode_records(positions, scores)
    assert records.shape == (2, K.record_width(3))
    assert K.decode_record(records[0].tobytes(), 3) == [(5, 0.8999999761581421), (0, 0.5),
                                                        (7, -0.25)]
    assert K.decode_record(records[1].tobytes(), 3) == [(3, 1.5)]


def test_layout_keys_belong_to_their_version():
    layout = K.Layout("rec")
    keys = layout.version_keys("2026-11-21.3", 4, 2)
    assert keys[:4] == ["rec:v:2026-11-21.3:meta", "rec:v:2026-11-21.3:items",
                        "rec:v:2026-11-21.3:fallback", "rec:v:2026-11-21.3:factors"]
    assert keys[4:] == ([f"rec:v:2026-11-21.3:b:{i}" for i in range(4)]
                        + [f"rec:v:2026-11-21.3:h:{i}" for i in range(4)]
                        + [f"rec:v:2026-11-21.3:s:{i}" for i in range(2)])
    assert layout.version_pattern("2026-11-21.3") == "rec:v:2026-11-21.3:*"
    assert layout.version_pattern("a*b") == "rec:v:a\\*b:*"


def test_redacted_url_hides_the_password():
    assert connection.redacted("redis://:s3cret@10.0.0.5:6380/2") == "redis://:***@10.0.0.5:6380/2"
    assert connection.redacted("rediss://app:pw@cache:6379/0") == "rediss://app:***@cache:6379/0"
    assert connection.redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
