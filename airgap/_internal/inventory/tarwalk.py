"""Walking a layer as it streams by: blocks from a bounded queue, decompressed when the layer is gzip or
zstd, cut into tar members.  Members the inventory does not need are skipped without a copy.

Every stream here offers ``view(n)``: up to ``n`` bytes (fewer at a block's end, none at the end), valid
until the next call.  Decompression is capped by ratio (:data:`MAX_EXPANSION`), so a small hostile layer
cannot make the walk run on for ever.
"""

from __future__ import annotations

import gzip
import queue
import threading
import zlib
from collections.abc import Iterator
from typing import IO, NamedTuple, Protocol, cast

import zstandard

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
MAX_EXPANSION = 100  # a compressed layer is walked up to 100x its size (plus EXPANSION_SLACK), then given up
EXPANSION_SLACK = 64 << 20
MAX_PAX = 1 << 20
READ_SIZE = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class InventoryLimit(Exception):
    """A layer or member went past what the inventory reads; the message says what (becomes a warning)."""


class Aborted(Exception):
    """The pack stopped while the layer was being walked."""


class Stream(Protocol):
    """Bytes in views."""

    def view(self, n: int) -> memoryview:
        """Up to ``n`` bytes (at least one unless the stream ended), valid until the next call."""
        ...


class QueueStream:
    """The blocks a producer puts on a bounded queue, ``None`` last; ``aborted`` set: stop at the next block."""

    def __init__(self, blocks: queue.Queue[bytes | None], aborted: threading.Event) -> None:
        self._blocks = blocks
        self._aborted = aborted
        self._buf = memoryview(b"")
        self._pos = 0
        self._ended = False
        self.consumed = 0

    def view(self, n: int) -> memoryview:
        """The next bytes of the current block, taking the next block when it is used up."""
        while self._pos >= len(self._buf):
            if self._ended:
                return memoryview(b"")
            item = self._blocks.get()
            if self._aborted.is_set():
                raise Aborted
            if item is None:
                self._ended = True
                return memoryview(b"")
            self._buf, self._pos = memoryview(item), 0
        end = min(len(self._buf), self._pos + n)
        out = self._buf[self._pos : end]
        self.consumed += end - self._pos
        self._pos = end
        return out

    def drain(self) -> None:
        """Take every block left, up to the end: the producer never waits on a walk that gave up."""
        while not self._ended:
            item = self._blocks.get()
            if self._aborted.is_set():
                raise Aborted
            self._ended = item is None


class BytesStream:
    """A small blob held in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self.consumed = 0

    def view(self, n: int) -> memoryview:
        """The next ``n`` bytes at most."""
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        self.consumed = self._pos
        return out


class _RawFile:
    """A Stream as the file object decompressors read."""

    def __init__(self, raw: Stream) -> None:
        self._raw = raw
        self.taken = 0

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (a default block when n < 0)."""
        data = bytes(self._raw.view(n if n > 0 else READ_SIZE))
        self.taken += len(data)
        return data

    def readable(self) -> bool:
        """A file to read."""
        return True


class _Decompressed:
    """A gzip or zstd layer's decompressed bytes, refused past :data:`MAX_EXPANSION` times its input."""

    def __init__(self, raw: Stream, kind: str) -> None:
        self._file = _RawFile(raw)
        if kind == "gzip":
            self._reader: gzip.GzipFile | zstandard.ZstdDecompressionReader = gzip.GzipFile(
                fileobj=cast("IO[bytes]", self._file), mode="rb"
            )
        else:
            dctx = zstandard.ZstdDecompressor(max_window_size=1 << 27)
            self._reader = dctx.stream_reader(cast("IO[bytes]", self._file), read_size=READ_SIZE, read_across_frames=True)
        self._buf = memoryview(b"")
        self._pos = 0
        self._out = 0

    def view(self, n: int) -> memoryview:
        """Decompressed bytes; a stream that does not decompress is an InventoryLimit (a warning)."""
        if self._pos >= len(self._buf):
            try:
                data = self._reader.read(READ_SIZE)
            except (OSError, EOFError, zlib.error, zstandard.ZstdError) as e:
                raise InventoryLimit(f"the layer does not decompress ({e})") from e
            self._out += len(data)
            if self._out > MAX_EXPANSION * self._file.taken + EXPANSION_SLACK:
                raise InventoryLimit(f"the layer expands more than {MAX_EXPANSION}x: walked only its first {self._out >> 20} MiB")
            self._buf, self._pos = memoryview(data), 0
        end = min(len(self._buf), self._pos + n)
        out = self._buf[self._pos : end]
        self._pos = end
        return out


