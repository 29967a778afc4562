"""Run a generator in a worker thread behind a bounded queue, so producing and consuming overlap."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

from airgap._internal.util.tarstream import Readable

T = TypeVar("T")
_DONE = object()


def threaded(source: Iterator[T], depth: int = 4) -> Iterator[T]:
    """Yield what ``source`` yields, computed ahead in a thread; at most ``depth`` items wait."""
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        """Queue an item, giving up (False) once the consumer has stopped, so the worker never blocks forever."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        """Drain ``source`` into the queue, then the end marker; an exception is queued to be raised in the consumer."""
        try:
            for item in source:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer and raised there
            put(e)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name="airgap-producer", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join(timeout=30)


class PrefetchReader:
    """Reads a stream ahead in a worker thread, ``depth`` blocks at most, so the producer on the other
    side (the Docker engine writing its export into a socket, a disk) never waits while we compress."""

    def __init__(self, source: Readable, block: int = 1 << 20, depth: int = 16) -> None:
        self._q: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._chunk = b""
        self._off = 0
        self._eof = False
        self._thread = threading.Thread(target=self._work, args=(source, block), name="airgap-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException) -> bool:
        """Queue a block, giving up (False) once the reader is closed, so the worker never blocks forever."""
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, source: Readable, block: int) -> None:
        """Read blocks into the queue until the end of the stream (b""); an exception is queued and raised by
        :meth:`read`."""
        try:
            while True:
                data = source.read(block)
                if not self._put(data) or not data:
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the reader and raised there
            self._put(e)

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (fewer at a block boundary); b"" only at the end of the stream."""
        while self._off >= len(self._chunk):
            if self._eof:
                return b""
            item = self._q.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return b""
            self._chunk, self._off = item, 0
        end = len(self._chunk) if n < 0 else min(len(self._chunk), self._off + n)
        data = self._chunk[self._off : end] if (self._off or end < len(self._chunk)) else self._chunk
        self._off = end
        return data

    def close(self) -> None:
        """Stop reading ahead: the worker ends at its next block (one blocked in a read ends with the stream)."""
        self._stop.set()
        self._thread.join(timeout=2)  # a worker blocked in a read ends with the stream

    def __enter__(self) -> PrefetchReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
