"""Reading a bundle directory back safely: its manifest and signatures, its parts, its volumes.

The layout is described in :mod:`airgap._internal.format.writer`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Protocol

from airgap._internal.format.writer import STAGING_DIR
from airgap._internal.util import fsutil
from airgap.errors import FormatError, IntegrityError, TrustError, UsageError
from airgap.model.manifest import MANIFEST_NAME, SIGNATURES_DIR, BundleFile, Manifest, Part
from airgap.trust.keys import PublicKey
from airgap.trust.policy import TrustResult, check_trust

MAX_MANIFEST_BYTES = 16 << 20  # about 45,000 parts; pack refuses a bundle whose manifest would be larger
SIGNATURE_BYTES = 64
MAX_SIGNATURES = 256  # files in signatures/ (read before any signature is checked: bounded)
_SIG_RE = re.compile(r"^([0-9a-f]{64})\.sig$")
_VOLUME_DIR_RE = re.compile(r"^vol-[0-9]{2,3}$")


@dataclass(frozen=True)
class Place:
    """A directory holding files of the bundle: its home (manifest.json), a vol-NN folder beside it, or a
    --from directory.  ``volume`` is the volume it holds when that is known (by its folder name under the
    bundle, or by the signed volume listing it carries); parts of a volume are read only from a place that
    holds that volume or from one whose volume is unknown, never from another volume's."""

    path: Path
    volume: str | None = None


class Drive(Protocol):
    """Where the volumes of a split bundle come in one after another: a drive's mount point, one disc at a time
    (``install --one-drive``; :mod:`airgap._internal.format.discs` is the one implementation)."""

    media: Path  # the directory the user named (its discs appear there, or in folders directly below it)

    def discs(self) -> Mapping[str, Path]:
        """The volumes at hand now, each with the directory it is read from; each checked against its signed listing."""
        ...

    def require(self, volume: str, why: str = "") -> Path:
        """The directory holding ``volume``, asking for its disc (and waiting) when it is not at hand."""
        ...

    def next_of(self, volumes: Sequence[str], why: str = "") -> tuple[str, Path]:
        """One of ``volumes`` at hand, with its directory, asking for any of them when none is."""
        ...


@dataclass(frozen=True)
class LoadedBundle:
    """A bundle as read from disk: its manifest's exact bytes and parsed form, the signatures found, and every
    directory its parts may be read from.  Parts are opened only through :func:`open_part`."""

    path: Path  # the directory holding manifest.json
    manifest_bytes: bytes
    manifest: Manifest
    signatures: dict[str, bytes]  # fingerprint -> raw signature (b"" for signatures not read: untrusted signers)
    search: tuple[Path, ...] = ()  # more directories holding parts (other volumes, --from)
    base: LoadedBundle | None = None  # a delta's base bundle (install --base): where its external layers come from
    root: Path | None = None  # a split bundle given as its top directory: the folder holding the vol-NN folders
    drive: Drive | None = None  # its volumes come one after another into one directory (``path``)

    @functools.cached_property
    def _places(self) -> tuple[Place, ...]:
        """The places, found once (see :meth:`places`)."""
        return self._find_places()

    def places(self) -> tuple[Place, ...]:
        """Every directory the bundle spans, home first, each with the volume it holds when known (looked up
        once per loaded bundle).  Read from one drive: the discs at hand now."""
        if self.drive is not None:
            held: dict[Path, list[str]] = {}
            for volume, directory in self.drive.discs().items():
                held.setdefault(directory, []).append(volume)
            return tuple(Place(d, names[0] if len(names) == 1 else None) for d, names in held.items())
        return self._places

    def at_hand(self, item: Part | BundleFile) -> bool:
        """Whether the part or file can be read now without asking for a disc (always, unless read from one drive)."""
        if self.drive is None:
            return True
        volume = self.manifest.volume_of(item.path)
        return volume is None or volume in self.drive.discs()

    def _find_places(self) -> tuple[Place, ...]:
        """The home directory, then each --from or vol-NN directory once (by real path), each with its volume."""
        volumes = self.manifest.volumes
        known = {v.name for v in volumes}
        listings = {path: v.name for v in volumes for path in v.paths if path.startswith("volume-")}

        def held(directory: Path) -> str | None:
            """The one volume whose signed listing the directory carries; None for a merged copy (a pulled
            split bundle holds every listing) or a directory without one."""
            names = {name for listing, name in listings.items() if os.path.lexists(directory / listing)}
            return names.pop() if len(names) == 1 else None

        if self.root is not None:
            home_volume: str | None = self.path.name
        else:
            home_volume = held(self.path) if volumes else None
        found = [Place(self.path, home_volume)]
        seen = {os.path.realpath(self.path)}
        for directory in self.search:
            real = os.path.realpath(directory)
            if real in seen:
                continue
            seen.add(real)
            if self.root is not None and directory.parent == self.root:
                if directory.name not in known:
                    continue  # a vol-NN folder the manifest does not name: not part of the bundle (reported)
                volume: str | None = directory.name
            else:
                volume = held(directory)
            found.append(Place(directory, volume))
        return tuple(found)

    def place_of(self, part: Part | BundleFile) -> Place:
        """The directory to read a part or listed file from: a place holding its volume, else one of unknown
        volume that has it.  A copy on another volume's medium is never used.  Read from one drive: the disc
        holding its volume when it is at hand (else the drive's directory: see :func:`open_part`)."""
        volume = self.manifest.volume_of(part.path)
        if self.drive is not None:
            return Place(self.drive.discs().get(volume or "") or self.path, volume)
        places = self.places()
        candidates = [p for p in places if p.volume == volume] if volume else list(places)
        candidates += [p for p in places if volume and p.volume is None]
        for place in candidates:
            if os.path.lexists(place.path / part.path):
                return place
        return candidates[0] if candidates else places[0]

    def part_file(self, part: Part | BundleFile) -> Path:
        """The path a part or listed file is read from (see :meth:`place_of`)."""
        return self.place_of(part).path / part.path


