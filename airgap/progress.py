"""Progress reporting: the core calls a Reporter; the CLI decides how it looks."""

from __future__ import annotations

import threading
from typing import Protocol


class Reporter(Protocol):
    """How the core tells of progress: phases of bytes moved, and one-line notes; it never prints itself."""

    def start(self, label: str, total: int) -> None:
        """A new phase moving ``total`` bytes begins."""

    def advance(self, n: int) -> None:
        """``n`` more bytes are done (may be called from worker threads)."""

    def finish(self) -> None:
        """The current phase is done."""

    def note(self, message: str) -> None:
        """A one-line remark for the user (a step, a warning)."""


class NullReporter:
    """A Reporter that shows nothing."""

    def start(self, label: str, total: int) -> None:
        """Shows nothing."""

    def advance(self, n: int) -> None:
        """Shows nothing."""

    def finish(self) -> None:
        """Shows nothing."""

    def note(self, message: str) -> None:
        """Shows nothing."""


class Transfer:
    """What one command moves, passed down to every reader and writer instead of callbacks and counters.

    ``moved`` tells the reporter and adds to :attr:`bytes`; ``part_checked`` tallies how each part was
    checked.  Both may be called from worker threads (a prefetching reader, the loopback registry)."""

    def __init__(self, reporter: Reporter | None = None) -> None:
        self.reporter: Reporter = reporter if reporter is not None else NullReporter()
        self.bytes = 0  # payload bytes read or written so far
        self.parts_hashed = 0  # parts whose bytes were hashed against the manifest
        self.parts_cached = 0  # parts verified before (by verify or an interrupted install): not hashed again
        self._lock = threading.Lock()

    def moved(self, n: int) -> None:
        """``n`` more payload bytes went through."""
        with self._lock:
            self.bytes += n
        self.reporter.advance(n)

    def part_checked(self, cached: bool) -> None:
        """One more part was read whole: hashed now, or known from the verified-parts cache."""
        with self._lock:
            if cached:
                self.parts_cached += 1
            else:
                self.parts_hashed += 1
