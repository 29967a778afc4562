"""Writing a bundle directory: staging parts (with a resume journal), committing them, the signed side
files and the manifest, last.

Layout::

    BUNDLE/
      manifest.json                 signed; written last: a bundle without it is not complete
      signatures/<fingerprint>.sig  raw Ed25519 signatures over manifest.json's exact bytes
      parts/<blob-hex>.<NNNNN>.zst  one zstd frame each, never over the part size
      .airgap-staging/              parts being written and their journal (removed once the manifest exists)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import zstandard

from airgap._internal import fsutil
from airgap._internal.layout import StoredBlob
from airgap._internal.parts import BlobWriter, StagedBlob, StagedPart, iter_part_data
from airgap._internal.tarstream import EntryReader, read_exact
from airgap.errors import ConflictError, FormatError, UsageError
from airgap.models import INSTALLER_DIR, MANIFEST_NAME, PARTS_DIR, SIGNATURES_DIR, Blob, BundleFile, Manifest, Part, part_path

STAGING_DIR = ".airgap-staging"
GUESS_HEAD = 1 << 20  # a delta's guess compares the first MiB of a member with the base layer's
VOLUME_GLOB = "vol-[0-9][0-9]*"
JOURNAL = "journal.jsonl"
COPY_BLOCK = 4 << 20


def _is_volume_name(name: str) -> bool:
    return bool(re.fullmatch(r"vol-[0-9]{2,3}|volume-[0-9]{2,3}\.txt", name))


class SpeculationMiss(Exception):
    """A member was only hashed because its size matched a base layer's, and it turned out to be new."""


