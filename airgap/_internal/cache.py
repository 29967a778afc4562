"""A cache of parts already verified: re-running an interrupted install does not hash them again.

Entries are keyed by the part file's identity (device, inode, absolute path, size, mtime in ns) and
the digest the manifest expects; any change to the file gives a new key.  The cache lives outside the
bundle, beside the install state, as an append-only file of JSON lines (a torn last line is ignored).
Skipping a part's hash is safe because install still checks every blob's digest over its decompressed
bytes before the archive's manifest.json is sent to the engine.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from airgap.models import Part


def file_key(fd: int, path: Path, part: Part) -> str:
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{part.sha256}:{os.path.abspath(path)}"


class VerifiedCache:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._keys: set[str] = set()
        self._lock = threading.Lock()
        if path is None:
            return
        try:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                        self._keys.add(entry["key"])
        except OSError:
            pass  # no cache yet, or unreadable: everything is hashed

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str) -> None:
        with self._lock:
            if key in self._keys:
                return
            self._keys.add(key)
            if self.path is None:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"key": key}) + "\n")
            except OSError:
                pass  # a cache that cannot be written only costs a re-hash later
