"""Writing a bundle directory: staging parts (with a resume journal), committing them, the signed side
files and the manifest, last.

Layout::

    BUNDLE/
      manifest.json                 signed; written last: a bundle without it is not complete
      signatures/<fingerprint>.sig  raw Ed25519 signatures over manifest.json's exact bytes
      parts/<blob-hex>.<NNNNN>.zst  one zstd frame each, never over the part size
      .airgap-staging/              parts being written and their journal (removed once the manifest exists)

Everything below BUNDLE is created and opened without following symbolic links (relative to an open
directory), so a link planted in the output directory never receives a write.

Resume: a pack signs only bytes it wrote.  The staging directory is made mode 0700; its journal starts
with a header naming the pack (a digest of the caller's ``resume_key``: sources, options, signer) and
every entry carries an HMAC under a key derived from ``resume_key``.  A later pack reuses staged parts
only if the output directory holds nothing but what an interrupted pack of this user leaves, the staging
directory and journal belong to this user and nobody else can write them, the header names the same
pack, each entry's HMAC holds, and each reused file is exactly one zstd frame whose every byte hashes
to the journaled sha256 and whose content equals the source (see ``parts._ComparingPart``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import zstandard

from airgap._internal.format.parts import BlobWriter, StagedBlob, StagedPart, iter_part_data, open_staged, staged_part_changed
from airgap._internal.sources.base import StoredBlob
from airgap._internal.util import fsutil
from airgap._internal.util.tarstream import EntryReader, read_exact
from airgap.errors import ConflictError, FormatError, InternalError, UsageError
from airgap.model.manifest import (
    INSTALLER_DIR,
    MANIFEST_NAME,
    PARTS_DIR,
    SBOM_DIR,
    SIGNATURES_DIR,
    Blob,
    BundleFile,
    Manifest,
    Part,
    part_path,
)
from airgap.progress import Transfer

STAGING_DIR = ".airgap-staging"
GUESS_HEAD = 1 << 20  # a delta's guess compares the first MiB of a member with the base layer's
VOLUME_GLOB = "vol-[0-9][0-9]*"
JOURNAL = "journal.jsonl"
JOURNAL_FORMAT = 1
COPY_BLOCK = 4 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_STEM_RE = re.compile(r"[0-9a-f]{32}(?:-[0-9]{1,9})?")
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def _is_volume_dir(name: str) -> bool:
    """Whether ``name`` is a volume folder's (vol-NN or vol-NNN)."""
    return bool(re.fullmatch(r"vol-[0-9]{2,3}", name))


def _is_volume_listing(name: str) -> bool:
    """Whether ``name`` is a volume listing's (volume-NN.txt or volume-NNN.txt)."""
    return bool(re.fullmatch(r"volume-[0-9]{2,3}\.txt", name))


class TapStream(Protocol):
    """One blob's bytes, lent as they are staged."""

    def feed(self, data: bytes) -> None:
        """The blob's next bytes (the writer's own buffer, never to be changed)."""

    def close(self, digest: str | None) -> None:
        """The blob is staged as ``digest``; None: it was not (the pack is failing)."""


class BlobTap(Protocol):
    """Sees every blob's bytes as the writer stages them: pack's inventory reads the layers this way, in the
    same pass (no second read of the source, no copy)."""

    def open(self, name: str, size: int) -> TapStream:
        """The next blob, ``size`` bytes, from the member ``name``."""
        ...


class SpeculationMiss(Exception):
    """A member was only hashed because its size matched a base layer's, and it turned out to be new."""


def _not_private(st: os.stat_result, kind: Callable[[int], bool]) -> str:
    """Why an entry of the output directory cannot be one this user's pack made, or "" when it can."""
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if not kind(st.st_mode):
        return "not a directory" if kind is stat.S_ISDIR else "not a regular file"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}"
    if st.st_mode & _OTHERS_WRITE:
        return f"writable by other users, mode {stat.S_IMODE(st.st_mode):04o}"
    return ""


def journal_key_id(resume_key: str) -> str:
    """What the journal's header records of the resume key: a digest, which reveals nothing of it."""
    return hashlib.sha256(b"airgap staging key\0" + resume_key.encode("utf-8", "surrogateescape")).hexdigest()


def journal_mac_key(resume_key: str) -> bytes:
    """The key journal entries are authenticated under, derived from the resume key (never written down)."""
    return hashlib.sha256(b"airgap staging mac\0" + resume_key.encode("utf-8", "surrogateescape")).digest()


