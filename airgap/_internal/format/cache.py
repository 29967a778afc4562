"""A cache of parts already verified: re-running an interrupted install does not hash them again; and the
split bundles this host has read (:class:`KnownBundles`), so that their discs can come one at a time.

Entries are keyed by the part file's identity (device, inode, absolute path, size, mtime in ns) and
the digest the manifest expects; any change to the file gives a new key.  The cache lives outside the
bundle, beside the install state, as an append-only file of JSON lines (a torn last line is ignored).
Skipping a part's hash is safe because install still checks every blob's digest over its decompressed
bytes before the archive's manifest.json is sent to the engine.

The cache is only an optimisation, so a cache someone else could have written (a link, not our file,
writable by group or others, or in such a directory) is ignored entirely and never written: every part
is then hashed.  Only its last MAX_READ bytes are read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path

from airgap._internal.util.fsutil import atomic_write
from airgap.discs import VolumeCheck
from airgap.errors import EnvironmentProblem
from airgap.model.manifest import MANIFEST_NAME, SIGNATURES_DIR, Part
from airgap.trust.rollback import dir_problem, file_problem, make_private_dir

MAX_READ = 64 << 20  # the newest entries; an older tail end is simply hashed again


def file_key(fd: int, path: Path, part: Part) -> str:
    """The cache key of an open part file: its identity on disk (device, inode, size, mtime in ns, absolute path)
    and the sha256 the manifest expects of it."""
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{part.sha256}:{os.path.abspath(path)}"


def _open_trusted(path: Path, flags: int) -> int | None:
    """Open the cache file without following a link; None unless it is ours and only ours to write."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError:
        return None  # missing, a link (ELOOP), or unreadable: no cache
    try:
        if file_problem(os.fstat(fd), path) is None:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


