"""dailyrec.ingest.streams.prefetched: the same items in the same order, the producer's error raised where
its item would have come, and a caller that stops early stops the producer and runs its clean-up."""

from __future__ import annotations

import threading

import pytest

from dailyrec.ingest.streams import prefetched


def test_the_same_items_in_the_same_order_read_on_another_thread():
    threads = set()

    def produce():
        for i in range(1000):
            threads.add(threading.current_thread().name)
            yield i

    assert list(prefetched(produce(), depth=3)) == list(range(1000))
    assert threads == {"prefetch"}


def test_an_error_in_the_producer_is_raised_after_the_items_before_it():
    def produce():
        yield 1
        yield 2
        raise LookupError("the database went away")

    seen = []
    with pytest.raises(LookupError, match="went away"):
        for item in prefetched(produce()):
            seen.append(item)
    assert seen == [1, 2]


def test_stopping_early_stops_the_producer_and_closes_it():
    produced, closed = [], threading.Event()

    def produce():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()  # e.g. the connection is given back

    for item in prefetched(produce(), depth=2):
        if item == 5:
            break
    assert closed.wait(5)
    assert len(produced) <= 5 + 1 + 2 + 1  # this one, the ones waiting, the one being made
