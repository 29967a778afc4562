"""Progress reporting: the core calls a Reporter; the CLI decides how it looks."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def start(self, label: str, total: int) -> None:
        """A new phase moving ``total`` bytes begins."""

    def advance(self, n: int) -> None:
        """``n`` more bytes are done (may be called from worker threads)."""

    def finish(self) -> None:
        """The current phase is done."""

    def note(self, message: str) -> None:
        """A one-line remark for the user (a step, a warning)."""


class NullReporter:
    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def note(self, message: str) -> None:
        pass