def layer_kind(head: bytes) -> str | None:
    """What a blob's first bytes (512 of them, or all it has) say it is: "tar", "gzip", "zstd" or None."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if len(head) >= BLOCK and (head[:BLOCK] == ZERO_BLOCK or _checksum_ok(head[:BLOCK])):
        return "tar"
    return None


def layer_stream(raw: Stream, kind: str) -> Stream:
    """The tar stream of a layer of ``kind``."""
    return raw if kind == "tar" else _Decompressed(raw, kind)


def read_exact(stream: Stream, n: int) -> bytes:
    """``n`` bytes, or fewer only at the end."""
    first = stream.view(n)
    if len(first) == n or not first:
        return bytes(first)
    chunks = [bytes(first)]
    got = len(first)
    while got < n:
        more = stream.view(n - got)
        if not more:
            break
        chunks.append(bytes(more))
        got += len(more)
    return b"".join(chunks)


def skip(stream: Stream, n: int) -> int:
    """Skip ``n`` bytes without copying them; the number skipped (fewer only at the end)."""
    left = n
    while left > 0:
        got = len(stream.view(min(left, 1 << 30)))
        if not got:
            break
        left -= got
    return n - left


class Truncated(InventoryLimit):
    """The layer ends inside a member."""


class Member:
    """One member's data: ``remaining`` bytes of the layer stream, hashed as they pass when ``sha`` is set."""

    __slots__ = ("_stream", "remaining", "sha", "size")

    def __init__(self, stream: Stream, size: int, sha: object | None = None) -> None:
        self._stream = stream
        self.size = size
        self.remaining = size
        self.sha: object | None = sha

    def view(self, n: int) -> memoryview:
        """Up to ``n`` bytes of the member; empty at its end; a layer that ends inside it is Truncated."""
        if self.remaining <= 0:
            return memoryview(b"")
        out = self._stream.view(min(n, self.remaining))
        if not out:
            raise Truncated("the layer ends inside a file")
        self.remaining -= len(out)
        if self.sha is not None:
            self.sha.update(out)  # type: ignore[attr-defined]
        return out

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes of the member, or all it has left when fewer."""
        return read_exact(self, min(n, self.remaining))

    def skip_rest(self) -> None:
        """Pass over what is left (hashing it when hashed)."""
        while self.remaining > 0:
            self.view(8 << 20)


class Entry(NamedTuple):
    """A tar member's header: its normalized path, kind ("file", "dir", "symlink", "hardlink", "other"),
    data size and link target."""

    path: str
    kind: str
    size: int
    linkname: str = ""


_KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"2": "symlink", b"1": "hardlink"}


def _checksum_ok(header: bytes) -> bool:
    """Whether a 512-byte block is a tar header (its checksum holds, counted unsigned or signed)."""
    field = header[148:156].split(b"\0", 1)[0].strip(b" ")
    try:
        stored = int(field, 8) if field else -1
    except ValueError:
        return False
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    if stored == unsigned:
        return True
    signed = unsigned - 2 * sum(b for b in header if b >= 0x80)  # old writers summed signed chars
    return stored == signed


def _number(field: bytes) -> int:
    """A header's numeric field: octal text, or GNU base-256."""
    if 0x30 <= field[0] <= 0x37 and field[-1] in (0, 0x20):  # the usual: octal digits, then a NUL or a space
        try:
            return int(field[:-1], 8)
        except ValueError:
            pass
    if field[:1] and field[0] & 0x80:
        if field[0] != 0x80:
            raise InventoryLimit("a tar header has a negative size")
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError as e:
        raise InventoryLimit("a tar header has a malformed size") from e


