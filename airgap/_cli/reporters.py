"""Reporters the CLI hands to the core: tqdm bars on a terminal, plain periodic lines elsewhere."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, TextIO

from tqdm import tqdm

from airgap._internal.util.fsutil import human_bytes
from airgap._internal.util.text import printable
from airgap.progress import NullReporter, Reporter


class TqdmReporter:
    """A tqdm bar per phase, for a terminal."""

    def __init__(self, stream: TextIO) -> None:
        """Bars drawn on ``stream``."""
        self._stream = stream
        self._bar: tqdm[None] | None = None
        self._lock = threading.Lock()

    def start(self, label: str, total: int) -> None:
        """Open a bar for a phase of ``total`` bytes (unknown if 0)."""
        try:
            width = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError):
            width = 0
        # a terminal that reports no size (some serial consoles, 'script') still gets a bar
        size: dict[str, Any] = {"dynamic_ncols": True} if width > 0 else {"ncols": 100, "nrows": 24}
        self._bar = tqdm(
            total=total or None, desc=printable(label), unit="B", unit_scale=True, unit_divisor=1024, file=self._stream, **size
        )

    def advance(self, n: int) -> None:
        """Move the bar by ``n`` bytes (from any thread)."""
        with self._lock:
            if self._bar is not None:
                self._bar.update(n)

    def finish(self) -> None:
        """Close the bar, its total set to what was moved."""
        if self._bar is not None:
            if self._bar.total != self._bar.n:  # totals that were estimates (pack) end at what was moved
                self._bar.total = self._bar.n
                self._bar.refresh()
            self._bar.close()
            self._bar = None

    def note(self, message: str) -> None:
        """Print a line above the bar, escaped."""
        if self._bar is not None:
            self._bar.write(printable(message), file=self._stream)
        else:
            print(printable(message), file=self._stream)


class PlainReporter:
    """One line every ``interval`` seconds and one at the end: for logs and pipes."""

    def __init__(self, stream: TextIO, interval: float = 10.0) -> None:
        """Lines written to ``stream`` at most every ``interval`` seconds."""
        self._stream = stream
        self._interval = interval
        self._lock = threading.Lock()
        self._label = ""
        self._total = 0
        self._done = 0
        self._t0 = 0.0
        self._last = 0.0

    def start(self, label: str, total: int) -> None:
        """Begin a phase of ``total`` bytes (unknown if 0)."""
        self._label, self._total, self._done = printable(label), total, 0
        self._t0 = self._last = time.monotonic()

    def _line(self) -> str:
        """Progress so far: bytes, percentage, rate and time left."""
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        rate = self._done / elapsed
        pct = f" ({100 * self._done // self._total}%)" if self._total else ""
        eta = ""
        if self._total and rate > 0 and self._done < self._total:
            eta = f", ETA {int((self._total - self._done) / rate)}s"
        return f"{self._label}: {human_bytes(self._done)} of {human_bytes(self._total)}{pct}, {human_bytes(rate)}/s{eta}"

    def advance(self, n: int) -> None:
        """Count ``n`` more bytes (from any thread); print a line when the interval has passed."""
        with self._lock:
            self._done += n
            now = time.monotonic()
            if now - self._last >= self._interval:
                self._last = now
                print(self._line(), file=self._stream, flush=True)

    def finish(self) -> None:
        """Print the final line with the phase's duration."""
        print(self._line() + f", done in {time.monotonic() - self._t0:.1f}s", file=self._stream, flush=True)

    def note(self, message: str) -> None:
        """Print a line, escaped."""
        print(printable(message), file=self._stream, flush=True)


def for_terminal(quiet: bool, stream: TextIO | None = None) -> Reporter:
    """The reporter for ``stream`` (stderr): none when quiet, bars on a terminal, periodic lines elsewhere."""
    stream = stream or sys.stderr
    if quiet:
        return NullReporter()
    if stream.isatty():
        return TqdmReporter(stream)
    return PlainReporter(stream)