def locate(bundle: Path, extra: Sequence[Path] = ()) -> tuple[Path, tuple[Path, ...], Path | None]:
    """The directory holding manifest.json, where else to look for parts, and the split bundle's top folder.

    A bundle packed with --media-dir-size is a directory of vol-NN folders: exactly one of them holds
    manifest.json (two are refused: a planted second bundle is never picked silently); the others are
    searched, then ``extra`` (--from)."""
    if os.path.lexists(bundle / MANIFEST_NAME) or not bundle.is_dir():
        return bundle, tuple(extra), None
    try:
        with os.scandir(bundle) as entries:
            volumes = sorted(
                bundle / e.name for e in entries if _VOLUME_DIR_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
            )
    except OSError as e:
        raise fsutil.io_error(e, str(bundle)) from e
    primary = [v for v in volumes if os.path.lexists(v / MANIFEST_NAME)]
    if len(primary) > 1:
        raise IntegrityError(
            f"{bundle} holds manifest.json on {primary[0].name} and on {primary[1].name}: two bundles in one place",
            hint="remove the folder that is not part of the bundle you were given, or copy the bundle again",
        )
    if primary:
        return primary[0], tuple(v for v in volumes if v != primary[0]) + tuple(extra), bundle
    return bundle, tuple(extra), None


def read_manifest_bytes(bundle: Path) -> bytes:
    """manifest.json's exact bytes (what signatures cover), at most :data:`MAX_MANIFEST_BYTES`."""
    if not bundle.is_dir():
        raise UsageError(f"bundle {bundle} is not a directory", hint="pass the directory written by 'airgap pack'")
    path = bundle / MANIFEST_NAME
    if not os.path.lexists(path):
        staging = os.path.lexists(bundle / STAGING_DIR)
        raise FormatError(
            f"{path} is missing: this is not a complete bundle",
            hint="packing did not finish; pack again" if staging else "pass the directory written by 'airgap pack'",
        )
    return fsutil.read_capped(path, str(path), MAX_MANIFEST_BYTES)


def read_signatures(bundle: Path, wanted: frozenset[str] = frozenset()) -> dict[str, bytes]:
    """The signatures present, by signer fingerprint.  Only those of ``wanted`` signers (the trusted keys) are
    opened and read; the others are named only (b""), so planted files cost nothing."""
    sig_dir = bundle / SIGNATURES_DIR
    signatures: dict[str, bytes] = {}
    if not os.path.lexists(sig_dir):
        return signatures
    if sig_dir.is_symlink() or not sig_dir.is_dir():
        raise IntegrityError(f"{sig_dir} is not a directory", hint="bundles hold regular files and directories only")
    try:
        with os.scandir(sig_dir) as entries:
            names = sorted(e.name for e in entries)
    except OSError as e:
        raise fsutil.io_error(e, str(sig_dir)) from e
    if len(names) > MAX_SIGNATURES:
        raise IntegrityError(
            f"{SIGNATURES_DIR}/ holds {len(names)} files; a bundle carries at most {MAX_SIGNATURES} signatures",
            hint="the bundle was stuffed with files; copy it again from the original medium",
        )
    for name in names:
        m = _SIG_RE.fullmatch(name)
        if not m:
            continue  # reported as an unexpected file
        fp = m.group(1)
        if fp not in wanted:
            signatures[fp] = b""
            continue
        label = f"{SIGNATURES_DIR}/{name}"
        try:
            data = fsutil.read_capped(sig_dir / name, label, SIGNATURE_BYTES, root=bundle)
        except FormatError:
            data = b""  # too large: never verifies; a trusted key's bad signature fails the bundle
        signatures[fp] = data if len(data) == SIGNATURE_BYTES else b""
    return signatures


