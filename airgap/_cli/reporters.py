"""Reporters the CLI hands to the core: tqdm bars on a terminal, plain periodic lines elsewhere, JSON lines
for a program that follows the run (``--progress json``); and the :class:`Tracker` that remembers how far a
command got, for the line an interruption prints."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from tqdm import tqdm

from airgap._internal.util.fsutil import human_bytes
from airgap._internal.util.text import json_safe, printable
from airgap.progress import NullReporter, Reporter


class _Bar(tqdm):  # type: ignore[misc]  # tqdm is untyped here: Any
    """A tqdm bar that shows bytes in binary units, as every other line of airgap does (MiB, not tqdm's "M"/"MB")."""

    @property
    def format_dict(self) -> dict[str, Any]:
        """tqdm's fields, plus ``done``, ``size`` and ``speed``: the counts in binary units (see :data:`BAR_FORMAT`)."""
        d: dict[str, Any] = super().format_dict
        rate = d.get("rate") or (d["n"] / d["elapsed"] if d.get("elapsed") else None)
        d["done"] = human_bytes(d["n"])
        d["size"] = human_bytes(d["total"]) if d.get("total") else "?"
        d["speed"] = f"{human_bytes(rate)}/s" if rate else "?/s"
        return d


BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {done} of {size} [{elapsed}<{remaining}, {speed}]"
BAR_FORMAT_NO_TOTAL = "{desc}: {done} [{elapsed}, {speed}]"


class TqdmReporter:
    """A tqdm bar per phase, for a terminal: bytes in binary units, never past its total."""

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
        self._bar = _Bar(
            total=total or None,
            desc=printable(label),
            unit="B",
            bar_format=BAR_FORMAT if total else BAR_FORMAT_NO_TOTAL,
            file=self._stream,
            **size,
        )

    def advance(self, n: int) -> None:
        """Move the bar by ``n`` bytes (from any thread); a total that was an estimate grows with what is moved
        beyond it, so the bar never shows more than 100 %."""
        with self._lock:
            if self._bar is not None:
                if self._bar.total and self._bar.n + n > self._bar.total:
                    self._bar.total = self._bar.n + n
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

    def _line(self, final: bool = False) -> str:
        """Progress so far: bytes, percentage, rate and time left.  A total that was an estimate never shows below
        what was moved, and the final line's total is what was moved."""
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        rate = self._done / elapsed
        total = self._done if final and self._total else max(self._total, self._done) if self._total else 0
        if not total:
            return f"{self._label}: {human_bytes(self._done)}, {human_bytes(rate)}/s"
        eta = f", ETA {int((total - self._done) / rate)}s" if rate > 0 and self._done < total else ""
        pct = 100 * self._done // total
        return f"{self._label}: {human_bytes(self._done)} of {human_bytes(total)} ({pct}%), {human_bytes(rate)}/s{eta}"

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
        print(self._line(final=True) + f", done in {time.monotonic() - self._t0:.1f}s", file=self._stream, flush=True)

    def note(self, message: str) -> None:
        """Print a line, escaped."""
        print(printable(message), file=self._stream, flush=True)


PROGRESS_SCHEMA_VERSION = 1  # of the events JsonLinesReporter writes (manifests/cli-progress.schema.json)


class JsonLinesReporter:
    """Progress as one JSON object per line (``--progress json``), for a GUI or a CI log to follow.

    Events (manifests/cli-progress.schema.json): ``start`` (a phase and its total bytes, null if unknown),
    ``advance`` (bytes done so far; at most one every ``interval`` seconds), ``finish`` (the phase's final
    count and duration) and ``note`` (a one-line message).  Every event carries ``schema_version``,
    ``command`` and ``elapsed`` (seconds since the reporter was made)."""

    def __init__(self, stream: TextIO, command: str | None, interval: float = 0.25) -> None:
        """Events written to ``stream``; ``advance`` events at most every ``interval`` seconds."""
        self._stream = stream
        self._command = command
        self._interval = interval
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._phase_t0 = self._t0
        self._last = 0.0
        self._label = ""
        self._total = 0
        self._done = 0

    def _emit(self, event: str, **fields: object) -> None:
        """One event line (the caller holds the lock)."""
        now = time.monotonic()
        line = {
            "schema_version": PROGRESS_SCHEMA_VERSION,
            "event": event,
            "command": self._command,
            "elapsed": round(now - self._t0, 3),
            **fields,
        }
        print(json.dumps(json_safe(line), sort_keys=True, separators=(",", ":")), file=self._stream, flush=True)

    def _counts(self, final: bool = False) -> dict[str, object]:
        """The phase's counts, as advance and finish events carry them: a total that was an estimate is never
        below ``done``, and a finished phase's total is what was moved."""
        total = (self._done if final else max(self._total, self._done)) if self._total else None
        return {"phase": self._label, "done": self._done, "total": total}

    def start(self, label: str, total: int) -> None:
        """A phase begins: one ``start`` event."""
        with self._lock:
            self._label, self._total, self._done = label, total, 0
            self._phase_t0 = self._last = time.monotonic()
            self._emit("start", phase=label, total=total or None)

    def advance(self, n: int) -> None:
        """Count ``n`` more bytes (from any thread); an ``advance`` event when the interval has passed."""
        with self._lock:
            self._done += n
            now = time.monotonic()
            if now - self._last >= self._interval:
                self._last = now
                self._emit("advance", **self._counts())

    def finish(self) -> None:
        """The phase ended: one ``finish`` event with the final count."""
        with self._lock:
            self._emit("finish", **self._counts(final=True), seconds=round(time.monotonic() - self._phase_t0, 3))

    def note(self, message: str) -> None:
        """One ``note`` event."""
        with self._lock:
            self._emit("note", message=message)


@dataclass(frozen=True)
class Progress:
    """How far a command got: the phase it was in, bytes done of its total, and phases finished before it."""

    phase: str | None
    done: int
    total: int
    phases_finished: int

    def describe(self) -> str:
        """E.g. ``during 'pack' after 12.0 MiB of 40.0 MiB (30%)``; ``before any data moved``."""
        if self.phase is None:
            return "before any data moved"
        total = max(self.total, self.done) if self.total else 0
        pct = f" ({100 * self.done // total}%)" if total else ""
        of = f" of {human_bytes(total)}" if total else ""
        return f"during '{printable(self.phase)}' after {human_bytes(self.done)}{of}{pct}"

    def to_dict(self) -> dict[str, object]:
        """As the ``progress`` field of an interruption's JSON error."""
        return {"phase": self.phase, "done": self.done, "total": self.total or None, "phases_finished": self.phases_finished}


class Tracker:
    """Passes progress on to the reporter that shows it, and remembers how far the command got."""

    def __init__(self, inner: Reporter) -> None:
        """Progress passed on to ``inner``."""
        self._inner = inner
        self._lock = threading.Lock()
        self._phase: str | None = None
        self._total = 0
        self._done = 0
        self._finished = 0

    def start(self, label: str, total: int) -> None:
        """A phase of ``total`` bytes begins."""
        with self._lock:
            self._phase, self._total, self._done = label, total, 0
        self._inner.start(label, total)

    def advance(self, n: int) -> None:
        """``n`` more bytes are done (from any thread)."""
        with self._lock:
            self._done += n
        self._inner.advance(n)

    def finish(self) -> None:
        """The phase is done."""
        with self._lock:
            self._finished += 1
        self._inner.finish()

    def note(self, message: str) -> None:
        """A one-line remark, passed on."""
        self._inner.note(message)

    def snapshot(self) -> Progress:
        """How far the command has got, now."""
        with self._lock:
            return Progress(self._phase, self._done, self._total, self._finished)


PROGRESS_MODES = ("auto", "bar", "lines", "json", "none")


def choose(mode: str, command: str | None, stream: TextIO | None = None) -> Reporter:
    """The reporter for ``--progress MODE`` on ``stream`` (stderr): auto is bars on a terminal and periodic
    lines elsewhere; none shows nothing (``-q``)."""
    stream = stream or sys.stderr
    if mode == "none":
        return NullReporter()
    if mode == "json":
        return JsonLinesReporter(stream, command)
    if mode == "bar" or (mode == "auto" and stream.isatty()):
        return TqdmReporter(stream)
    return PlainReporter(stream)