class BundleWriter:
    """Stages blobs as parts, then commits the referenced ones and writes the manifest last.

    ``guesses``: for a delta, the base bundle's layers by size, each with the sha256 of its first MiB
    (:data:`GUESS_HEAD`).  A member of such a size whose first MiB matches is most likely that layer, which
    the delta leaves out: it is only hashed, not compressed or written.  If one turns out to be needed,
    commit raises :class:`SpeculationMiss` and pack runs again without guessing."""

    def __init__(
        self,
        out_dir: Path,
        part_size: int,
        compressor: zstandard.ZstdCompressor,
        overwrite: bool,
        on_bytes: Callable[[int], None],
        level: int = 0,
        guesses: dict[int, frozenset[str]] | None = None,
    ) -> None:
        self.out_dir = out_dir
        self._guesses = guesses or {}
        self.guessing = True  # off while a source whose digests are known beforehand streams (a registry)
        self.hashed_only: dict[str, int] = {}  # digest -> size: members hashed, not stored
        self.part_size = part_size
        self._cctx = compressor
        self._on_bytes = on_bytes
        self._level = level
        self._staged: dict[str, StagedBlob] = {}
        self._counter = 0
        self._stems_used: set[str] = set()
        self.staging = out_dir / STAGING_DIR
        self._journal_path = self.staging / JOURNAL
        self._journal: dict[str, dict[int, StagedPart]] = {}
        self.resumable_parts = 0  # parts an interrupted pack left staged
        self.reused_parts = 0  # ... of which this pack used instead of compressing again
        self.new_parts = 0
        self._prepare(overwrite)

    def _prepare(self, overwrite: bool) -> None:
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise UsageError(f"output {out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()):
            names = {p.name for p in out.iterdir()}
            interrupted = (
                MANIFEST_NAME not in names
                and (self._journal_path).is_file()
                and all(n in {STAGING_DIR, PARTS_DIR, SIGNATURES_DIR, INSTALLER_DIR} or _is_volume_name(n) for n in names)
            )
            if not overwrite and not interrupted:
                raise ConflictError(f"output directory {out} is not empty", hint="choose an empty directory or pass --overwrite")
            # manifests go first, so an interrupted overwrite never leaves a bundle that looks complete
            (out / MANIFEST_NAME).unlink(missing_ok=True)
            for volume in out.glob(VOLUME_GLOB):
                (volume / MANIFEST_NAME).unlink(missing_ok=True)
            for entry in out.iterdir():
                if entry.name == STAGING_DIR and interrupted and not overwrite:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            if interrupted and not overwrite:
                self._load_journal()
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.staging.mkdir(exist_ok=True)
        except OSError as e:
            raise fsutil.io_error(e, str(out)) from e

    # -- resume ---------------------------------------------------------------------------------
    def _stem(self, name: str, size: int) -> str:
        """Staged part names for one archive member: the same member, part size and level, the same names."""
        key = f"{name}\0{size}\0{self.part_size}\0{self._level}".encode("utf-8", "surrogateescape")
        return hashlib.sha256(key).hexdigest()[:32]

    def _load_journal(self) -> None:
        with open(self._journal_path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    e = json.loads(line)
                    part = StagedPart(self.staging / e["file"], e["size"], e["sha256"], e["offset"], e["length"])
                    stem, index = str(e["stem"]), int(e["index"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line: that part is compressed again
                if "/" not in e["file"]:
                    self._journal.setdefault(stem, {})[index] = part
        self.resumable_parts = sum(len(v) for v in self._journal.values())

    def _journal_part(self, stem: str, index: int, part: StagedPart) -> None:
        entry = {"stem": stem, "index": index, "file": part.tmp_path.name, "size": part.size,
                 "sha256": part.sha256, "offset": part.offset, "length": part.length}  # fmt: skip
        with open(self._journal_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.new_parts += 1

    # -- BlobStore ------------------------------------------------------------------------------
    def store_stream(self, size: int, reader: EntryReader, name: str) -> StoredBlob:
        first = b""
        if self.guessing and size in self._guesses and not name.startswith("recipe\0"):
            first = read_exact(reader, min(size, GUESS_HEAD))
            if hashlib.sha256(first).hexdigest() in self._guesses[size]:
                return self._hash_only(size, reader, first)
        stem = self._stem(name, size)
        if stem in self._stems_used:  # the same member twice in one run: a name of its own, no resume
            self._counter += 1
            stem = f"{stem}-{self._counter}"
        self._stems_used.add(stem)
        writer = BlobWriter(
            self.staging, stem, size, self.part_size, self._cctx, self._on_bytes,
            reuse=self._journal.get(stem), on_part=lambda index, part: self._journal_part(stem, index, part),
        )  # fmt: skip
        try:
            if first:
                writer.write(first)
            while reader.remaining:
                writer.write(reader.read(min(COPY_BLOCK, reader.remaining)))
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

    def _hash_only(self, size: int, reader: EntryReader, first: bytes) -> StoredBlob:
        sha = hashlib.sha256(first)
        head = first[:16]
        self._on_bytes(len(first))
        while reader.remaining:
            data = reader.read(min(COPY_BLOCK, reader.remaining))
            if len(head) < 16:
                head += data[: 16 - len(head)]
            sha.update(data)
            self._on_bytes(len(data))
        digest = "sha256:" + sha.hexdigest()
        if digest not in self._staged:
            self.hashed_only[digest] = size
        return StoredBlob(digest, size, head)

    def store_bytes(self, data: bytes) -> StoredBlob:
        self._counter += 1
        writer = BlobWriter(self.staging, f"b{self._counter}", len(data), self.part_size, self._cctx, lambda n: None)
        try:
            writer.write(data)
            staged = writer.finish()
        except OSError as e:
            writer.abort()
            raise fsutil.io_error(e, f"parts in {self.out_dir}") from e
        return self._keep(staged)

    def _keep(self, staged: StagedBlob) -> StoredBlob:
        if staged.digest in self._staged:  # the same blob twice: keep the first copy
            for part in staged.parts:
                part.tmp_path.unlink(missing_ok=True)
        else:
            self._staged[staged.digest] = staged
        return StoredBlob(staged.digest, staged.size, staged.head)

    def read_small(self, digest: str, limit: int) -> bytes:
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
            with open(sp.tmp_path, "rb") as fh:
                yield from iter_part_data(fh, part, str(sp.tmp_path))

    def staged_size(self, digest: str) -> int:
        return self._staged[digest].size

    # -- commit ---------------------------------------------------------------------------------
    def commit_parts(self, digests: list[str]) -> tuple[list[Blob], list[Part]]:
        """Move the parts of the referenced blobs to their final names; drop everything else."""
        missed = [d for d in digests if d not in self._staged and d in self.hashed_only]
        if missed:
            raise SpeculationMiss(missed[0])
        parts_dir = self.out_dir / PARTS_DIR
        parts_dir.mkdir(exist_ok=True)
        blobs, parts = [], []
        for digest in sorted(set(digests)):
            staged = self._staged[digest]
            blobs.append(Blob(digest, staged.size))
            for i, sp in enumerate(staged.parts):
                part = Part(part_path(digest, i), sp.size, sp.sha256, digest, i, sp.offset, sp.length)
                os.replace(sp.tmp_path, self.out_dir / part.path)
                parts.append(part)
        fsutil.fsync_dir(parts_dir)
        return blobs, parts

    def write_files(self, files: dict[str, bytes | Path]) -> list[BundleFile]:
        """Write signed side files (the installer, wheels) atomically; return their manifest entries."""
        written = []
        for path, content in sorted(files.items()):
            target = self.out_dir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            mode = 0o755 if path.endswith(".sh") else 0o644
            if isinstance(content, bytes):
                fsutil.atomic_write(target, content, mode)
                written.append(BundleFile(path, len(content), hashlib.sha256(content).hexdigest()))
                continue
            sha = hashlib.sha256()
            size = 0
            tmp = target.with_name(f".{target.name}.tmp")
            with open(content, "rb") as src, open(tmp, "wb") as dst:
                while block := src.read(COPY_BLOCK):
                    sha.update(block)
                    dst.write(block)
                    size += len(block)
                dst.flush()
                os.fsync(dst.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
            written.append(BundleFile(path, size, sha.hexdigest()))
        return written

    def write_manifest(self, manifest: Manifest, signatures: dict[str, bytes]) -> bytes:
        """Write the signatures, then manifest.json: last, so the bundle looks complete only once it is.
        A bundle split into volumes has them on its first volume, each part and file moved to its volume first."""
        data = manifest.to_bytes()
        home = self.out_dir
        if manifest.volumes:
            for volume in manifest.volumes:
                for path in volume.paths:
                    target = self.out_dir / volume.name / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(self.out_dir / path, target)
                fsutil.fsync_dir(self.out_dir / volume.name)
            for leftover in (PARTS_DIR, INSTALLER_DIR):
                shutil.rmtree(self.out_dir / leftover, ignore_errors=True)
            home = self.out_dir / manifest.volumes[0].name
        sig_dir = home / SIGNATURES_DIR
        sig_dir.mkdir(exist_ok=True)
        for fp, sig in signatures.items():
            fsutil.atomic_write(sig_dir / f"{fp}.sig", sig)
        fsutil.atomic_write(home / MANIFEST_NAME, data)
        return data

    def cleanup(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def keep_for_resume(self) -> bool:
        """After a failure: keep the staged parts if there are any, so the same pack resumes."""
        if self.new_parts or self.resumable_parts:
            return True
        self.cleanup()
        return False