class VerifiedCache:
    """The keys of parts verified before (see the module), read once when made.  With ``path`` None nothing is
    read or written: keys added are remembered for this run only.
    :meth:`add` may be called from several threads at once."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._keys: set[str] = set()
        self._lock = threading.Lock()
        self._writable = path is not None
        if path is None or dir_problem(path.parent) is not None:
            self._writable = False
            return
        fd = _open_trusted(path, os.O_RDONLY)
        if fd is None:
            return
        try:
            with os.fdopen(fd, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > MAX_READ:
                    fh.seek(size - MAX_READ)
                    data = fh.read(MAX_READ)
                    data = data[data.find(b"\n") + 1 :]  # drop the line cut in two
                else:
                    data = fh.read(MAX_READ)
        except OSError:
            return  # unreadable: everything is hashed
        for line in data.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                self._keys.add(entry["key"])

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str) -> None:
        """Remember a part as verified, appending it to the cache file when the file is ours to write; a cache that
        cannot be written is given up silently (it only costs a re-hash later)."""
        with self._lock:
            if key in self._keys:
                return
            self._keys.add(key)
            if self.path is None or not self._writable:
                return
            try:
                make_private_dir(self.path.parent, "verified-parts cache")
            except EnvironmentProblem:
                self._writable = False
                return
            fd = _open_trusted(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            if fd is None:
                self._writable = False  # someone else's file, or a link: leave it alone
                return
            try:
                os.write(fd, (json.dumps({"key": key}) + "\n").encode())
            except OSError:
                pass  # a cache that cannot be written only costs a re-hash later
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)


# -- split bundles read on this host ----------------------------------------------------------------

MAX_KNOWN = 32  # bundles remembered; the least recently used beyond that are forgotten
MAX_RECORD = 1 << 20  # a bundle's volumes.json (999 volumes and their checks fit many times over)
RECORD = "volumes.json"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def known_dir(state_path: Path) -> Path:
    """Where :class:`KnownBundles` keeps its bundles: beside the install state and the verified-parts cache."""
    return state_path.with_name("bundles")


class KnownBundles:
    """The split bundles this host has read, each in a folder named by the sha256 of its manifest: the manifest
    and the trusted signatures found beside it (laid out as in a bundle, so the bundle reader reads them back),
    and ``volumes.json``: the sha256 of each volume's signed listing, by which a disc is recognised, and which
    volumes were checked here and with what result.

    It lets a disc other than the first be checked (``verify --volume``), or an install start, while the first
    volume is not in the drive: whoever recalls a manifest checks its signatures against ``--trust`` again, so
    nothing here is believed on its own.  Like the verified-parts cache it is kept in a private directory, and
    one that someone else could write is ignored: nothing is then remembered or recalled."""

    def __init__(self, directory: Path | None) -> None:
        """The store in ``directory`` (None: remember nothing)."""
        self.directory = directory
        self._lock = threading.Lock()

    def _usable(self) -> bool:
        """Whether the store's directory (made or not yet) is only ours to write."""
        return self.directory is not None and dir_problem(self.directory) is None

    def _read_record(self, folder: Path) -> dict[str, object]:
        """A bundle's volumes.json, or {} when missing, unsafe or unreadable."""
        fd = _open_trusted(folder / RECORD, os.O_RDONLY)
        if fd is None:
            return {}
        try:
            with os.fdopen(fd, "rb") as fh:
                data = fh.read(MAX_RECORD + 1)
            record = json.loads(data) if len(data) <= MAX_RECORD else None
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _folders(self) -> list[Path]:
        """The remembered bundles' folders, most recently used first."""
        if self.directory is None or not self._usable():
            return []
        try:
            with os.scandir(self.directory) as entries:
                found = [(e.stat(follow_symlinks=False).st_mtime_ns, Path(e.path)) for e in entries if _HEX64.fullmatch(e.name)]
        except OSError:
            return []
        return [path for _, path in sorted(found, reverse=True)]

    def remember(
        self, manifest_bytes: bytes, signatures: Mapping[str, bytes], listings: Mapping[str, str], name: str, sequence: int
    ) -> None:
        """Keep the manifest, the signatures read (64-byte ones), and each volume's listing sha256 (``listings``:
        volume -> sha256); forget the least recently used bundles beyond :data:`MAX_KNOWN`.  Anything that cannot
        be written is given up silently: it only means the first disc is asked for next time."""
        if self.directory is None or not self._usable():
            return
        sha = hashlib.sha256(manifest_bytes).hexdigest()
        folder = self.directory / sha
        with self._lock:
            try:
                make_private_dir(folder / SIGNATURES_DIR, "remembered bundle")
                if _read_trusted(folder / MANIFEST_NAME, len(manifest_bytes)) != manifest_bytes:
                    atomic_write(folder / MANIFEST_NAME, manifest_bytes, mode=0o600)
                for fingerprint, signature in signatures.items():
                    path = folder / SIGNATURES_DIR / f"{fingerprint}.sig"
                    if _HEX64.fullmatch(fingerprint) and len(signature) == 64 and _read_trusted(path, 64) != signature:
                        atomic_write(path, signature, mode=0o600)
                record = self._read_record(folder)
                record.update({"schema_version": 1, "name": name, "sequence": sequence, "listings": dict(listings)})
                record.setdefault("checked", {})
                atomic_write(folder / RECORD, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
            except EnvironmentProblem:
                return
            for old in self._folders()[MAX_KNOWN:]:
                shutil.rmtree(old, ignore_errors=True)

    def recall(self, listing_sha256: str) -> list[Path]:
        """The folders of remembered bundles one of whose volumes has this listing, most recently used first (each
        laid out as a bundle's home: manifest.json and signatures/)."""
        found = []
        for folder in self._folders():
            listings = self._read_record(folder).get("listings")
            if isinstance(listings, dict) and listing_sha256 in listings.values():
                found.append(folder)
        return found

    def checks(self, manifest_sha256: str) -> dict[str, VolumeCheck]:
        """The volumes of a bundle checked on this host so far, with the latest result of each."""
        if self.directory is None or not _HEX64.fullmatch(manifest_sha256) or not self._usable():
            return {}
        checked = self._read_record(self.directory / manifest_sha256).get("checked")
        found: dict[str, VolumeCheck] = {}
        for volume, entry in (checked if isinstance(checked, dict) else {}).items():
            if isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("result", "at", "where")):
                found[str(volume)] = VolumeCheck(entry["result"], entry["at"], entry["where"])
        return found

    def record(self, manifest_sha256: str, checks: Mapping[str, VolumeCheck]) -> None:
        """Add the outcome of volumes checked now to a remembered bundle (one not remembered is left alone)."""
        if self.directory is None or not checks or not _HEX64.fullmatch(manifest_sha256) or not self._usable():
            return
        folder = self.directory / manifest_sha256
        with self._lock:
            record = self._read_record(folder)
            if not record:
                return
            checked = record.get("checked")
            merged = dict(checked) if isinstance(checked, dict) else {}
            merged.update({volume: check.to_dict() for volume, check in checks.items()})
            record["checked"] = merged
            with contextlib.suppress(EnvironmentProblem):
                atomic_write(folder / RECORD, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)


def _read_trusted(path: Path, cap: int) -> bytes | None:
    """A small file of ours (as :func:`_open_trusted` opens it), at most ``cap`` bytes; None when missing or unsafe."""
    fd = _open_trusted(path, os.O_RDONLY)
    if fd is None:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            return fh.read(cap + 1)
    except OSError:
        return None
