"""Reading ahead: the next items of an iterator produced on a thread of their own while the
caller works on the current one.

    prefetched(items, depth=2) -> the same items, in the same order

For a producer that spends its time outside the GIL (a database driver filling Arrow batches,
a file read) in front of a consumer that spends it in NumPy, pandas or Arrow: the two overlap
instead of taking turns. At most `depth` items wait, so memory stays bounded. An exception
in the producer is raised in the caller, where the item would have come; a caller that stops
early (break, an exception of its own) stops the producer at its next item.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    waiting: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                waiting.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as err:  # raised again in the caller
            put((_DONE, err))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # a generator's own clean-up (a connection, a file) runs here
                close()

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = waiting.get()
            if err is not None:
                raise err
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()
