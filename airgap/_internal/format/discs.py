"""Reading a split bundle from one drive: its volumes (discs) come one after another into one directory.

A field engineer has one DVD drive and a stack of discs, ``vol-01`` to ``vol-NN``.  With ``--one-drive`` the
bundle is read from the drive's directory (its mount point; or, where a desktop mounts each disc under its
label, the folders directly below it) as the discs come in, in any order, with nothing copied first:

- a disc is known by its listing, ``volume-NN.txt``, a signed file: its bytes must match the sha256 the
  signed manifest gives for it, so a disc of another bundle, of an older sequence, or with a changed listing
  is refused, naming the disc and what it claims to be; the first volume's disc must also carry the very
  manifest in use;
- the manifest comes from the disc that carries it, or from the copy an earlier run on this host kept
  (:class:`~airgap._internal.format.cache.KnownBundles`), its signatures checked against ``--trust`` again;
- when none of the discs the reader needs is in the drive, a :class:`Changer` asks for one (a terminal
  prompt, a line on stdin, a ``--media-command`` hook) and the drive looks again.

An install's stream asks for discs twice over: :func:`in_disc_order` orders the members by disc (whatever
disc is in the drive is read first, then any disc still needed, so the discs may come in any order), and a
blob whose parts continue on the next disc asks for that disc by name when it gets there
(:meth:`OneDrive.require`, through :func:`~airgap._internal.format.reader.open_part`).  Each disc is
checked when it comes (:func:`check_disc`), since a drive cannot show a disc that is not in it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from airgap._internal.format.cache import KnownBundles, VerifiedCache, file_key
from airgap._internal.format.check import PartResult, PartsFailed, check_part
from airgap._internal.format.media import LISTING_RESERVE
from airgap._internal.format.origins import Origin, parts_to_open
from airgap._internal.format.reader import (
    LoadedBundle,
    PartProblem,
    Unexpected,
    find_unexpected,
    open_part,
    read_manifest_bytes,
    read_signatures,
    refuse_unexpected,
)
from airgap._internal.util import fsutil
from airgap._internal.util.fsutil import human_bytes
from airgap._internal.util.text import printable
from airgap.discs import Changer, DiscRequest, VolumeCheck
from airgap.errors import EnvironmentProblem, Error, FormatError, IntegrityError, TrustError, UsageError
from airgap.model.manifest import MANIFEST_NAME, BundleFile, Manifest, Part, format_time
from airgap.trust.keys import PublicKey
from airgap.trust.policy import TrustResult, check_trust

T = TypeVar("T")
FIRST = "vol-01"  # the first volume's name, as asked for before the manifest says (vol-001 past 99 volumes)
_LISTING_RE = re.compile(r"^volume-[0-9]{2,3}\.txt$")
_VOLUME_ARG_RE = re.compile(r"^(?:vol-)?([0-9]{1,3})$")


# -- asking for a disc ---------------------------------------------------------------------------------


class NeverAsk:
    """A drive that holds what it holds: ``verify --volume`` checks the disc in it, and asks for none."""

    def insert(self, request: DiscRequest) -> bool:
        """Never waits."""
        return False


class CommandChanger:
    """``--media-command CMD``: runs ``CMD VOLUME...`` (the volumes wanted, the first preferred) with
    ``AIRGAP_MEDIA``, ``AIRGAP_VOLUME`` (the first) and ``AIRGAP_VOLUMES`` set, and takes its exit status 0 as
    "the disc is in".  Its output goes to stderr (stdout is the command's result).  A command that loaded a disc
    the drive does not take is not asked again: a robot does not get better by being asked twice."""

    def __init__(self, command: str) -> None:
        """The command line, split as a shell would (no shell runs it)."""
        try:
            self.argv = shlex.split(command)
        except ValueError as e:
            raise UsageError(f"--media-command {command!r}: {e}", hint="quote it as a shell would") from e
        if not self.argv:
            raise UsageError("--media-command is empty", hint="name a command that loads the disc it is given")
        self.command = command
        self._cancel = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None

    def cancel(self) -> None:
        """Stop waiting (Ctrl-C, SIGTERM): a running command is terminated."""
        self._cancel.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def insert(self, request: DiscRequest) -> bool:
        """Run the command once for these volumes; True when it exits 0."""
        if request.attempt > 1 or self._cancel.is_set():
            return False
        env = {
            **os.environ,
            "AIRGAP_MEDIA": str(request.media),
            "AIRGAP_VOLUME": request.wanted[0],
            "AIRGAP_VOLUMES": " ".join(request.wanted),
        }
        try:
            # its output goes to our stderr (fd 2): stdout carries the command's result
            self._proc = subprocess.Popen([*self.argv, *request.wanted], env=env, stdin=subprocess.DEVNULL, stdout=2)
        except OSError as e:
            raise EnvironmentProblem(
                f"--media-command {printable(self.command)} cannot run: {e.strerror or e}",
                hint="name a program on PATH (or its path); it is run as CMD VOLUME...",
            ) from e
        try:
            while True:
                try:
                    code = self._proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    if self._cancel.is_set():
                        self._proc.terminate()
        finally:
            self._proc = None
        if self._cancel.is_set():
            return False
        if code != 0:
            raise EnvironmentProblem(
                f"--media-command {printable(self.command)} failed (exit {code}) when asked for {', '.join(request.wanted)}",
                hint="it is run as CMD VOLUME... and must exit 0 once one of those discs is in " + str(request.media),
                volume=request.wanted[0],
            )
        return True


# -- the drive -----------------------------------------------------------------------------------------


def _carries(directory: Path) -> bool:
    """Whether ``directory`` holds a volume listing or a manifest at its top."""
    try:
        with os.scandir(directory) as entries:
            return any(e.name == MANIFEST_NAME or _LISTING_RE.fullmatch(e.name) for e in entries)
    except OSError:
        return False


def candidate_dirs(media: Path) -> list[Path]:
    """Where a disc can be: ``media`` itself when it carries a listing or a manifest, else the folders directly
    below it that do (a desktop mounts each disc under its label; a bundle's top folder holds its vol-NN folders)."""
    if _carries(media):
        return [media]
    try:
        with os.scandir(media) as entries:
            below = sorted(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise EnvironmentProblem(
            f"cannot list {printable(str(media))}: {e.strerror}", hint="check the drive and its mount"
        ) from e
    return [d for d in below if _carries(d)]


def _listing_names(directory: Path) -> list[str]:
    """The volume listings at the top of ``directory``."""
    try:
        with os.scandir(directory) as entries:
            return sorted(e.name for e in entries if _LISTING_RE.fullmatch(e.name))
    except OSError:
        return []


def _claim(data: bytes) -> str:
    """What a listing says it is (its first line), shown escaped: ' (it says "airgap bundle x, ...")'."""
    first = data.split(b"\n", 1)[0][:160].decode("utf-8", "replace")
    return f' (it says "{printable(first)}")' if first else ""


def _stat_key(path: Path) -> tuple[int, ...] | None:
    """A file's identity and version on disk (a disc swapped for another changes it), without following a link."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def listing_of(manifest: Manifest) -> dict[str, BundleFile]:
    """Each volume's signed listing (volume -> the listed file)."""
    files = {f.path: f for f in manifest.files}
    return {v.name: files[p] for v in manifest.volumes for p in v.paths if _LISTING_RE.fullmatch(p) and p in files}


class OneDrive:
    """The drive's directory, read as the discs come (the reader's :class:`~airgap._internal.format.reader.Drive`).

    Every look at the drive checks what is in it: each listing against its signed sha256 (a file's identity
    on disk is remembered, so an unchanged disc is not read twice), the first volume's manifest.json against
    the manifest in use.  ``on_disc`` runs once for each disc taken (install checks the disc there)."""

    def __init__(self, media: Path, changer: Changer, manifest: Manifest, manifest_bytes: bytes) -> None:
        """The drive at ``media``, for the bundle ``manifest`` (whose exact bytes are ``manifest_bytes``)."""
        self.media = media
        self.changer = changer
        self.manifest = manifest
        self.label = f"{manifest.name} sequence {manifest.sequence}"
        self.on_disc: Callable[[str, Path], None] | None = None
        self.seen: list[str] = []  # volumes taken from the drive, in the order they came
        self.asked = 0  # how many times a disc was asked for
        self._manifest_bytes = manifest_bytes
        self._first = manifest.volumes[0].name
        self._listings = {f.path: (volume, f) for volume, f in listing_of(manifest).items()}
        self._verdicts: dict[tuple[Path, str], tuple[tuple[int, ...], str | None, str]] = {}
        self._taken: dict[str, tuple[Path, tuple[int, ...] | None]] = {}
        self._problem = ""  # why the disc in the drive was refused, at the last look
        self._lock = threading.RLock()
        self._asking = threading.Lock()

    # what is in the drive

    def discs(self) -> dict[str, Path]:
        """The volumes at hand now, each with its directory; a disc taken for the first time is checked
        (``on_disc``) before it is returned."""
        with self._lock:
            found: dict[str, Path] = {}
            problems: list[str] = []
            for directory in candidate_dirs(self.media):
                for name in _listing_names(directory):
                    volume, problem = self._judge(directory, name)
                    if volume is not None:
                        found[volume] = directory
                    elif problem:
                        problems.append(problem)
            self._problem = problems[0] if problems else ""
            new = []
            for volume, directory in sorted(found.items()):
                ident = (directory, _stat_key(directory / self._listing_path(volume)))
                if self._taken.get(volume) != ident:
                    self._taken[volume] = ident
                    new.append((volume, directory))
                    if volume not in self.seen:
                        self.seen.append(volume)
        for volume, directory in new:  # outside the lock: the check reads the disc, and may itself look at the drive
            if self.on_disc is not None:
                try:
                    self.on_disc(volume, directory)
                except BaseException:
                    with self._lock:
                        self._taken.pop(volume, None)
                    raise
        return found

    def _listing_path(self, volume: str) -> str:
        """The file name of a volume's listing."""
        return next(name for name, (v, _) in self._listings.items() if v == volume)

    def _judge(self, directory: Path, name: str) -> tuple[str | None, str]:
        """The volume a listing in ``directory`` shows to be at hand, or why the disc is refused (remembered
        while the listing file is the same on disk)."""
        key = _stat_key(directory / name) or ()
        if self._listings.get(name, ("",))[0] == self._first:
            key += _stat_key(directory / MANIFEST_NAME) or ()  # the first volume's disc carries the manifest too
        known = self._verdicts.get((directory, name))
        if known is not None and known[0] == key:
            return known[1], known[2]
        volume, problem = self._check_listing(directory, name)
        self._verdicts[(directory, name)] = (key, volume, problem)
        return volume, problem

    def _check_listing(self, directory: Path, name: str) -> tuple[str | None, str]:
        """Check one listing against the signed one of its name, and the first volume's manifest copy."""
        shown = printable(str(directory / name))
        entry = self._listings.get(name)
        if entry is None:
            claim = _claim(_read_small(directory / name, LISTING_RESERVE) or b"")
            return None, (
                f"the disc in {printable(str(directory))} is not a volume of {self.label}: {name} names no volume of it "
                f"(it has {len(self._listings)}){claim}"
            )
        volume, signed = entry
        data = _read_small(directory / name, signed.size)
        if data is None or len(data) != signed.size or hashlib.sha256(data).hexdigest() != signed.sha256:
            return None, (
                f"{shown} is not the signed listing of {volume} of {self.label}{_claim(data or b'')}: "
                "the disc belongs to another bundle, or was changed"
            )
        if volume == self._first:
            present = os.path.lexists(directory / MANIFEST_NAME)
            if not present or _read_small(directory / MANIFEST_NAME, len(self._manifest_bytes)) != self._manifest_bytes:
                why = "carries another manifest.json than the signed one in use" if present else "has no manifest.json"
                return (
                    None,
                    f"the disc in {printable(str(directory))} holding {volume} {why}: a disc of another bundle, or a changed one",
                )
        return volume, ""

    # asking for discs

    def require(self, volume: str, why: str = "") -> Path:
        """The directory holding ``volume``, asking for its disc (and waiting) when it is not at hand."""
        return self.next_of((volume,), why)[1]

    def next_of(self, volumes: Sequence[str], why: str = "") -> tuple[str, Path]:
        """One of ``volumes`` at hand (the first of them in order when several are), asking for any of them
        when none is.  One request at a time: readers in other threads wait for its answer."""
        found = self.discs()
        for volume in volumes:
            if volume in found:
                return volume, found[volume]
        with self._asking:
            attempt = 0
            while True:
                found = self.discs()
                for volume in volumes:
                    if volume in found:
                        return volume, found[volume]
                attempt += 1
                request = DiscRequest(
                    media=self.media,
                    wanted=tuple(volumes),
                    holds={v: self.holds(v) for v in volumes},
                    bundle=self.label,
                    found=self._found(found, volumes, why),
                    refused=bool(self._problem),
                    attempt=attempt,
                    seen=tuple(self.seen),
                    total=len(self.manifest.volumes),
                    ready=lambda: any(v in self.discs() for v in volumes),
                )
                self.asked += 1
                if not self.changer.insert(request):
                    raise self._gave_up(tuple(volumes), found)

    def _found(self, found: Mapping[str, Path], wanted: Sequence[str], why: str) -> str:
        """What the drive holds now, and why it does not do: a refusal, or a volume that is not wanted now."""
        if self._problem:
            return self._problem
        if not found:
            return ""
        held = ", ".join(sorted(found))
        if why and len(wanted) == 1:
            return f"the drive holds {held}; {_short(why)} is on {wanted[0]}"
        return f"the drive holds {held}, {'read already' if set(found) <= set(self.seen) else 'not needed now'}"

    def _gave_up(self, wanted: tuple[str, ...], found: Mapping[str, Path]) -> Error:
        """The error when no more answers come: the disc refused, or the volumes that never came."""
        if self._problem:
            return IntegrityError(
                self._problem,
                hint=f"insert {wanted[0]} of {self.label}; if that is the disc, burn or copy it again from the bundle's "
                f"{wanted[0]} folder",
                volume=wanted[0],
            )
        held = f" (it holds {', '.join(sorted(found))})" if found else ""
        return IntegrityError(
            f"{', '.join(wanted)} of {self.label} {'is' if len(wanted) == 1 else 'are'} not in {printable(str(self.media))}{held}",
            hint="insert the disc labelled so and run the same command again; with one drive, answer each prompt "
            "(Enter on a terminal, a line on stdin) or give --media-command",
            volume=wanted[0],
        )

    def holds(self, volume: str) -> str:
        """What a volume carries, for a prompt: "the manifest, parts 1-11 of 40, 3.9 GiB"."""
        v = next(x for x in self.manifest.volumes if x.name == volume)
        paths = set(v.paths)
        numbers = [i for i, p in enumerate(self.manifest.parts, start=1) if p.path in paths]
        size = sum(p.size for p in self.manifest.parts if p.path in paths) + sum(
            f.size for f in self.manifest.files if f.path in paths
        )
        bits = ["the manifest"] if volume == self._first else []
        total = len(self.manifest.parts)
        if len(numbers) == 1:
            bits.append(f"part {numbers[0]} of {total}")
        elif numbers and numbers[-1] - numbers[0] == len(numbers) - 1:
            bits.append(f"parts {numbers[0]}-{numbers[-1]} of {total}")
        elif numbers:
            bits.append(f"{len(numbers)} of {total} parts")
        return ", ".join([*bits, human_bytes(size)])


def _short(label: str) -> str:
    """A part's label for a prompt, its blob's hex cut short: "the next part (parts/638bd6703782....00003.zst)"."""
    kind, _, path = label.partition(" ")
    head, dot, rest = path.removeprefix("parts/").partition(".")
    shown = f"parts/{head[:12]}...{dot}{rest}" if path.startswith("parts/") and len(head) > 12 else path
    return f"the next {kind} to read ({shown})" if kind in ("part", "file") else label


def _read_small(path: Path, cap: int) -> bytes | None:
    """A small file on a disc (listing, manifest copy), at most ``cap`` bytes: None when missing, not a regular
    file, unreadable or larger."""
    try:
        return fsutil.read_capped(path, str(path), cap)
    except Error:
        return None


# -- opening a bundle from the drive -------------------------------------------------------------------


def volume_number(text: str) -> int | None:
    """``--volume``'s value: "3", "03" or "vol-03" -> 3; "" (the volume in the drive) -> None."""
    if text == "":
        return None
    m = _VOLUME_ARG_RE.fullmatch(text)
    if m is None or int(m.group(1)) < 1:
        raise UsageError(f"--volume {text!r} names no volume", hint="give its number (3) or its name (vol-03)")
    return int(m.group(1))


def volume_named(manifest: Manifest, number: int) -> str:
    """The name of volume ``number`` of a split bundle."""
    for volume in manifest.volumes:
        if int(volume.name.removeprefix("vol-")) == number:
            return volume.name
    raise UsageError(f"the bundle has no volume {number}; it has {len(manifest.volumes)} (vol-01 to {manifest.volumes[-1].name})")


def remember(known: KnownBundles, bundle: LoadedBundle) -> None:
    """Keep a split bundle's manifest and trusted signatures, so that its other discs can come without the first."""
    m = bundle.manifest
    if m.volumes:
        listings = {volume: f.sha256 for volume, f in listing_of(m).items()}
        signatures = {fp: sig for fp, sig in bundle.signatures.items() if sig}
        known.remember(bundle.manifest_bytes, signatures, listings, m.name, m.sequence)


def open_drive(
    media: Path,
    changer: Changer,
    trusted: Sequence[PublicKey],
    threshold: int,
    allow_expired: bool,
    known: KnownBundles,
    note: Callable[[str], None],
    check_each_disc: bool = False,
    allow_unexpected: bool = False,
) -> tuple[LoadedBundle, TrustResult]:
    """The bundle whose discs come into ``media``: its manifest from the disc that carries it, else from the copy
    this host kept of a bundle one of whose discs is in the drive; either way its signatures are checked against
    ``trusted`` before it is parsed.  Asks for the first volume when neither is at hand.  With
    ``check_each_disc`` (install) every disc is checked as it comes (:func:`check_disc`), before a part is read."""
    bundle, result = _open_drive(media, changer, trusted, threshold, allow_expired, known, note)
    drive = bundle.drive
    if check_each_disc and isinstance(drive, OneDrive):

        def taken(volume: str, directory: Path) -> None:
            """Check a disc as it comes."""
            check_disc(bundle, volume, allow_unexpected)
            note(f"{volume} in {printable(str(directory))}: its signed listing matches and every file it lists is there")

        drive.on_disc = taken
    return bundle, result


def _open_drive(
    media: Path,
    changer: Changer,
    trusted: Sequence[PublicKey],
    threshold: int,
    allow_expired: bool,
    known: KnownBundles,
    note: Callable[[str], None],
) -> tuple[LoadedBundle, TrustResult]:
    """See :func:`open_drive`."""
    if not media.is_dir():
        raise UsageError(f"{printable(str(media))} is not a directory", hint="pass the drive's mount point, e.g. /media/cdrom")
    wanted = frozenset(k.fingerprint for k in trusted)
    attempt = 0
    while True:
        dirs = candidate_dirs(media)
        homes = [d for d in dirs if os.path.lexists(d / MANIFEST_NAME)]
        if len(homes) > 1:
            raise IntegrityError(
                f"{printable(str(media))} holds manifest.json in {homes[0].name} and in {homes[1].name}: two bundles in one place",
                hint="leave only the discs (or folders) of the bundle you were given there",
            )
        if homes:
            home = homes[0]
            data = read_manifest_bytes(home)
            signatures = read_signatures(home, wanted)
            manifest, result = _trusted(home, data, signatures, trusted, threshold, allow_expired)
            if not manifest.volumes:
                return LoadedBundle(home, data, manifest, signatures), result  # one directory holds it all
            first = listing_of(manifest).get(manifest.volumes[0].name)
            if first is None or not os.path.lexists(home / first.path):
                raise IntegrityError(
                    f"manifest.json in {printable(str(home))} is not on the bundle's first volume "
                    f"({manifest.volumes[0].name}: its listing is missing there)",
                    hint="the discs or folders were mixed up, or another bundle's manifest was added; copy the bundle again",
                )
            bundle = _on_drive(media, changer, data, manifest, signatures)
            remember(known, bundle)
            return bundle, result
        recalled = _recall(media, dirs, changer, known, trusted, threshold, allow_expired)
        if recalled is not None:
            bundle, result, volume = recalled
            note(
                f"the disc in the drive is {volume} of {bundle.manifest.name} sequence {bundle.manifest.sequence}: "
                "using the manifest kept on this host from its first volume (its signatures checked again)"
            )
            return bundle, result
        attempt += 1
        found = _unknown(dirs)
        request = DiscRequest(
            media,
            (FIRST,),
            {FIRST: "the manifest and the signatures"},
            found=found,
            attempt=attempt,
            ready=_changes(media),
        )
        if not changer.insert(request):
            raise FormatError(
                f"{printable(str(media))} holds no bundle manifest" + (f": {found}" if found else ""),
                hint="insert the first volume (vol-01, it carries manifest.json); a later disc alone is known only "
                "once a disc of the bundle carrying its manifest was read on this host",
            )


def _drive_state(media: Path) -> tuple[tuple[str, tuple[int, ...] | None], ...]:
    """What the drive shows, as the identity of each listing and manifest in it: it changes when a disc comes."""
    return tuple(
        (str(d / name), _stat_key(d / name))
        for d in candidate_dirs(media)
        for name in [*_listing_names(d), *([MANIFEST_NAME] if os.path.lexists(d / MANIFEST_NAME) else [])]
    )


def _changes(media: Path) -> Callable[[], bool]:
    """Whether something came into the drive since now (a changer may look while it waits)."""
    before = _drive_state(media)
    return lambda: _drive_state(media) not in (before, ())


def _unknown(dirs: Sequence[Path]) -> str:
    """What the drive holds when no bundle it holds is known: the listings it carries, as they name themselves."""
    claims = []
    for directory in dirs:
        for name in _listing_names(directory):
            data = _read_small(directory / name, LISTING_RESERVE) or b""
            claims.append(f"{printable(str(directory / name))}{_claim(data)}")
    return f"it holds {'; '.join(claims)}, of a bundle not read on this host yet" if claims else ""


def _trusted(
    home: Path, data: bytes, signatures: Mapping[str, bytes], trusted: Sequence[PublicKey], threshold: int, allow_expired: bool
) -> tuple[Manifest, TrustResult]:
    """check_trust, its format errors naming the manifest file."""
    try:
        return check_trust(data, signatures, trusted, threshold, allow_expired, datetime.now(timezone.utc))
    except FormatError as e:
        raise FormatError(f"{home / MANIFEST_NAME}: {e.message.removeprefix('manifest: ')}", e.hint) from e


def _on_drive(media: Path, changer: Changer, data: bytes, manifest: Manifest, signatures: Mapping[str, bytes]) -> LoadedBundle:
    """The bundle read through a drive at ``media``."""
    return LoadedBundle(media, data, manifest, dict(signatures), drive=OneDrive(media, changer, manifest, data))


def _recall(
    media: Path,
    dirs: Sequence[Path],
    changer: Changer,
    known: KnownBundles,
    trusted: Sequence[PublicKey],
    threshold: int,
    allow_expired: bool,
) -> tuple[LoadedBundle, TrustResult, str] | None:
    """A remembered bundle one of whose discs is in the drive (its listing's sha256 is in the signed manifest),
    checked against ``trusted`` again; None when none is."""
    wanted = frozenset(k.fingerprint for k in trusted)
    for directory in dirs:
        for name in _listing_names(directory):
            data = _read_small(directory / name, LISTING_RESERVE)
            if data is None:
                continue
            sha = hashlib.sha256(data).hexdigest()
            for folder in known.recall(sha):
                manifest_bytes = read_manifest_bytes(folder)
                if hashlib.sha256(manifest_bytes).hexdigest() != folder.name:
                    continue  # not as it was kept: ignored
                signatures = read_signatures(folder, wanted)
                try:
                    manifest, result = _trusted(folder, manifest_bytes, signatures, trusted, threshold, allow_expired)
                except TrustError as e:
                    raise TrustError(
                        f"the manifest kept on this host for the disc in {printable(str(directory))}: {e.message}",
                        hint="insert the first volume (vol-01): its signatures are read from it; " + (e.hint or ""),
                    ) from e
                listed = {v: f for v, f in listing_of(manifest).items() if f.path == name and f.sha256 == sha}
                if listed:
                    bundle = _on_drive(media, changer, manifest_bytes, manifest, signatures)
                    return bundle, result, next(iter(listed))
    return None


# -- reading in the order the discs come ---------------------------------------------------------------


def _drive_of(origins: Mapping[str, Origin]) -> OneDrive | None:
    """The drive the blobs' parts are read through, if any."""
    for origin in origins.values():
        for owner, _ in parts_to_open(origin):
            if isinstance(owner.drive, OneDrive):
                return owner.drive
    return None


def in_disc_order(items: Sequence[T], origins: Mapping[str, Origin], digest: Callable[[T], str]) -> Iterator[T]:
    """``items`` (each naming a blob, by ``digest``) in the order the discs let them be read.

    Without a drive, as given.  Read from one drive: items that read no disc first; then, again and again, an
    item whose first part is on a disc at hand (one read whole from the discs at hand before one that continues
    on another disc, which is then asked for by name); when no disc at hand has one, any disc where a pending
    item starts is asked for, so the discs may come in any order.  In the bundle's own order each disc comes once."""
    drive = _drive_of(origins)
    if drive is None:
        yield from items
        return
    order = {v.name: i for i, v in enumerate(drive.manifest.volumes)}

    def volumes(item: T) -> list[str]:
        """The drive's volumes an item reads, in the order it reads them."""
        found: list[str] = []
        for owner, part in parts_to_open(origins[digest(item)]):
            volume = owner.manifest.volume_of(part.path) if owner.drive is drive else None
            if volume is not None and volume not in found:
                found.append(volume)
        return found

    reads = [volumes(item) for item in items]
    pending = [i for i, vols in enumerate(reads) if vols]
    for i, vols in enumerate(reads):
        if not vols:
            yield items[i]
    while pending:
        at_hand = drive.discs()
        ready = [i for i in pending if reads[i][0] in at_hand]
        whole = [i for i in ready if all(v in at_hand for v in reads[i])]
        if ready:
            pick = (whole or ready)[0]
            pending.remove(pick)
            yield items[pick]
            continue
        starts = sorted({reads[i][0] for i in pending}, key=lambda v: order.get(v, 0))
        drive.next_of(starts)


# -- checking discs ------------------------------------------------------------------------------------


def check_disc(bundle: LoadedBundle, volume: str, allow_unexpected: bool) -> None:
    """What install checks of each disc as it comes, before a part is read from it: every part it should carry is
    there, a regular file of its size; every signed file on it (its listing, the installer) matches; nothing else
    is on it (unless allowed).  Any problem stops the install before the upload's end: the target keeps nothing."""
    paths = set(next(v.paths for v in bundle.manifest.volumes if v.name == volume))
    for part in bundle.manifest.parts:
        if part.path in paths:
            open_part(bundle, part).close()
    bad = [r for r in (check_part(bundle, f) for f in bundle.manifest.files if f.path in paths) if not r.ok]
    if bad:
        raise PartsFailed(bad)
    refuse_unexpected(bundle, allow_unexpected, volume)


def items_on(manifest: Manifest, volume: str | None) -> list[Part | BundleFile]:
    """The parts and signed files a volume carries (every one with ``volume`` None)."""
    items: list[Part | BundleFile] = [*manifest.parts, *manifest.files]
    return items if volume is None else [i for i in items if manifest.volume_of(i.path) == volume]


def _recalled(bundle: LoadedBundle, part: Part, cache: VerifiedCache) -> bool:
    """Whether the part file is one the verified-parts cache knows (hashed whole by verify on this host)."""
    try:
        fh = open_part(bundle, part)
    except PartProblem:
        return False  # check_part reports it
    with fh:
        return file_key(fh.fileno(), bundle.part_file(part), part) in cache


def check_items(
    bundle: LoadedBundle,
    items: Sequence[Part | BundleFile],
    jobs: int,
    advance: Callable[[int], None],
    cache: VerifiedCache | None,
    recall: bool = False,
) -> tuple[list[PartResult], int]:
    """Hash each item against the manifest, ``jobs`` at a time, adding the parts that match to ``cache``; with
    ``recall``, a part the cache knows is taken as checked (sign trusts verify's work on this host).  Returns the
    results in order, and how many parts came from the cache."""

    def one(item: Part | BundleFile) -> tuple[PartResult, bool]:
        """One item's result, and whether it came from the cache."""
        if recall and cache is not None and isinstance(item, Part) and _recalled(bundle, item, cache):
            advance(item.size)
            return PartResult(item.path, True), True
        return check_part(bundle, item, advance, cache), False

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        done = list(pool.map(one, items))
    return [r for r, _ in done], sum(1 for _, cached in done if cached)


@dataclass(frozen=True)
class VolumeOutcome:
    """One volume checked: its parts and files, the unexpected files where it is read from, and where that is."""

    volume: str
    where: Path
    results: tuple[PartResult, ...]
    unexpected: tuple[Unexpected, ...]
    cached: int = 0  # parts taken from the verified-parts cache (sign)

    @property
    def ok(self) -> bool:
        """Whether every part and file matched and nothing else was there."""
        return all(r.ok for r in self.results) and not self.unexpected


def check_volumes(
    bundle: LoadedBundle,
    volumes: Sequence[str],
    jobs: int,
    advance: Callable[[int], None],
    cache: VerifiedCache | None,
    recall: bool = False,
) -> Iterator[VolumeOutcome]:
    """Check the parts and files of each volume, and what else is where it is read from, one volume at a time: read
    from one drive, as the discs come (any order; asked for while none of them is in)."""
    left = list(volumes)
    while left:
        if bundle.drive is not None:
            volume, where = bundle.drive.next_of(left)
        else:
            volume = left[0]
            where = bundle.place_of(items_on(bundle.manifest, volume)[0]).path  # every volume carries its listing
        left.remove(volume)
        results, cached = check_items(bundle, items_on(bundle.manifest, volume), jobs, advance, cache, recall)
        yield VolumeOutcome(volume, where, tuple(results), tuple(find_unexpected(bundle, volume)), cached)


def record_checks(known: KnownBundles, bundle: LoadedBundle, outcome: Mapping[str, tuple[bool, Path]]) -> dict[str, VolumeCheck]:
    """Remember how each volume fared now (``outcome``: volume -> passed, where it was read); return every volume's
    latest check on this host (this run's too, when nothing could be remembered)."""
    now = format_time(datetime.now(timezone.utc))
    checks = {volume: VolumeCheck("pass" if ok else "fail", now, str(where)) for volume, (ok, where) in outcome.items()}
    sha = hashlib.sha256(bundle.manifest_bytes).hexdigest()
    known.record(sha, checks)
    return {**known.checks(sha), **checks}