def journal_mac(mac_key: bytes, entry: dict[str, object]) -> str:
    """The HMAC a journal entry (without its "mac" field) carries."""
    body = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(mac_key, body, hashlib.sha256).hexdigest()


class BundleWriter:
    """Stages blobs as parts, then commits the referenced ones and writes the manifest last.

    ``resume_key``: one opaque string naming this pack (its sources as given, part size, level, long
    distance, base bundle, signer...).  Staging left by an interrupted pack is reused only under the same
    key; staging of this user under another key (or none) is discarded (:attr:`discarded_parts`).  Without
    a key nothing is ever resumed.

    ``guesses``: for a delta, the base bundle's layers by size, each with the sha256 of its first MiB
    (:data:`GUESS_HEAD`).  A member of such a size whose first MiB matches is most likely that layer, which
    the delta leaves out: it is only hashed, not compressed or written.  If one turns out to be needed,
    commit raises :class:`SpeculationMiss` and pack runs again without guessing.  A caller that knows a
    blob's digest before reading it (a registry, a delta recipe) stores it with ``guess=False``.

    The writer holds the staging directory open: end with :meth:`cleanup` or :meth:`keep_for_resume`."""

    def __init__(
        self,
        out_dir: Path,
        part_size: int,
        compressor: zstandard.ZstdCompressor,
        overwrite: bool,
        transfer: Transfer,
        level: int = 0,
        guesses: dict[int, frozenset[str]] | None = None,
        resume_key: str | None = None,
        tap: BlobTap | None = None,
    ) -> None:
        self.out_dir = out_dir
        self._tap = tap  # the inventory: lent every blob's bytes as they are staged
        self._guesses = guesses or {}
        self.hashed_only: dict[str, int] = {}  # digest -> size: members hashed, not stored
        self.part_size = part_size
        self._cctx = compressor
        self._transfer = transfer
        self._level = level
        self._staged: dict[str, StagedBlob] = {}
        self._counter = 0
        self._stems_used: set[str] = set()
        self.staging = out_dir / STAGING_DIR
        self._journal: dict[str, dict[int, StagedPart]] = {}
        self._key_id = None if resume_key is None else journal_key_id(resume_key)
        self._mac_key = secrets.token_bytes(32) if resume_key is None else journal_mac_key(resume_key)  # none: never resumed
        self.resumable_parts = 0  # parts an interrupted pack left staged
        self.reused_parts = 0  # ... of which this pack used instead of compressing again
        self.discarded_parts = 0  # parts this user's interrupted pack of other sources or options left: dropped
        self.new_parts = 0
        self._staging_fd: int | None = None
        self._torn = False  # the journal ends inside a line (cut by a crash)
        try:
            self._prepare(overwrite)
        except OSError as e:
            self._close()
            raise fsutil.io_error(e, str(out_dir)) from e
        except BaseException:
            self._close()
            raise

    # -- directories, never through a symbolic link ----------------------------------------------
    @contextlib.contextmanager
    def _dir(self, *names: str, create: bool = True) -> Iterator[int]:
        """An open directory below the output directory, each level made (mode 0755) and opened without
        following a link: a link or a file in the way raises ConflictError."""
        fd = os.open(self.out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, name in enumerate(names):
                if name in ("", ".", "..") or "/" in name:
                    raise InternalError(f"bad bundle path component {name!r}")
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=fd)
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if isinstance(e, FileNotFoundError):
                        raise
                    where = "/".join(names[: i + 1])
                    raise ConflictError(
                        f"{self.out_dir / where} is a symbolic link or not a directory: airgap did not make it",
                        hint="pack into an empty directory that only you can write, or pass --overwrite",
                    ) from e
                os.close(fd)
                fd = sub
            yield fd
        finally:
            os.close(fd)

    def _staging_dir_fd(self) -> int:
        """The open staging directory; an InternalError once the writer was cleaned up."""
        if self._staging_fd is None:
            raise InternalError("the bundle writer was used after cleanup")
        return self._staging_fd

    def _close(self) -> None:
        """Close the staging directory (the files stay)."""
        if self._staging_fd is not None:
            os.close(self._staging_fd)
            self._staging_fd = None

    # -- the output directory: empty, interrupted, or overwritten ----------------------------------
    def _prepare(self, overwrite: bool) -> None:
        """Make the output directory ready: empty, or holding only what an interrupted pack of this user left
        (resumed when the journal names this pack), or wiped with ``overwrite``; anything else is refused."""
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise UsageError(f"output {out} exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        with self._dir() as out_fd:
            names = sorted(os.listdir(out_fd))
            keep_staging = False
            if names:
                foreign = self._foreign(out_fd, names)
                interrupted = not foreign and MANIFEST_NAME not in names and STAGING_DIR in names
                if not overwrite and not interrupted:
                    raise self._not_empty(foreign)
                if interrupted and not overwrite:
                    keep_staging = self._open_interrupted(out_fd)
                self._wipe(out_fd, names, keep_staging)
            if not keep_staging:
                self._make_staging(out_fd)

    def _not_empty(self, foreign: tuple[str, str] | None = None) -> ConflictError:
        """The error for an output directory pack may not write into; ``foreign`` names the entry at fault and why."""
        why = f", and {foreign[0]} is not from an interrupted pack of this user ({foreign[1]})" if foreign else ""
        return ConflictError(
            f"output directory {self.out_dir} is not empty{why}",
            hint="choose an empty directory or pass --overwrite (which discards what is there)",
        )

    def _foreign(self, out_fd: int, names: list[str]) -> tuple[str, str] | None:
        """The first entry an interrupted pack of this user cannot have left, and why; None if none."""
        for name in names:
            st = os.stat(name, dir_fd=out_fd, follow_symlinks=False)
            if name == STAGING_DIR:
                why = _not_private(st, stat.S_ISDIR)  # nobody else may have written what is resumed
            elif name in (PARTS_DIR, SIGNATURES_DIR, INSTALLER_DIR, SBOM_DIR) or _is_volume_dir(name):
                why = _not_private(st, stat.S_ISDIR) if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid() else ""
                why = why or ("" if stat.S_ISDIR(st.st_mode) else "not a directory")
            elif _is_volume_listing(name) or name == MANIFEST_NAME:
                why = _not_private(st, stat.S_ISREG) if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid() else ""
                why = why or ("" if stat.S_ISREG(st.st_mode) else "not a regular file")
            else:
                why = "airgap never writes it"
            if why:
                return name, why
        return None

    def _open_interrupted(self, out_fd: int) -> bool:
        """Open the staging an interrupted pack left; True if this pack resumes from it."""
        fd = os.open(STAGING_DIR, _DIR_FLAGS, dir_fd=out_fd)
        self._staging_fd = fd
        why = _not_private(os.fstat(fd), stat.S_ISDIR)  # again, on what was opened
        if why:
            raise self._not_empty((STAGING_DIR, why))
        try:
            journal = open_staged(self.staging / JOURNAL, fd)
        except FileNotFoundError:
            self._discard_staging()
            return False
        except OSError as e:
            raise self._not_empty((f"{STAGING_DIR}/{JOURNAL}", "not a regular file")) from e
        with journal:
            st = os.fstat(journal.fileno())
            why = _not_private(st, stat.S_ISREG) or ("it has other hard links" if st.st_nlink != 1 else "")
            if why:
                raise self._not_empty((f"{STAGING_DIR}/{JOURNAL}", why))
            lines = iter(journal)
            if not self._same_pack(next(lines, b"")):
                self.discarded_parts = sum(1 for _ in lines)
                self._discard_staging()
                return False
            self._load_journal(lines)
        return True

    def _same_pack(self, header: bytes) -> bool:
        """Whether the journal's header names this pack (same format, same resume key digest)."""
        try:
            h = json.loads(header)
        except ValueError:
            return False
        return (
            isinstance(h, dict)
            and h.get("airgap_staging") == JOURNAL_FORMAT
            and self._key_id is not None
            and hmac.compare_digest(str(h.get("key")).encode(), self._key_id.encode())
        )

    def _discard_staging(self) -> None:
        """Drop the staging an interrupted pack left (links are removed, never followed)."""
        self._close()
        shutil.rmtree(self.staging, ignore_errors=True)  # never follows a link

    def _wipe(self, out_fd: int, names: list[str], keep_staging: bool) -> None:
        """Empty the output directory (keeping the staging when resuming), manifests first: an interrupted
        overwrite never leaves a bundle that looks complete."""

        def is_dir(name: str) -> bool:
            """Whether ``name`` in the output directory is a directory (a link to one is not)."""
            try:
                return stat.S_ISDIR(os.stat(name, dir_fd=out_fd, follow_symlinks=False).st_mode)
            except FileNotFoundError:
                return False

        # manifests go first, so an interrupted overwrite never leaves a bundle that looks complete
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(MANIFEST_NAME, dir_fd=out_fd)
        for name in names:
            if _is_volume_dir(name) and is_dir(name):
                with self._dir(name, create=False) as vol_fd, contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(MANIFEST_NAME, dir_fd=vol_fd)
        for name in names:
            if name == STAGING_DIR and keep_staging:
                continue
            if is_dir(name):
                shutil.rmtree(self.out_dir / name, ignore_errors=True)  # never follows a link
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=out_fd)

    def _make_staging(self, out_fd: int) -> None:
        """A new staging directory, mode 0700, and its journal's header naming this pack."""
        try:
            os.mkdir(STAGING_DIR, 0o700, dir_fd=out_fd)
        except FileExistsError as e:
            raise ConflictError(
                f"{self.staging} appeared while pack was preparing {self.out_dir}",
                hint="another process writes to the output directory: pack into a directory only you can write",
            ) from e
        fd = os.open(STAGING_DIR, _DIR_FLAGS, dir_fd=out_fd)
        self._staging_fd = fd
        os.fchmod(fd, 0o700)
        header = json.dumps({"airgap_staging": JOURNAL_FORMAT, "key": self._key_id}, sort_keys=True) + "\n"
        jfd = os.open(JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        with os.fdopen(jfd, "w", encoding="utf-8") as fh:
            fh.write(header)
            fh.flush()
            os.fsync(fh.fileno())
        os.fsync(fd)

    # -- resume ---------------------------------------------------------------------------------
    def _stem(self, name: str, size: int) -> str:
        """Staged part names for one archive member: the same member, part size and level, the same names."""
        key = f"{name}\0{size}\0{self.part_size}\0{self._level}".encode("utf-8", "surrogateescape")
        return hashlib.sha256(key).hexdigest()[:32]

    def _mac(self, entry: dict[str, object]) -> str:
        """The HMAC of a journal entry under this pack's key."""
        return journal_mac(self._mac_key, entry)

    def _load_journal(self, lines: Iterator[bytes]) -> None:
        """Read the journal's entries into the parts this pack may reuse.  A torn last line is skipped;
        an entry whose HMAC does not hold stops the pack with a ConflictError."""
        for line in lines:
            self._torn = not line.endswith(b"\n")  # the next entry starts on a line of its own
            try:
                e = json.loads(line)
                mac = e.pop("mac")
                stem, index = e["stem"], e["index"]
                size, sha, offset, length = e["size"], e["sha256"], e["offset"], e["length"]
                fields_ok = isinstance(stem, str) and _STEM_RE.fullmatch(stem) and isinstance(sha, str)
                fields_ok = fields_ok and all(type(v) is int and v >= 0 for v in (index, size, offset, length))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a torn last line: that part is compressed again
            name = f"{stem}.{index:05d}.tmp" if fields_ok else "(unreadable entry)"
            if not fields_ok or not isinstance(mac, str) or not hmac.compare_digest(mac.encode(), self._mac(e).encode()):
                raise staged_part_changed(name, "its journal entry was not written by this pack")
            self._journal.setdefault(stem, {})[index] = StagedPart(self.staging / name, size, sha, offset, length)
        self.resumable_parts = sum(len(v) for v in self._journal.values())

    def _journal_part(self, stem: str, index: int, part: StagedPart) -> None:
        """Append a new staged part to the journal, with its HMAC, and fsync: a resume may reuse it."""
        entry: dict[str, object] = {"stem": stem, "index": index, "size": part.size, "sha256": part.sha256,
                                    "offset": part.offset, "length": part.length}  # fmt: skip
        entry["mac"] = self._mac(entry)
        fd = os.open(JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._staging_dir_fd())
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(("\n" if self._torn else "") + json.dumps(entry, sort_keys=True) + "\n")
            self._torn = False
            fh.flush()
            os.fsync(fh.fileno())
        self.new_parts += 1

    # -- BlobStore ------------------------------------------------------------------------------
    def store_stream(self, size: int, reader: EntryReader, name: str, *, guess: bool = True) -> StoredBlob:
        """Stage ``size`` bytes from ``reader`` as parts (reusing those an interrupted pack staged for ``name``).
        ``guess``: a member with the size and first MiB of a base layer is only hashed (see the class)."""
        tap = self._tap.open(name, size) if self._tap is not None else None
        try:
            stored = self._store_stream(size, reader, name, guess, tap)
        except BaseException:
            if tap is not None:
                tap.close(None)
            raise
        if tap is not None:
            tap.close(stored.digest)
        return stored

    def _store_stream(self, size: int, reader: EntryReader, name: str, guess: bool, tap: TapStream | None) -> StoredBlob:
        """:meth:`store_stream`, each block lent to ``tap`` before it is compressed."""
        first = b""
        if guess and size in self._guesses:
            first = read_exact(reader, min(size, GUESS_HEAD))
            if tap is not None:
                tap.feed(first)
            if hashlib.sha256(first).hexdigest() in self._guesses[size]:
                return self._hash_only(size, reader, first, tap)
        stem = self._stem(name, size)
        if stem in self._stems_used:  # the same member twice in one run: a name of its own, no resume
            self._counter += 1
            stem = f"{stem}-{self._counter}"
        self._stems_used.add(stem)
        writer = BlobWriter(
            self.staging, stem, size, self.part_size, self._cctx, self._transfer,
            reuse=self._journal.get(stem), on_part=lambda index, part: self._journal_part(stem, index, part),
            dir_fd=self._staging_dir_fd(),
        )  # fmt: skip
        try:
            if first:
                writer.write(first)
            while reader.remaining:
                data = reader.read(min(COPY_BLOCK, reader.remaining))
                if tap is not None:
                    tap.feed(data)
                writer.write(data)
            staged = writer.finish()
        except OSError as e:
            writer.abort()
            raise fsutil.io_error(e, f"parts in {self.out_dir}") from e
        except BaseException:
            writer.abort()
            raise
        finally:
            self.reused_parts += writer.reused
        return self._keep(staged)

    def _hash_only(self, size: int, reader: EntryReader, first: bytes, tap: TapStream | None = None) -> StoredBlob:
        """Hash the rest of a guessed base layer without storing it, remembering it in :attr:`hashed_only`."""
        sha = hashlib.sha256(first)
        head = first[:16]
        self._transfer.moved(len(first))
        while reader.remaining:
            data = reader.read(min(COPY_BLOCK, reader.remaining))
            if len(head) < 16:
                head += data[: 16 - len(head)]
            if tap is not None:
                tap.feed(data)
            sha.update(data)
            self._transfer.moved(len(data))
        digest = "sha256:" + sha.hexdigest()
        if digest not in self._staged:
            self.hashed_only[digest] = size
        return StoredBlob(digest, size, head)

    def store_bytes(self, data: bytes) -> StoredBlob:
        """Stage a small blob held in memory (a config); not counted in the transfer."""
        self._counter += 1
        writer = BlobWriter(
            self.staging, f"b{self._counter}", len(data), self.part_size, self._cctx, Transfer(),  # configs: not counted
            dir_fd=self._staging_dir_fd(),
        )  # fmt: skip
        try:
            writer.write(data)
            staged = writer.finish()
        except OSError as e:
            writer.abort()
            raise fsutil.io_error(e, f"parts in {self.out_dir}") from e
        if self._tap is not None:  # a small layer held in memory goes past the inventory whole
            tap = self._tap.open("", len(data))
            tap.feed(data)
            tap.close(staged.digest)
        return self._keep(staged)

    def _keep(self, staged: StagedBlob) -> StoredBlob:
        """Remember a staged blob; a second copy of a blob already staged is removed."""
        if staged.digest in self._staged:  # the same blob twice: keep the first copy
            for part in staged.parts:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part.tmp_path.name, dir_fd=self._staging_dir_fd())
        else:
            self._staged[staged.digest] = staged
        return StoredBlob(staged.digest, staged.size, staged.head)

    def read_small(self, digest: str, limit: int) -> bytes:
        """A staged blob's bytes again, checked part by part; larger than ``limit`` is a FormatError, and a blob
        that was only hashed raises :class:`SpeculationMiss`."""
        if digest not in self._staged and digest in self.hashed_only:
            raise SpeculationMiss(digest)
        staged = self._staged[digest]
        if staged.size > limit:
            raise FormatError(f"a metadata file of {staged.size} bytes is too large")
        return b"".join(self.iter_staged(digest))

    def iter_staged(self, digest: str) -> Iterator[bytes]:
        """A staged blob's bytes, decompressed from its parts (each part checked)."""
        if digest not in self._staged and digest in self.hashed_only:
            raise SpeculationMiss(digest)
        for i, sp in enumerate(self._staged[digest].parts):
            part = Part(part_path(digest, i), sp.size, sp.sha256, digest, i, sp.offset, sp.length)
            with open_staged(sp.tmp_path, self._staging_dir_fd()) as fh:
                yield from iter_part_data(fh, part, str(sp.tmp_path))

    def staged_size(self, digest: str) -> int:
        """The size of a staged blob."""
        return self._staged[digest].size

    # -- commit ---------------------------------------------------------------------------------
    def commit_parts(self, digests: list[str]) -> tuple[list[Blob], list[Part]]:
        """Move the parts of the referenced blobs to their final names; drop everything else."""
        missed = [d for d in digests if d not in self._staged and d in self.hashed_only]
        if missed:
            raise SpeculationMiss(missed[0])
        staging_fd = self._staging_dir_fd()
        blobs, parts = [], []
        with self._dir(PARTS_DIR) as parts_fd:
            for digest in sorted(set(digests)):
                staged = self._staged[digest]
                blobs.append(Blob(digest, staged.size))
                for i, sp in enumerate(staged.parts):
                    part = Part(part_path(digest, i), sp.size, sp.sha256, digest, i, sp.offset, sp.length)
                    os.replace(sp.tmp_path.name, Path(part.path).name, src_dir_fd=staging_fd, dst_dir_fd=parts_fd)
                    parts.append(part)
            os.fsync(parts_fd)
        return blobs, parts

    def write_files(self, files: dict[str, bytes | Path]) -> list[BundleFile]:
        """Write signed side files (the installer, wheels) atomically; return their manifest entries."""
        written = []
        for path, content in sorted(files.items()):
            *parents, name = path.split("/")
            mode = 0o755 if path.endswith(".sh") else 0o644
            with self._dir(*parents) as dir_fd:
                size, sha = _write_at(dir_fd, name, content, mode)
            written.append(BundleFile(path, size, sha))
        return written

    def write_manifest(self, manifest: Manifest, signatures: dict[str, bytes]) -> bytes:
        """Write the signatures, then manifest.json: last, so the bundle looks complete only once it is.
        A bundle split into volumes has them on its first volume, each part and file moved to its volume first."""
        data = manifest.to_bytes()
        home: tuple[str, ...] = ()
        if manifest.volumes:
            for volume in manifest.volumes:
                by_dir: dict[tuple[str, ...], list[str]] = {}
                for path in volume.paths:
                    *where, base = path.split("/")
                    by_dir.setdefault(tuple(where), []).append(base)
                for parents, names in by_dir.items():
                    with self._dir(*parents, create=False) as src_fd, self._dir(volume.name, *parents) as dst_fd:
                        for name in names:
                            os.replace(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
                        os.fsync(dst_fd)
            for leftover in (PARTS_DIR, INSTALLER_DIR, SBOM_DIR):
                shutil.rmtree(self.out_dir / leftover, ignore_errors=True)
            home = (manifest.volumes[0].name,)
        with self._dir(*home, SIGNATURES_DIR) as sig_fd:
            for fp, sig in signatures.items():
                _write_at(sig_fd, f"{fp}.sig", sig, 0o644)
        with self._dir(*home) as home_fd:
            _write_at(home_fd, MANIFEST_NAME, data, 0o644)
        return data

    def cleanup(self) -> None:
        """Close the staging directory and remove it with every part still in it."""
        self._close()
        shutil.rmtree(self.staging, ignore_errors=True)

    def keep_for_resume(self) -> bool:
        """After a failure: keep the staged parts if there are any, so the same pack resumes."""
        if self.new_parts or self.resumable_parts:
            self._close()
            return True
        self.cleanup()
        return False


def _write_at(dir_fd: int, name: str, content: bytes | Path, mode: int) -> tuple[int, str]:
    """Atomically write ``name`` in an open directory: a new temporary file (never through a link),
    fsync, rename over the target, fsync the directory.  Returns the size and sha256 written."""
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    sha = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as dst:
            os.fchmod(dst.fileno(), mode)
            if isinstance(content, bytes):
                dst.write(content)
                sha.update(content)
                size = len(content)
            else:
                with open(content, "rb") as src:
                    while block := src.read(COPY_BLOCK):
                        sha.update(block)
                        dst.write(block)
                        size += len(block)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    return size, sha.hexdigest()
