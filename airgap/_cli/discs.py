"""Asking for discs (``--one-drive``): a prompt on stderr answered by Enter or a line on stdin, a JSON event
for a program (``--progress json``), or a command that loads the disc (``--media-command``).

A person at a terminal sees ``insert vol-03 (parts 12-18 of 40, 3.9 GiB) into /media/cdrom, then press
Enter``; the disc is also noticed without Enter once it is mounted there.  A script or a GUI reads the same
prompt (or, with ``--progress json``, an ``insert`` event) on stderr and answers each with one line on stdin
once the disc is in; stdin at its end means no disc will come, and the command stops naming the volume."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TextIO

from tqdm import tqdm

from airgap._cli.reporters import PROGRESS_SCHEMA_VERSION
from airgap._internal.format.discs import CommandChanger
from airgap._internal.util.text import json_safe, printable
from airgap.discs import Changer, DiscRequest


class PromptChanger:
    """Asks on stderr and waits for a line on stdin (or, on a terminal, for the disc to appear)."""

    def __init__(self, command: str | None, as_json: bool, stream: TextIO | None = None, stdin_fd: int | None = None) -> None:
        """Prompts for ``command`` written to ``stream`` (stderr), as JSON events with ``as_json``; answers read
        from ``stdin_fd`` (stdin's)."""
        self._command = command
        self._json = as_json
        self._stream = stream or sys.stderr
        self._fd = _stdin_fd() if stdin_fd is None else stdin_fd
        self._tty = self._fd is not None and os.isatty(self._fd)
        self._pending = b""
        self._cancel = threading.Event()
        self._t0 = time.monotonic()

    def cancel(self) -> None:
        """Stop waiting (Ctrl-C, SIGTERM)."""
        self._cancel.set()

    def insert(self, request: DiscRequest) -> bool:
        """Show the request, then wait for an answer: True once given, False at the end of stdin."""
        self._show(request)
        return self._wait(request)

    def _show(self, request: DiscRequest) -> None:
        """The prompt: what the drive holds and why it does not do, then what to insert."""
        answer = "then press Enter" if self._tty else "then send a line on stdin"
        message = f"insert {request.describe()} into {request.media}, {answer}"
        if self._json:
            event = {
                "schema_version": PROGRESS_SCHEMA_VERSION,
                "event": "insert",
                "command": self._command,
                "elapsed": round(time.monotonic() - self._t0, 3),
                "message": message,
                **request.to_dict(),
            }
            print(json.dumps(json_safe(event), sort_keys=True, separators=(",", ":")), file=self._stream, flush=True)
            return
        lines = []
        if request.found:
            lines.append(f"{'refused: ' if request.refused else ''}{request.found}")
        lines.append(message)
        with tqdm.external_write_mode(file=self._stream):
            for line in lines:
                print(printable(line), file=self._stream, flush=True)

    def _wait(self, request: DiscRequest) -> bool:
        """A line on stdin, or on a terminal the disc itself; False at the end of stdin or when cancelled."""
        if self._fd is None:
            return False
        if self._tty:
            with contextlib.suppress(termios.error, OSError):
                termios.tcflush(self._fd, termios.TCIFLUSH)  # an Enter typed earlier answers nothing
        while not self._cancel.is_set():
            if b"\n" in self._pending:
                self._pending = self._pending.split(b"\n", 1)[1]
                return True
            try:
                readable, _, _ = select.select([self._fd], [], [], 0.5)
            except (OSError, ValueError):
                return False
            if readable:
                data = os.read(self._fd, 4096)
                if not data:
                    answered, self._pending = bool(self._pending), b""
                    return answered
                self._pending += data
            elif self._tty and request.ready():
                return True
        return False


def _stdin_fd() -> int | None:
    """stdin's file descriptor, or None when there is none to read (closed, or replaced by a test harness)."""
    try:
        return sys.stdin.fileno() if sys.stdin is not None else None
    except (OSError, ValueError, AttributeError):
        return None


@contextlib.contextmanager
def changer(one_drive: bool, media_command: str | None, command: str | None, as_json: bool) -> Iterator[Changer | None]:
    """The changer ``--one-drive`` / ``--media-command`` ask for (None without either), for the block; Ctrl-C or
    SIGTERM while it waits stops the wait at once, then interrupts the command as usual."""
    if not one_drive and media_command is None:
        yield None
        return
    chosen: PromptChanger | CommandChanger = CommandChanger(media_command) if media_command else PromptChanger(command, as_json)
    with _on_signals(chosen.cancel):
        yield chosen


@contextlib.contextmanager
def _on_signals(cancel: Callable[[], None]) -> Iterator[None]:
    """Call ``cancel`` first on SIGINT and SIGTERM, then what was there before (the worker waiting for a disc lets
    go, so the command unwinds at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: FrameType | None) -> Any:
        """Stop the wait, then let the earlier handler act."""
        cancel()
        before = previous[signal.Signals(signum)]
        if callable(before):
            return before(signum, frame)
        if before == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        return None

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)