def _pax(data: bytes) -> dict[bytes, bytes]:
    """The records of a PAX extended header (a malformed one ends the walk)."""
    fields: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError as e:
            raise InventoryLimit("a tar PAX header is malformed") from e
        if space < 0 or length <= 0 or pos + length > len(data):
            raise InventoryLimit("a tar PAX header is malformed")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        fields[key] = value
        pos += length
    return fields


def _field(header: bytes, start: int, end: int) -> bytes:
    """A NUL-terminated text field of a header."""
    cut = header.find(b"\0", start, end)
    return header[start : end if cut < 0 else cut]


def _with_prefix(header: bytes, name: bytes) -> bytes:
    """A POSIX ustar name with its prefix field, when it has one."""
    if header[257:263] == b"ustar\x00" and header[345] != 0:
        return _field(header, 345, 500) + b"/" + name
    return name


def normalize(name: str) -> str:
    """A member path without leading ``./`` or ``/`` and without a trailing ``/``."""
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def walk(stream: Stream) -> Iterator[tuple[Entry, Member]]:
    """Each member of a tar stream with its data; data the caller leaves unread is skipped.  A damaged
    header ends the walk with an InventoryLimit; the end-of-archive marker ends it quietly."""
    pax: dict[bytes, bytes] = {}
    long_name: bytes | None = None
    long_link: bytes | None = None
    while True:
        header = read_exact(stream, BLOCK)
        if not header or header == ZERO_BLOCK:
            return
        if len(header) < BLOCK:
            raise Truncated("the layer ends inside a tar header")
        if not _checksum_ok(header):
            raise InventoryLimit("the layer holds a damaged tar header")
        kind_flag = header[156:157]
        size = _number(header[124:136])
        padding = (-size) % BLOCK
        if kind_flag in (b"x", b"g", b"L", b"K"):
            if size > MAX_PAX:
                raise InventoryLimit("the layer holds an oversized tar extension header")
            data = read_exact(stream, size + padding)[:size]
            if len(data) < size:
                raise Truncated("the layer ends inside a tar header")
            if kind_flag == b"x":
                pax = _pax(data)
            elif kind_flag == b"L":
                long_name = data.rstrip(b"\0")
            elif kind_flag == b"K":
                long_link = data.rstrip(b"\0")
            continue
        kind = _KINDS.get(kind_flag, "other")
        if pax or long_name is not None or long_link is not None:
            name = pax.get(b"path") or long_name or _field(header, 0, 100)
            link = pax.get(b"linkpath") or long_link or _field(header, 157, 257)
            if b"path" not in pax and long_name is None:
                name = _with_prefix(header, name)
            if b"size" in pax:
                try:
                    size = int(pax[b"size"])
                except ValueError as e:
                    raise InventoryLimit("a tar PAX header has a malformed size") from e
                padding = (-size) % BLOCK
            pax, long_name, long_link = {}, None, None
        else:
            name = _with_prefix(header, _field(header, 0, 100))
            link = _field(header, 157, 257) if kind in ("symlink", "hardlink") else b""
        if kind in ("dir", "symlink", "hardlink"):
            size, padding = 0, 0
        path = name.decode("utf-8", "surrogateescape")
        if path.startswith(("./", "/")) or path.endswith("/"):
            path = normalize(path)
        entry = Entry(path, kind, size, normalize(link.decode("utf-8", "surrogateescape")) if link else "")
        member = Member(stream, size)
        yield entry, member
        member.sha = None
        member.skip_rest()
        if padding and skip(stream, padding) < padding:
            raise Truncated("the layer ends inside a tar member's padding")
