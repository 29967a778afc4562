"""One drive and a shelf of discs: a split bundle's vol-NN folders are the discs, a directory is the drive's
mount point, and inserting a disc moves its folder there (ejecting the one inside back to where it came from).
For the core, :class:`ScriptedChanger` answers each request; for the CLI, :func:`swap_script` is a
``--media-command`` that does the same from another process."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from airgap.discs import DiscRequest

_LISTING = re.compile(r"^volume-([0-9]{2,3})\.txt$")


def held_volume(directory: Path) -> str | None:
    """The volume a disc folder holds, by its listing's name."""
    for name in sorted(os.listdir(directory)) if directory.is_dir() else []:
        m = _LISTING.fullmatch(name)
        if m:
            return f"vol-{m.group(1)}"
    return None


class Drive:
    """A drive at ``media`` whose discs are the vol-NN folders of ``shelf`` (or any folder handed to insert)."""

    def __init__(self, shelf: Path, media: Path) -> None:
        self.shelf = shelf
        self.media = media
        self.inserted: list[str] = []  # what went in, in order (a foreign disc as "other:vol-NN")
        self._origin: Path | None = None  # where the disc in the drive came from
        media.mkdir(parents=True, exist_ok=True)

    def eject(self) -> None:
        """Take the disc out: its folder goes back where it came from; the mount point stays, empty."""
        if self._origin is not None:
            os.rename(self.media, self._origin)
            self.media.mkdir()
            self._origin = None

    def insert(self, volume: str, source: Path | None = None) -> None:
        """Put a disc in: ``volume`` from the shelf, or the folder ``source`` (another bundle's disc, a changed one)."""
        self.eject()
        origin = source if source is not None else self.shelf / volume
        os.rmdir(self.media)
        os.rename(origin, self.media)
        self._origin = origin
        self.inserted.append(volume if source is None else f"other:{volume}")


class ScriptedChanger:
    """Answers each request by inserting the disc ``choose`` picks: a volume of the shelf, a folder from elsewhere
    (another bundle's disc), or None to give up; remembers every request."""

    def __init__(self, drive: Drive, choose: Callable[[DiscRequest], str | Path | None] = lambda r: r.wanted[0]) -> None:
        self.drive = drive
        self.choose = choose
        self.requests: list[DiscRequest] = []

    def insert(self, request: DiscRequest) -> bool:
        """Insert the chosen disc; False when the script gives up."""
        self.requests.append(request)
        chosen = self.choose(request)
        if chosen is None:
            return False
        if isinstance(chosen, Path):
            self.drive.insert(held_volume(chosen) or chosen.name, chosen)
        else:
            self.drive.insert(chosen)
        return True


SWAP = r"""
import os, re, sys, time
shelf, media, log = sys.argv[1], sys.argv[2], sys.argv[3]
wanted = sys.argv[4:]
with open(log, "a") as fh:
    fh.write(" ".join(wanted) + "\n")
if wanted[0] == os.environ.get("DISC_SLOW"):  # the person takes a while to find this disc
    time.sleep(float(os.environ["DISC_DELAY"]))
for name in os.listdir(media):
    m = re.fullmatch(r"volume-([0-9]{2,3})\.txt", name)
    if m:
        os.rename(media, os.path.join(shelf, "vol-" + m.group(1)))
        os.mkdir(media)
        break
os.rmdir(media)
os.rename(os.path.join(shelf, wanted[0]), media)
"""


def swap_script(directory: Path, shelf: Path, media: Path, log: Path) -> str:
    """A ``--media-command`` value: a script that inserts the first volume asked for (ejecting the disc in the
    drive back onto the shelf) and logs each request as a line; with ``DISC_SLOW=vol-NN`` and ``DISC_DELAY=S`` in
    its environment, a request for that volume waits S seconds before inserting it (a person slow to the drive)."""
    script = directory / "swap.py"
    script.write_text(SWAP)
    return f"{sys.executable} {script} {shelf} {media} {log}"
