"""Parts: a blob cut into raw chunks, each compressed as one independent zstd frame.

A part never mixes two blobs and its raw chunk boundaries depend only on the part size, so the same
blob packed with the same part size gives parts with the same names and content ranges in every
bundle.  Each frame records its content size and a checksum, and its compressed size is guaranteed
not to exceed the part size (``raw_chunk_size`` leaves room for zstd's worst-case expansion).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from airgap._internal.util.tarstream import read_exact
from airgap.errors import ConflictError, IntegrityError, InternalError, UsageError
from airgap.model.manifest import Part
from airgap.progress import Transfer

MIN_PART_SIZE = 4096
_FRAME_SLACK = 64  # frame header, checksum and block headers beyond ZSTD_COMPRESSBOUND's margin
READ_BLOCK = 1 << 20
JOB_SIZE = 4 << 20
OVERLAP_LOG = 9
LONG_WINDOW_LOG = 27  # the largest window any part may need to decompress


def compress_bound(n: int) -> int:
    """ZSTD_COMPRESSBOUND from zstd.h: the worst-case compressed size of n bytes."""
    margin = ((128 << 10) - n) >> 11 if n < (128 << 10) else 0
    return n + (n >> 8) + margin


def raw_chunk_size(part_size: int) -> int:
    """The largest raw chunk whose compressed frame always fits in part_size bytes."""
    if part_size < MIN_PART_SIZE:
        raise InternalError(f"part size {part_size} is below {MIN_PART_SIZE}: PackOptions checks it")
    lo, hi = 1, part_size
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if compress_bound(mid) + _FRAME_SLACK <= part_size:
            lo = mid
        else:
            hi = mid - 1
    return lo


def make_compressor(level: int, threads: int, long_distance: bool = False) -> zstandard.ZstdCompressor:
    """The zstd compressor every part is written with; its output depends on the level (1-22, else a
    UsageError) and ``long_distance``, not on the number of threads."""
    if not 1 <= level <= 22:
        raise UsageError(f"compression level {level} is out of range", hint="use a zstd level from 1 to 22")
    # Multi-threaded mode even with one thread, so the output does not depend on the machine's core count.
    # 4 MiB jobs keep each worker's buffers small (the default costs ~40 MB per worker at level 3); a full
    # window of overlap between jobs (overlap_log 9) keeps the ratio at least as good as one zstd -3 stream.
    if long_distance:
        # zstd --long: a 128 MiB window finds repeats far apart (decompressing needs that much memory too);
        # larger jobs with an eighth of the window as overlap, or every job would re-read 128 MiB of history
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=max(1, threads), enable_ldm=True, window_log=LONG_WINDOW_LOG, job_size=32 << 20,
            overlap_log=6, write_checksum=True, write_content_size=True,
        )  # fmt: skip
    else:
        params = zstandard.ZstdCompressionParameters.from_level(
            level,
            threads=max(1, threads),
            job_size=JOB_SIZE,
            overlap_log=OVERLAP_LOG,
            write_checksum=True,
            write_content_size=True,
        )
    return zstandard.ZstdCompressor(compression_params=params)


class _HashingWriter:
    """File writer that hashes and counts what passes through it."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        """Hash, count and write ``data``."""
        self.sha.update(data)
        self.size += len(data)
        self._fh.write(data)
        return len(data)

    def flush(self) -> None:
        """Flush the underlying file."""
        self._fh.flush()


@dataclass(frozen=True)
class StagedPart:
    """A part written to the staging directory under a temporary name, not yet committed: its compressed size
    and sha256, and the range [offset, offset+length) of the blob it holds."""

    tmp_path: Path
    size: int
    sha256: str
    offset: int
    length: int


@dataclass(frozen=True)
class StagedBlob:
    """A blob written to staging as parts: its digest and size, computed while it was written."""

    digest: str
    size: int
    parts: tuple[StagedPart, ...]
    head: bytes  # first bytes of the blob, to recognise compressed layers


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BLOCK_MAX = 128 << 10  # zstd's Block_Maximum_Size


class NotOneFrame(ValueError):
    """Bytes that are not exactly one zstd frame of the kind pack writes."""


class FrameShape:
    """Follows the structure of one zstd frame as its bytes pass, without decompressing: the frame header
    (no dictionary, content size equal to ``length``, checksum flag set), its blocks, the checksum, and
    nothing after it (no second frame, no skippable frame).  A resumed pack signs a staged part only if it
    is exactly such a frame and its content, decompressed, equals the source."""

    def __init__(self, length: int) -> None:
        self._length = length
        self._pending = b""  # header or block-header bytes not yet complete
        self._need = 5  # magic and frame header descriptor first
        self._state = "header"
        self._skip = 0  # block bytes (or the checksum) still to pass

    def feed(self, data: bytes) -> None:
        """Follow the next bytes of the file; NotOneFrame as soon as they leave the shape pack writes."""
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
                continue
            if self._state == "done":
                raise NotOneFrame("bytes follow its zstd frame (a skippable frame, or a second frame)")
            take = min(self._need - len(self._pending), end - pos)
            self._pending += data[pos : pos + take]
            pos += take
            if len(self._pending) == self._need:
                self._advance()

    def finish(self) -> None:
        """At the end of the file: NotOneFrame unless the frame, checksum included, is complete."""
        if self._state != "done" or self._skip:
            raise NotOneFrame("the zstd frame is cut short")

    def _advance(self) -> None:
        """Act on a complete frame header, frame header remainder or block header held in ``_pending``."""
        head = self._pending
        if self._state == "header" and self._need == 5:
            if head[:4] != _ZSTD_MAGIC:
                raise NotOneFrame("it does not start with a zstd frame (a skippable frame, or not zstd)")
            fhd = head[4]
            single_segment, checksum, dict_flag, fcs_flag = fhd >> 5 & 1, fhd >> 2 & 1, fhd & 3, fhd >> 6
            if fhd & 0x08 or dict_flag or not checksum or (fcs_flag == 0 and not single_segment):
                raise NotOneFrame("its frame header is not one pack writes (dictionary, no checksum or no content size)")
            fcs_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
            self._need = 5 + (0 if single_segment else 1) + fcs_size
            return
        if self._state == "header":
            fcs_flag = head[4] >> 6
            fcs_size = (1, 2, 4, 8)[fcs_flag]  # flag 0 means one byte here: a single-segment frame
            size = int.from_bytes(head[-fcs_size:], "little") + (256 if fcs_flag == 1 else 0)
            if size != self._length:
                raise NotOneFrame(f"its frame header declares {size} bytes of content, not {self._length}")
            self._state, self._pending, self._need = "block", b"", 3
            return
        value = int.from_bytes(head, "little")
        last, kind, size = value & 1, value >> 1 & 3, value >> 3
        if kind == 3 or size > _BLOCK_MAX:
            raise NotOneFrame("it holds a malformed zstd block")
        self._skip = 1 if kind == 1 else size  # an RLE block carries one byte
        self._pending = b""
        if last:
            self._skip += 4  # the content checksum
            self._state = "done"


def _open_flags(write: bool) -> int:
    """Flags for a staged part: never through a link; a write creates the file exclusively, a read never blocks."""
    if write:
        return os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_staged(path: Path, dir_fd: int | None, write: bool = False) -> BinaryIO:
    """A staged part file, opened without following a symbolic link (relative to ``dir_fd`` when given).
    Writing creates a new file: an old one of that name is removed first, never written through."""
    name: str | Path = path.name if dir_fd is not None else path
    if write:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        fd = os.open(name, _open_flags(True), 0o666, dir_fd=dir_fd)
        return os.fdopen(fd, "wb")
    fd = os.open(name, _open_flags(False), dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


class _CompressingPart:
    """A new part: the chunk is compressed into a fresh file under a temporary name."""

    def __init__(
        self, path: Path, start: int, length: int, part_size: int, cctx: zstandard.ZstdCompressor, dir_fd: int | None
    ) -> None:
        self.path = path
        self._dir_fd = dir_fd
        self._start, self._length, self._part_size = start, length, part_size
        self._fh = open_staged(path, dir_fd, write=True)
        self._hw = _HashingWriter(self._fh)
        self._zw = cctx.stream_writer(self._hw, size=length, closefd=False, write_return_read=True)  # type: ignore[arg-type]

    def write(self, data: memoryview) -> None:
        """Compress the next bytes of the chunk into the file."""
        self._zw.write(data)

    def close(self) -> StagedPart:
        """End the frame and fsync the file; the part, with its compressed size and sha256.  If finishing
        fails, the file is removed."""
        try:
            self._zw.close()  # type: ignore[no-untyped-call]
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except BaseException:
            self.abort()
            raise
        self._fh.close()
        if self._hw.size > self._part_size:  # cannot happen by construction; never ship an oversized part
            raise InternalError(f"part {self.path.name} exceeds the part size")
        return StagedPart(self.path, self._hw.size, self._hw.sha.hexdigest(), self._start, self._length)

    def abort(self) -> None:
        """Close and remove the unfinished file."""
        with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path.name if self._dir_fd is not None else self.path, dir_fd=self._dir_fd)


class _ComparingPart:
    """Resuming: an interrupted pack staged this chunk already.  Nothing is written; instead the staged
    file must be exactly what pack writes for this chunk: every byte of it hashes to the journal's sha256,
    it is exactly one zstd frame (:class:`FrameShape`), and that frame decompresses to the source's bytes."""

    def __init__(self, staged: StagedPart, fh: BinaryIO) -> None:
        self.staged = staged
        self._fh = fh
        self._shape = FrameShape(staged.length)
        self._reader = _HashingReader(self._fh, on_data=self._shape.feed)
        dctx = zstandard.ZstdDecompressor(max_window_size=1 << LONG_WINDOW_LOG)
        self._zr = dctx.stream_reader(self._reader, read_size=READ_BLOCK, read_across_frames=False, closefd=False)  # type: ignore[arg-type]

    def _changed(self) -> ConflictError:
        """The error for a staged part whose content is not the source's: the image changed since."""
        return ConflictError(
            f"the source no longer matches staged part {self.staged.tmp_path.name} of the interrupted pack",
            hint="the image changed since the first attempt: pack again with --overwrite to start afresh",
        )

    def _tampered(self, why: str) -> ConflictError:
        """The error for a staged part that is not what pack wrote (see :func:`staged_part_changed`)."""
        return staged_part_changed(self.staged.tmp_path.name, why)

    def write(self, data: memoryview) -> None:
        """Check the next bytes of the source against the staged frame's content."""
        try:
            staged = read_exact(self._zr, len(data))
        except NotOneFrame as e:
            raise self._tampered(str(e)) from e
        except zstandard.ZstdError as e:
            raise self._changed() from e
        if staged != data:
            raise self._changed()

    def close(self) -> StagedPart:
        """Check the rest of the file: nothing more decompressed, one complete frame, and every byte hashing to the
        journaled size and sha256; the staged part, to be committed as it is."""
        try:
            leftover = self._zr.read(1)
            while self._reader.read(READ_BLOCK):
                pass
            self._shape.finish()
        except NotOneFrame as e:
            raise self._tampered(str(e)) from e
        except zstandard.ZstdError as e:
            raise self._changed() from e
        finally:
            self._fh.close()
        if leftover:
            raise self._changed()
        if self._reader.size != self.staged.size or self._reader.sha.hexdigest() != self.staged.sha256:  # type: ignore[union-attr]
            raise self._tampered("its bytes are not the ones journaled")
        return self.staged

    def abort(self) -> None:
        """Close the staged file; it stays for a later resume."""
        self._fh.close()