def _naming_manifest(bundle: Path, e: FormatError) -> FormatError:
    """A manifest FormatError reworded to name the manifest file it came from."""
    return FormatError(f"{bundle / MANIFEST_NAME}: {e.message.removeprefix('manifest: ')}", e.hint)


def _check_home(home: Path, root: Path | None, manifest: Manifest) -> None:
    """A split bundle's manifest must sit on the volume it names as its first."""
    if root is not None and manifest.volumes and home.name != manifest.volumes[0].name:
        raise IntegrityError(
            f"manifest.json is on {home.name}, but the bundle says it travels on {manifest.volumes[0].name}",
            hint="the folders were renamed or another bundle's folder was added; copy the bundle again",
        )


def load_bundle(bundle: Path, extra: Sequence[Path] = ()) -> LoadedBundle:
    """Read and parse a bundle's manifest without checking who signed it (inspect, diff).  Only what is
    read before any signature check is capped: the manifest's size; signature files are not opened."""
    home, search, root = locate(bundle, extra)
    data = read_manifest_bytes(home)
    try:
        manifest = Manifest.from_bytes(data)
    except FormatError as e:
        raise _naming_manifest(home, e) from e
    _check_home(home, root, manifest)
    return LoadedBundle(home, data, manifest, read_signatures(home), search, root=root)


def load_trusted_bundle(
    bundle: Path, trusted: Sequence[PublicKey], threshold: int, allow_expired: bool, extra: Sequence[Path] = ()
) -> tuple[LoadedBundle, TrustResult]:
    """Read a bundle's manifest and signatures; authenticate before parsing (see trust.check_trust)."""
    home, search, root = locate(bundle, extra)
    data = read_manifest_bytes(home)
    signatures = read_signatures(home, frozenset(k.fingerprint for k in trusted))
    try:
        manifest, result = check_trust(data, signatures, trusted, threshold, allow_expired, datetime.now(timezone.utc))
    except FormatError as e:
        raise _naming_manifest(home, e) from e
    _check_home(home, root, manifest)
    return LoadedBundle(home, data, manifest, signatures, search, root=root), result


def attach_base(bundle: LoadedBundle, base: LoadedBundle) -> LoadedBundle:
    """A delta with its base bundle: the base must be the very bundle the delta names (by manifest digest)."""
    digest = "sha256:" + hashlib.sha256(base.manifest_bytes).hexdigest()
    if bundle.manifest.base is None:
        raise UsageError(f"bundle {bundle.path} is not a delta; it needs no --base")
    if digest != bundle.manifest.base:
        raise TrustError(
            f"--base {base.path} is not the bundle this delta was made against (its manifest is {digest[:19]}, "
            f"the delta names {bundle.manifest.base[:19]})",
            hint="pass the exact bundle given to 'pack --since'",
        )
    return replace(bundle, base=base)


def open_part(bundle: LoadedBundle, part: Part | BundleFile) -> BinaryIO:
    """Open a part (or listed file) for reading: present, a regular file under no link, of the size the manifest says."""
    label = f"{'part' if isinstance(part, Part) else 'file'} {part.path}"
    volume = bundle.manifest.volume_of(part.path)
    on = f" (on {volume})" if volume else ""
    if bundle.drive is not None and volume is not None:
        place = Place(bundle.drive.require(volume, label), volume)
        inside = place.path != bundle.drive.media  # a disc's folder found below the drive's directory: no link either
    else:
        place = bundle.place_of(part)
        inside = bundle.root is not None and place.path.parent == bundle.root  # a vol-NN folder: no link either
    try:
        fh = fsutil.open_regular(place.path / part.path, label, root=place.path, root_is_ours=inside)
    except IntegrityError as e:
        missing = e.message == f"{label} is missing"
        raise PartProblem(
            e.message + on,
            hint=_missing_hint(bundle, volume) if missing and volume else e.hint,
            path=part.path,
            volume=volume,
            missing=missing,
        ) from e
    size = os.fstat(fh.fileno()).st_size
    if size != part.size:
        fh.close()
        raise PartProblem(
            f"{label} is {size} bytes, the manifest says {part.size} (truncated or damaged){on}",
            hint="copy the part again from the original medium",
            path=part.path,
            volume=volume,
        )
    return fh


def _missing_hint(bundle: LoadedBundle, volume: str) -> str:
    """What to do about a part missing from its volume."""
    if bundle.drive is not None:
        return f"the disc labelled {volume} lacks it: burn or copy that volume again from the bundle's {volume} folder"
    return f"mount the medium labelled {volume} and pass its directory with --from"


