"""Discs of a split bundle that come one after another into one drive (``--one-drive``): what the core asks
for (:class:`DiscRequest`), who answers (a :class:`Changer`: the CLI's prompt, a ``--media-command``, a GUI), and
how a volume fared when checked on this host (:class:`VolumeCheck`).  The core never prints: it hands a request
to the changer and waits for its answer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


def _never() -> bool:
    """A request whose discs cannot be looked for."""
    return False


@dataclass(frozen=True)
class DiscRequest:
    """What the drive asks for: any one of ``wanted`` (volume names, the first preferred) in ``media``."""

    media: Path
    wanted: tuple[str, ...]
    holds: Mapping[str, str]  # for each wanted volume, what it carries: "parts 12-18 of 40, 3.9 GiB"
    bundle: str = ""  # "coding-agent sequence 42"; empty until the manifest is known
    found: str = ""  # what the drive holds now and why it is not taken, when it holds anything
    refused: bool = False  # ``found`` is a disc refused: another bundle's, or a changed one
    attempt: int = 1  # how many times in a row these volumes were asked for
    seen: tuple[str, ...] = ()  # volumes read from the drive so far
    total: int = 0  # the bundle's volumes (0 until the manifest is known)
    ready: Callable[[], bool] = field(default=_never, compare=False)  # whether a wanted disc is at hand now

    def describe(self) -> str:
        """The volumes asked for, for a prompt: "vol-03 (parts 12-18 of 40, 3.9 GiB)", or several to choose from."""
        if len(self.wanted) == 1:
            held = self.holds.get(self.wanted[0])
            return f"{self.wanted[0]} ({held})" if held else self.wanted[0]
        return f"any of {', '.join(self.wanted)} (the volumes still to read, in any order)"

    def to_dict(self) -> dict[str, object]:
        """The request's fields, for a program that answers it (``--progress json``)."""
        return {
            "media": str(self.media),
            "volumes": list(self.wanted),
            "holds": dict(self.holds),
            "bundle": self.bundle,
            "found": self.found,
            "refused": self.refused,
            "attempt": self.attempt,
            "seen": list(self.seen),
            "total_volumes": self.total,
        }


class Changer(Protocol):
    """Asks for a disc and waits until it is in: a terminal prompt, a line on stdin, a command that loads it.

    ``insert`` returns False when no answer will come (stdin closed, a command that had its chance); the drive
    then stops with an error naming the volume (or the disc it refused)."""

    def insert(self, request: DiscRequest) -> bool:
        """Ask for one of ``request.wanted``; True once the user (or a program) says it is in."""
        ...


@dataclass(frozen=True)
class VolumeCheck:
    """One volume checked on this host: ``pass`` or ``fail``, when, and in which directory (a disc's mount point,
    a folder)."""

    result: str
    at: str
    where: str

    def to_dict(self) -> dict[str, str]:
        """As volumes.json keeps it."""
        return {"result": self.result, "at": self.at, "where": self.where}