def staged_part_changed(name: str, why: str) -> ConflictError:
    """The error for a staged part someone other than pack changed; ``why`` says what is wrong with it."""
    return ConflictError(
        f"staged part {name} of the interrupted pack was changed after pack wrote it: {why}",
        hint="something other than airgap wrote to the staging area: pack again with --overwrite to start afresh",
    )


class BlobWriter:
    """Receives one blob's bytes in order and writes its parts under temporary names.

    ``reuse`` holds parts an interrupted pack staged for this blob (by index): those chunks are
    checked against the source instead of compressed again.  ``on_part`` hears of each new part once
    it is on disk (the bundle writer journals it).  With ``dir_fd`` (the staging directory, opened),
    part files are opened relative to it, so a directory swapped in by name is never written to.
    """

    def __init__(
        self,
        staging: Path,
        stem: str,
        size: int,
        part_size: int,
        compressor: zstandard.ZstdCompressor,
        transfer: Transfer,
        reuse: Mapping[int, StagedPart] | None = None,
        on_part: Callable[[int, StagedPart], None] | None = None,
        dir_fd: int | None = None,
    ) -> None:
        self._staging = staging
        self._stem = stem
        self._size = size
        self._chunk = raw_chunk_size(part_size)
        self._part_size = part_size
        self._cctx = compressor
        self._transfer = transfer
        self._reuse = reuse or {}
        self._on_part = on_part
        self._dir_fd = dir_fd
        self._sha = hashlib.sha256()
        self._written = 0
        self._parts: list[StagedPart] = []
        self._head = b""
        self._sink: _CompressingPart | _ComparingPart | None = None
        self._part_start = 0
        self._part_len = 0
        self.reused = 0
        if size == 0:
            self._open_part()

    def _open_part(self) -> None:
        """Start the next part: compare with the staged one an interrupted pack left for this chunk if it is
        still there, else compress into a new file."""
        index = len(self._parts)
        self._part_start = self._written
        self._part_len = min(self._chunk, self._size - self._written)
        staged = self._reuse.get(index)
        if staged is not None and staged.offset == self._part_start and staged.length == self._part_len:
            fh = self._open_reused(staged)
            if fh is not None:
                self._sink = _ComparingPart(staged, fh)
                return
        path = self._staging / f"{self._stem}.{index:05d}.tmp"
        self._sink = _CompressingPart(path, self._part_start, self._part_len, self._part_size, self._cctx, self._dir_fd)

    def _open_reused(self, staged: StagedPart) -> BinaryIO | None:
        """The staged file, or None when it is gone (it is compressed again).  One that is there but is
        not a regular file of the journaled size, owned by this user, stops the resume."""
        try:
            fh = open_staged(staged.tmp_path, self._dir_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise staged_part_changed(staged.tmp_path.name, "it is not a regular file") from e
        st = os.fstat(fh.fileno())
        why = (
            f"it belongs to uid {st.st_uid}" if st.st_uid != os.geteuid()
            else f"it is {st.st_size} bytes, the journal says {staged.size}" if st.st_size != staged.size
            else ""
        )  # fmt: skip
        if why:
            fh.close()
            raise staged_part_changed(staged.tmp_path.name, why)
        return fh

    def _close_part(self) -> None:
        """Finish the current part and record it; a new part is handed to ``on_part`` (journaled)."""
        sink, self._sink = self._sink, None
        if sink is None:
            return
        part = sink.close()
        index = len(self._parts)
        self._parts.append(part)
        if isinstance(sink, _ComparingPart):
            self.reused += 1
        elif self._on_part is not None:
            self._on_part(index, part)

    def write(self, data: bytes) -> None:
        """Take the blob's next bytes, cutting parts at chunk boundaries; more bytes than announced is an
        InternalError.  On failure the unfinished part is removed."""
        if self._written + len(data) > self._size:
            raise InternalError("blob is longer than its archive entry announced")
        if len(self._head) < 16:
            self._head += data[: 16 - len(self._head)]
        self._sha.update(data)
        view = memoryview(data)
        while view:
            if self._sink is None:
                self._open_part()
            room = self._part_start + self._part_len - self._written
            take = view[:room]
            try:
                self._sink.write(take)  # type: ignore[union-attr]
            except BaseException:
                self.abort()
                raise
            self._written += len(take)
            view = view[len(take) :]
            if self._written == self._part_start + self._part_len:
                self._close_part()
        self._transfer.moved(len(data))

    def finish(self) -> StagedBlob:
        """The staged blob, once exactly ``size`` bytes were written (fewer is an InternalError)."""
        if self._written != self._size:
            raise InternalError("blob is shorter than its archive entry announced")
        if self._sink is not None:
            self._close_part()
        return StagedBlob("sha256:" + self._sha.hexdigest(), self._size, tuple(self._parts), self._head)

    def abort(self) -> None:
        """Stop: an unfinished part is removed; finished ones stay for the caller (and a resume) to keep or drop."""
        if self._sink is not None:
            self._sink.abort()
            self._sink = None


class _HashingReader:
    """File reader that hashes (unless told not to) and counts what passes through it, and shows it to ``on_data``."""

    def __init__(self, fh: BinaryIO, hashing: bool = True, on_data: Callable[[bytes], None] | None = None) -> None:
        self._fh = fh
        self.sha = hashlib.sha256() if hashing else None
        self._on_data = on_data
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes from the file, hashed, counted and passed to ``on_data``."""
        data = self._fh.read(n)
        if self.sha is not None:
            self.sha.update(data)
        if self._on_data is not None:
            self._on_data(data)
        self.size += len(data)
        return data


def iter_part_data(fh: BinaryIO, part: Part, label: str, block: int = READ_BLOCK, check_hash: bool = True) -> Iterator[bytes]:
    """Decompress one part while hashing its compressed bytes.

    Yields raw data; raises IntegrityError at the end (before the caller can use the last block) if
    the part's size or sha256 differ from the manifest, or at once if it inflates past its declared
    length.  Callers must not commit anything from a part before this generator is exhausted.
    ``check_hash=False`` (a part verified before, see _internal/format/cache.py) skips only the sha256.
    """
    reader = _HashingReader(fh, check_hash)
    dctx = zstandard.ZstdDecompressor(max_window_size=1 << LONG_WINDOW_LOG)
    produced = 0
    pending: bytes | None = None
    try:
        with dctx.stream_reader(reader, read_size=block, read_across_frames=False, closefd=False) as zr:  # type: ignore[arg-type]
            while True:
                data = zr.read(block)
                if not data:
                    break
                produced += len(data)
                if produced > part.length:
                    raise IntegrityError(
                        f"part {part.path} decompresses past its declared length {part.length}",
                        hint="the part was crafted or damaged; do not use this bundle",
                    )
                if pending is not None:
                    yield pending
                pending = data
    except zstandard.ZstdError as e:
        _drain(reader)
        _check_digest(reader, part, label)
        raise IntegrityError(f"{label} is not a valid zstd frame ({e})") from e
    _drain(reader)
    _check_digest(reader, part, label)
    if produced != part.length:
        raise IntegrityError(f"{label} holds {produced} bytes, the manifest says {part.length}")
    if pending is not None:
        yield pending


def _drain(reader: _HashingReader) -> None:
    """Read the rest of a part, so its size and sha256 cover every byte of the file."""
    while reader.read(READ_BLOCK):
        pass


def _check_digest(reader: _HashingReader, part: Part, label: str) -> None:
    """Refuse a part whose size or sha256 (when hashed) differs from the manifest's, with an IntegrityError."""
    if reader.size != part.size:
        raise IntegrityError(
            f"{label} is {reader.size} bytes, the manifest says {part.size}",
            hint="the part is truncated or damaged: copy it again from the original medium",
        )
    if reader.sha is not None and reader.sha.hexdigest() != part.sha256:
        raise IntegrityError(
            f"{label} does not match its sha256 in the manifest",
            hint="the part is damaged or was replaced: copy it again from the original medium",
        )
