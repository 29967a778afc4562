"""A cache of parts already verified: re-running an interrupted install does not hash them again.

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
import json
import os
import threading
from pathlib import Path

from airgap.errors import EnvironmentProblem
from airgap.model.manifest import Part
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
