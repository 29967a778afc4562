"""Streaming tar: read entries from a non-seekable stream, and write a tar as a stream of blocks.

Only what image archives use is supported: regular files, directories, symbolic and hard links,
PAX and GNU long-name headers, base-256 sizes.  Data is never buffered whole.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from airgap.errors import FormatError

BLOCK = 512


class Readable(Protocol):
    """Anything with a file-like ``read``: a socket, a pipe, a file, an HTTP response."""

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes (all that is left when negative); b"" only at the end of the stream."""
        ...


def read_exact(stream: Readable, n: int) -> bytes:
    """Read n bytes, or fewer only at end of stream."""
    data = stream.read(n)
    if len(data) == n or not data:
        return data
    chunks = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


@dataclass(frozen=True)
class TarEntry:
    """An archive member as read from its header: normalized name, data size, kind, and link target."""

    name: str
    size: int
    kind: str  # "file", "dir", "symlink", "hardlink", "other"
    linkname: str = ""


class EntryReader:
    """Reads exactly one entry's data from the underlying stream."""

    def __init__(self, stream: Readable, size: int, label: str) -> None:
        self._stream = stream
        self.remaining = size
        self._label = label

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the entry, never past its end; a stream that ends inside it is a FormatError."""
        if self.remaining <= 0:
            return b""
        if n < 0 or n > self.remaining:
            n = self.remaining
        data = self._stream.read(n)
        if not data:
            raise FormatError(f"{self._label}: archive ends inside entry data", hint="the archive is truncated")
        self.remaining -= len(data)
        return data

    def drain(self, block: int = 1 << 20) -> None:
        """Skip what is left of the entry's data, in blocks."""
        while self.remaining > 0:
            self.read(min(block, self.remaining))


def _parse_pax(data: bytes, label: str) -> dict[str, str]:
    """The key=value records of a PAX extended header, each prefixed by its length; a malformed one is a FormatError."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise FormatError(f"{label}: malformed PAX header")
        try:
            length = int(data[pos:space])
        except ValueError as e:
            raise FormatError(f"{label}: malformed PAX header") from e
        if length <= 0 or pos + length > len(data):
            raise FormatError(f"{label}: malformed PAX header")
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        fields[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return fields


_KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
}
_MAX_META = 1 << 20


def iter_entries(stream: Readable, label: str) -> Iterator[tuple[TarEntry, EntryReader]]:
    """Yield each entry with a reader for its data.  The caller may leave data unread: it is skipped."""
    pax: dict[str, str] = {}
    long_name: str | None = None
    long_link: str | None = None
    while True:
        header = read_exact(stream, BLOCK)
        if not header:
            return  # tolerate a missing end-of-archive marker only at a block boundary
        if len(header) < BLOCK:
            raise FormatError(f"{label}: archive is truncated", hint="copy or export the archive again")
        if header == b"\0" * BLOCK:
            return
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as e:
            raise FormatError(f"{label}: not a tar archive or a damaged header ({e})") from e
        size = info.size
        padding = (-size) % BLOCK
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            if size > _MAX_META:
                raise FormatError(f"{label}: oversized tar extension header")
            data = read_exact(stream, size + padding)[:size]
            if len(data) < size:
                raise FormatError(f"{label}: archive is truncated")
            if info.type == tarfile.XHDTYPE:
                pax = _parse_pax(data, label)
            elif info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif info.type == tarfile.GNUTYPE_LONGLINK:
                long_link = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        name = pax.get("path") or long_name or info.name
        linkname = pax.get("linkpath") or long_link or info.linkname
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError as e:
                raise FormatError(f"{label}: bad PAX size") from e
            padding = (-size) % BLOCK
        pax, long_name, long_link = {}, None, None
        kind = _KINDS.get(info.type, "other")
        if kind in ("dir", "symlink", "hardlink"):
            size, padding = 0, 0  # links and directories carry no data
        entry = TarEntry(name=normalize(name), size=size, kind=kind, linkname=linkname)
        reader = EntryReader(stream, size, f"{label}: {entry.name}")
        yield entry, reader
        reader.drain()
        if padding:
            pad = read_exact(stream, padding)
            if len(pad) < padding:
                raise FormatError(f"{label}: archive is truncated")


def normalize(name: str) -> str:
    """Archive member names without leading './' or '/' and without trailing '/'."""
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def header(name: str, size: int, mode: int = 0o644) -> bytes:
    """A PAX-format header block (or blocks) for a regular file."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT)


def padding(size: int) -> bytes:
    """The zero bytes that pad ``size`` bytes of member data to a whole tar block."""
    return b"\0" * ((-size) % BLOCK)


END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