class PartProblem(IntegrityError):
    """A part or listed file is missing, not a regular file, or of the wrong size; ``path`` and ``volume`` say
    which and where."""

    def __init__(self, message: str, hint: str | None, path: str, volume: str | None, missing: bool = False) -> None:
        super().__init__(message, hint, path=path, volume=volume)
        self.missing = missing


@dataclass(frozen=True)
class Unexpected:
    """A file in a bundle directory that the signed manifest does not account for."""

    path: str  # as shown to the user: relative to the bundle (or the --from directory, named)
    why: str = "is not part of the signed bundle"


def unexpected_files(bundle: LoadedBundle) -> list[str]:
    """The paths of :func:`find_unexpected`."""
    return [u.path for u in find_unexpected(bundle)]


def find_unexpected(bundle: LoadedBundle, volume: str | None = None) -> list[Unexpected]:
    """Every file in every directory the bundle spans that airgap would not read for this bundle: unlisted
    files, second copies of a listed file (a listed file is expected only where it is read from), files on
    the wrong volume, signature files that are not 64 bytes, links, FIFOs and devices, staging leftovers,
    nested folders.  Scanned iteratively, links never followed, depth bounded.  With ``volume``, only the
    directories holding that volume; read from one drive, only the discs at hand."""
    m = bundle.manifest
    read_from: dict[Path, set[str]] = {}
    items: list[Part | BundleFile] = [*m.parts, *m.files]
    if bundle.drive is not None:
        held = bundle.drive.discs()  # looked at once: each look checks what is in the drive
        for item in items:
            directory = held.get(m.volume_of(item.path) or "")
            if directory is not None:
                read_from.setdefault(directory, set()).add(item.path)
        places = tuple(Place(d) for d in dict.fromkeys(held.values()) if volume is None or d == held.get(volume))
        home = held.get(m.volumes[0].name) if m.volumes else None
    else:
        for item in items:
            read_from.setdefault(bundle.place_of(item).path, set()).add(item.path)
        places = tuple(p for p in bundle.places() if volume is None or p.volume == volume)
        home = bundle.path
    found: list[Unexpected] = []

    def odd(entry: fsutil.TreeEntry, name: str) -> bool:
        """Report a link, special file or too-deep directory (True); False for a regular file."""
        why = {"symlink": "is a symbolic link", "other": "is not a regular file", "deep": "is nested too deep"}.get(entry.kind)
        if why:
            found.append(Unexpected(name, why))
        return why is not None

    def scan(top: Path, shown: str, expected: set[str], home: bool) -> None:
        """Report every file under ``top`` that is not read from there: not in ``expected``, and at home not
        the manifest or a 64-byte signature file."""
        for entry in fsutil.walk_files(top):
            name = f"{shown}{entry.rel}"
            if odd(entry, name) or entry.rel in expected or (home and entry.rel == MANIFEST_NAME):
                continue
            if home and _is_signature_path(entry.rel):
                if entry.size != SIGNATURE_BYTES:
                    found.append(Unexpected(name, f"is {entry.size} bytes, not a signature (64 bytes)"))
                continue
            found.append(Unexpected(name))

    if bundle.root is not None and volume is None:
        # the top folder of a split bundle holds the vol-NN folders the manifest names, and nothing else
        inside = frozenset(p.path.name for p in bundle.places() if p.path.parent == bundle.root)  # scanned as places
        for entry in fsutil.walk_files(bundle.root, skip=inside):
            if not odd(entry, entry.rel):
                found.append(Unexpected(entry.rel))
    for place in places:
        if bundle.root is not None and place.path.parent == bundle.root:
            shown = f"{place.path.name}/"
        elif place.path == bundle.path and bundle.drive is None:
            shown = ""
        else:
            shown = f"{place.path}/"
        scan(place.path, shown, read_from.get(place.path, set()), home=place.path == home)
    unique: dict[str, Unexpected] = {}
    for u in found:
        unique.setdefault(u.path, u)
    return sorted(unique.values(), key=lambda u: u.path)


def _is_signature_path(rel: str) -> bool:
    """Whether ``rel`` names a signature file: signatures/<fingerprint>.sig, directly."""
    head, _, name = rel.partition("/")
    return head == SIGNATURES_DIR and "/" not in name and bool(_SIG_RE.fullmatch(name))


def refuse_unexpected(bundle: LoadedBundle, allow: bool, volume: str | None = None) -> list[str]:
    """Fail on files the manifest does not list (nothing unsigned rides along), unless allowed; with ``volume``,
    only where that volume is read from."""
    found = find_unexpected(bundle, volume)
    if found and not allow:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise IntegrityError(
            f"file {found[0].path} in the bundle {found[0].why}{more}",
            hint="remove it if you know where it came from (or pass --allow-unexpected); otherwise copy the bundle again",
        )
    return [u.path for u in found]
