"""publish / pull: carry a bundle through an OCI registry as an artifact, file for file.

The artifact is an OCI image manifest (artifactType ``application/vnd.airgap.bundle.v1``) whose
layers are the bundle's files, each titled with its path (``org.opencontainers.image.title``, as
oras writes them), so ``oras pull`` also gets a usable bundle.  Parts go up in chunks and keep
their own sha256 as the blob digest: the registry rejects a part that changed on the way.

A pull writes every file under a staging directory first, resumes partial downloads with HTTP
ranges, checks each file's digest, and writes ``manifest.json`` last: an interrupted pull never
leaves a bundle that looks complete.  Run ``airgap verify`` on the result as on any bundle.

The output directory may be somewhere other users can write (``/tmp``, a shared mount): a pull holds
every directory it enters by a descriptor opened from its parent's without following links, refuses a
link or a directory that is not ours (``DIR`` itself, ``.airgap-pull``, ``installer/``...), keeps its
staging area mode 0700, and creates files with ``O_EXCL | O_NOFOLLOW``: nothing is written through a link.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import requests

from airgap._internal.clients.distribution import DEFAULT_CHUNK, Registry, RegistryRef, data_hint, parse_ref
from airgap._internal.format.reader import LoadedBundle, load_bundle, open_part, read_signatures
from airgap._internal.util import fsutil
from airgap.errors import ConflictError, FormatError, IntegrityError, RegistryError, UsageError
from airgap.model.manifest import FILE_PATH_PATTERN, MANIFEST_NAME, BundleFile, Manifest, Part
from airgap.model.mediatypes import MT_OCI_MANIFEST
from airgap.progress import NullReporter, Reporter

ARTIFACT_TYPE = "application/vnd.airgap.bundle.v1"
MT_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"  # of b"{}"
MT_FILE = {
    "manifest": "application/vnd.airgap.bundle.manifest.v1+json",
    "signature": "application/vnd.airgap.signature.v1",
    "part": "application/vnd.airgap.part.v1+zstd",
    "file": "application/vnd.airgap.file.v1",
}
TITLE = "org.opencontainers.image.title"
PULL_STAGING = ".airgap-pull"
BLOCK = 1 << 20
_SAFE_PATH = re.compile(
    rf"^(?:manifest\.json|signatures/[0-9a-f]{{64}}\.sig|parts/[0-9a-f]{{64}}\.[0-9]{{5}}\.zst|{FILE_PATH_PATTERN})$"
)


@dataclass(frozen=True)
class TransferResult:
    """A publish or pull: the artifact's reference and digest, its files, and the bytes moved in this run."""

    bundle: Path
    reference: str
    manifest_digest: str
    files: int
    bytes_total: int
    bytes_sent: int  # uploaded or downloaded in this run (the rest was there already)
    seconds: float

    def to_dict(self) -> dict[str, object]:
        """The JSON report (``bytes_sent`` appears as ``bytes_transferred``)."""
        return {
            "bundle": str(self.bundle),
            "reference": self.reference,
            "manifest_digest": self.manifest_digest,
            "files": self.files,
            "bytes_total": self.bytes_total,
            "bytes_transferred": self.bytes_sent,
            "seconds": round(self.seconds, 3),
        }


def _file_blocks(bundle: LoadedBundle, item: Part | BundleFile) -> Iterator[bytes]:
    """A part or listed file's bytes, in blocks, opened the bundle's one checked way."""
    with open_part(bundle, item) as fh:  # the bundle's one checked way in: no link on the path, never a FIFO
        while block := fh.read(BLOCK):
            yield block


def publish(
    bundle_dir: Path,
    target: str,
    plain_http: bool = False,
    replace: bool = False,
    chunk: int = DEFAULT_CHUNK,
    reporter: Reporter | None = None,
) -> TransferResult:
    """Upload every file of the bundle, then the artifact manifest under the tag."""
    reporter = reporter or NullReporter()
    started = time.monotonic()
    ref = parse_ref(target, "oci")
    bundle = load_bundle(bundle_dir)
    if not bundle.signatures:
        raise UsageError(f"bundle {bundle_dir} has no signature", hint="sign it first ('airgap sign')")
    signatures = read_signatures(bundle.path, frozenset(bundle.signatures))  # load_bundle only names them
    for fp, sig in signatures.items():
        if not sig:
            raise IntegrityError(
                f"{bundle.path / 'signatures' / fp}.sig is not an Ed25519 signature (64 bytes)",
                hint="sign the bundle again ('airgap sign'), or remove that file",
            )
    files: list[tuple[str, str, str, int]] = []  # (path, media type, digest, size)
    located: dict[str, Part | BundleFile] = {}  # parts and files, by path (a split bundle spreads them over volumes)
    files.append((MANIFEST_NAME, MT_FILE["manifest"], _digest(bundle.manifest_bytes), len(bundle.manifest_bytes)))
    for fp, sig in sorted(signatures.items()):
        files.append((f"signatures/{fp}.sig", MT_FILE["signature"], _digest(sig), len(sig)))
    for part in bundle.manifest.parts:
        open_part(bundle, part).close()  # present, regular, of the right size: before any upload
        files.append((part.path, MT_FILE["part"], f"sha256:{part.sha256}", part.size))
        located[part.path] = part
    for side in bundle.manifest.files:
        open_part(bundle, side).close()
        files.append((side.path, MT_FILE["file"], f"sha256:{side.sha256}", side.size))
        located[side.path] = side
    artifact = _artifact_manifest(bundle.manifest, files)
    total = sum(size for *_, size in files)
    sent = 0
    reporter.start(f"publish {ref}", total)
    with Registry(ref.host, plain_http) as registry:
        if ref.reference and not ref.is_digest:
            registry.check_tag(ref.repository, ref.reference, _digest(artifact), replace)
        if not registry.has_blob(ref.repository, EMPTY_DIGEST, push=True):
            registry.upload_blob(ref.repository, EMPTY_DIGEST, 2, functools.partial(iter, [b"{}"]), chunk)
        for path, _, digest, size in files:
            if registry.has_blob(ref.repository, digest, push=True):
                reporter.advance(size)
                continue
            label = str(bundle.part_file(located[path])) if path in located else str(bundle.path / path)
            # a function that opens the bytes afresh: an upload the network broke resumes or starts over
            opener: Callable[[], Iterator[bytes]]
            if path == MANIFEST_NAME:
                opener = functools.partial(iter, [bundle.manifest_bytes])
            elif path.startswith("signatures/"):
                opener = functools.partial(iter, [signatures[path.split("/")[1].removesuffix(".sig")]])
            else:
                opener = functools.partial(_file_blocks, bundle, located[path])
            try:
                registry.upload_blob(ref.repository, digest, size, opener, chunk, progress=reporter.advance)
            except IntegrityError as e:
                raise IntegrityError(
                    f"{label} does not match the manifest: {e.message}", hint="run 'airgap verify' on the bundle"
                ) from e
            sent += size
        digest = registry.put_manifest(ref.repository, ref.reference or _digest(artifact), artifact, MT_OCI_MANIFEST)
    reporter.finish()
    return TransferResult(bundle_dir, str(ref), digest, len(files), total, sent, time.monotonic() - started)


def _digest(data: bytes) -> str:
    """The sha256 digest of ``data``, as the registry names blobs."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _artifact_manifest(manifest: Manifest, files: list[tuple[str, str, str, int]]) -> bytes:
    """The artifact's OCI manifest: an empty config, one layer per file titled with its path, and the bundle's
    name, sequence and creation time as annotations."""
    body = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": MT_EMPTY, "digest": EMPTY_DIGEST, "size": 2},
        "layers": [
            {"mediaType": mt, "digest": digest, "size": size, "annotations": {TITLE: path}} for path, mt, digest, size in files
        ],
        "annotations": {
            "org.opencontainers.image.created": manifest.created,
            "io.airgap.bundle.name": manifest.name,
            "io.airgap.bundle.sequence": str(manifest.sequence),
        },
    }
    return json.dumps(body, indent=2).encode()


# --- pull -----------------------------------------------------------------------------------


def _read_artifact(data: bytes, ref: RegistryRef) -> list[tuple[str, str, int]]:
    """The (path, digest, size) of every file, refusing anything that is not an airgap bundle artifact."""
    where = f"artifact {ref}"
    try:
        body = json.loads(data)
    except ValueError as e:
        raise FormatError(f"{where}: the manifest is not JSON") from e
    if not isinstance(body, dict) or body.get("artifactType") != ARTIFACT_TYPE or not isinstance(body.get("layers"), list):
        raise FormatError(f"{where} is not an airgap bundle", hint="publish bundles with 'airgap publish'")
    files = []
    seen: set[str] = set()
    for layer in body["layers"]:
        if not isinstance(layer, dict):
            raise FormatError(f"{where}: malformed layer descriptor")
        title = (layer.get("annotations") or {}).get(TITLE)
        digest, size = layer.get("digest"), layer.get("size")
        if not isinstance(title, str) or not _SAFE_PATH.fullmatch(title) or title in seen:
            raise FormatError(f"{where}: file name {str(title)[:100]!r} is not one an airgap bundle has")
        if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise FormatError(f"{where}: {title} has no sha256 digest")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise FormatError(f"{where}: {title} has no valid size")
        seen.add(title)
        files.append((title, digest, size))
    if MANIFEST_NAME not in seen:
        raise FormatError(f"{where} holds no manifest.json")
    return files


def pull(
    source: str,
    out_dir: Path,
    plain_http: bool = False,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> TransferResult:
    """Download a published bundle into ``out_dir``, resuming an interrupted pull; verify it afterwards."""
    reporter = reporter or NullReporter()
    started = time.monotonic()
    ref = parse_ref(source, "oci")
    reference = ref.reference or "latest"  # parse_ref requires one
    if os.path.lexists(out_dir / MANIFEST_NAME) and not overwrite:
        raise ConflictError(f"{out_dir} already holds a bundle", hint="pull into a new directory, or pass --overwrite")
    with Registry(ref.host, plain_http) as registry:
        found = registry.get_manifest(ref.repository, reference)
        if found is None:
            raise UsageError(f"{ref} is not in the registry", hint="check the repository and tag")
        data, _, manifest_digest = found
        files = _read_artifact(data, ref)
        total = sum(size for _, _, size in files)
        with _PullDir(out_dir) as target:
            fsutil.require_space(out_dir, total - target.staged_bytes(files) + (16 << 20), "pulling the bundle")
            if overwrite:
                target.remove(MANIFEST_NAME)  # the bundle is incomplete until the new one lands
            reporter.start(f"pull {ref}", total)
            fetched = 0
            # parts first, manifest.json last
            for path, digest, size in sorted(files, key=lambda f: f[0] == MANIFEST_NAME):
                if path != MANIFEST_NAME and target.in_place(path, size):
                    reporter.advance(size)  # placed by an earlier run after its digest matched
                    continue
                staged = digest.removeprefix("sha256:")
                fetched += _fetch(registry, ref, digest, size, target, staged, path, reporter)
                target.place(staged, path)
            target.finish()
    reporter.finish()
    return TransferResult(out_dir, str(ref), manifest_digest, len(files), total, fetched, time.monotonic() - started)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_REFUSE_HINT = "pull writes only into directories and files of its own: remove it, or pull into a new directory"


class _PullDir:
    """The directory a pull writes, held by descriptors.  Each directory (``DIR`` itself included) is
    created or entered from its parent's descriptor without following a link and must belong to us;
    files are opened ``O_NOFOLLOW`` (``O_EXCL`` when new) and renamed between descriptors, so whatever
    another user plants in DIR, nothing is written outside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._dirs: dict[str, int] = {}  # "" for DIR, else a path relative to it -> descriptor
        self._written: set[str] = set()  # directories a file was placed in: fsync'ed at the end
        absolute = Path(os.path.abspath(path))
        try:
            absolute.parent.mkdir(parents=True, exist_ok=True)
            parent = os.open(absolute.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise fsutil.io_error(e, str(absolute.parent)) from e
        try:
            self._dirs[""] = _enter(parent, absolute.name or ".", path, 0o777)
        finally:
            os.close(parent)
        try:
            self.staging = self.directory(PULL_STAGING, 0o700)
            os.fchmod(self.staging, 0o700)  # a staging area an earlier run or umask left open is closed again
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> _PullDir:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close every directory descriptor held."""
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def label(self, rel: str) -> Path:
        """How messages name ``DIR/rel``."""
        return self.path / rel if rel else self.path

    def directory(self, rel: str, mode: int = 0o777) -> int:
        """The descriptor of ``DIR/rel``, each missing level created, each level checked."""
        if rel in self._dirs:
            return self._dirs[rel]
        parent_rel, _, name = rel.rpartition("/")
        fd = _enter(self.directory(parent_rel), name, self.label(rel), mode)
        self._dirs[rel] = fd
        return fd

    def _parent(self, path: str) -> tuple[int, str, str]:
        """The descriptor of the directory holding ``path`` (created and checked), the leaf name, and the
        directory's path relative to DIR."""
        parent_rel, _, leaf = path.rpartition("/")
        return self.directory(parent_rel), leaf, parent_rel

    def staged_bytes(self, files: list[tuple[str, str, int]]) -> int:
        """The bytes an earlier run left staged for these files: the space check counts only what is still to come."""
        total = 0
        for _, digest, _ in files:
            st = _lstat(self.staging, digest.removeprefix("sha256:"))
            if st is not None and stat.S_ISREG(st.st_mode):
                total += st.st_size
        return total

    def in_place(self, path: str, size: int) -> bool:
        """Whether ``path`` is already in DIR, a regular file of ours of the right size."""
        parent, leaf, _ = self._parent(path)
        st = _lstat(parent, leaf)
        if st is None:
            return False
        _require_ours(st, self.label(path))
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    def remove(self, path: str) -> None:
        """Remove ``path`` from DIR if it is there; a link or another user's file is refused (ConflictError)."""
        parent, leaf, _ = self._parent(path)
        st = _lstat(parent, leaf)
        if st is not None:
            _require_ours(st, self.label(path))
            try:
                os.unlink(leaf, dir_fd=parent)
            except OSError as e:
                raise fsutil.io_error(e, str(self.label(path))) from e

    def place(self, staged: str, path: str) -> None:
        """Rename a checked file from the staging area to ``path`` (replacing a file of ours)."""
        parent, leaf, parent_rel = self._parent(path)
        st = _lstat(parent, leaf)
        if st is not None:
            _require_ours(st, self.label(path))
        try:
            os.replace(staged, leaf, src_dir_fd=self.staging, dst_dir_fd=parent)
        except OSError as e:
            raise fsutil.io_error(e, str(self.label(path))) from e
        self._written.add(parent_rel)

    def finish(self) -> None:
        """fsync what was placed, then empty and remove the staging area."""
        try:
            for rel in sorted(self._written | {""}, key=len, reverse=True):
                os.fsync(self._dirs[rel])
        except OSError as e:
            raise fsutil.io_error(e, str(self.path)) from e
        for name in os.listdir(self.staging):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self.staging)  # only ever files of ours: the directory is 0700
        with contextlib.suppress(OSError):
            os.rmdir(PULL_STAGING, dir_fd=self._dirs[""])


def _lstat(parent: int, name: str) -> os.stat_result | None:
    """The entry ``name`` under an open directory, not following a link; None when there is none."""
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _require_ours(st: os.stat_result, label: Path) -> None:
    """Refuse (ConflictError) a symbolic link or an entry of another user: pull writes only into its own."""
    if stat.S_ISLNK(st.st_mode):
        raise ConflictError(f"{label} is a symbolic link; pull writes nothing through links", hint=_REFUSE_HINT)
    if st.st_uid != os.geteuid():
        raise ConflictError(f"{label} belongs to another user (uid {st.st_uid}); pull does not write there", hint=_REFUSE_HINT)


def _enter(parent: int, name: str, label: Path, mode: int) -> int:
    """Create (``mode``) or enter the directory ``name`` under ``parent``: never through a link, only ours."""
    try:
        os.mkdir(name, mode, dir_fd=parent)
    except FileExistsError:
        pass
    except OSError as e:
        raise fsutil.io_error(e, str(label)) from e
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as e:
        st = _lstat(parent, name)
        if st is not None:
            _require_ours(st, label)
            if not stat.S_ISDIR(st.st_mode):
                raise ConflictError(f"{label} is in the way: it is not a directory", hint=_REFUSE_HINT) from e
        raise fsutil.io_error(e, str(label)) from e
    try:
        _require_ours(os.fstat(fd), label)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_staged(target: _PullDir, name: str, size: int) -> int:
    """The staged file for a blob: the one an earlier run left (regular, ours; emptied if too long), or a
    new one, created ``O_EXCL | O_NOFOLLOW``."""
    label = target.label(f"{PULL_STAGING}/{name}")
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(name, flags, dir_fd=target.staging)
        except FileNotFoundError:
            return os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=target.staging)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConflictError(f"{label} is a symbolic link; pull writes nothing through links", hint=_REFUSE_HINT) from e
        raise fsutil.io_error(e, str(label)) from e
    try:
        _check_staged(fd, label, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_staged(fd: int, label: Path, size: int) -> None:
    """Refuse a staged file that is not a regular file of ours; one longer than the blob is emptied (fetched again)."""
    st = os.fstat(fd)
    _require_ours(st, label)
    if not stat.S_ISREG(st.st_mode):
        raise ConflictError(f"{label} is not a regular file", hint=_REFUSE_HINT)
    if st.st_size > size:
        try:
            os.ftruncate(fd, 0)
        except OSError as e:
            raise fsutil.io_error(e, str(label)) from e


def _fetch(
    registry: Registry, ref: RegistryRef, digest: str, size: int, target: _PullDir, name: str, path: str, reporter: Reporter
) -> int:
    """Download one blob into the staging area, resuming a partial file; check its digest.  Returns bytes fetched."""
    sha = hashlib.sha256()
    label = target.label(f"{PULL_STAGING}/{name}")
    fetched = 0
    with os.fdopen(_open_staged(target, name, size), "r+b") as fh:
        try:
            have = os.fstat(fh.fileno()).st_size
            while block := fh.read(BLOCK):
                sha.update(block)
            if path.endswith(".sh"):
                os.fchmod(fh.fileno(), 0o755)
        except OSError as e:
            raise fsutil.io_error(e, str(label)) from e
        if have < size:
            res, start = registry.open_blob(ref.repository, digest, have)
            try:
                with res:
                    if start != have:  # the registry ignored the range: start over
                        sha = hashlib.sha256()
                        have = 0
                        fh.truncate(0)
                    reporter.advance(have)
                    fh.seek(have)
                    for block in res.iter_content(BLOCK):
                        if have + fetched + len(block) > size:
                            raise IntegrityError(
                                f"{path} from {ref} is larger than the artifact says ({size} bytes)",
                                hint=data_hint(ref.host),
                                digest=digest,
                            )
                        fh.write(block)
                        sha.update(block)
                        fetched += len(block)
                        reporter.advance(len(block))
                    fh.flush()
                    os.fsync(fh.fileno())
            except requests.RequestException as e:
                raise RegistryError(
                    f"download of {path} from {ref.host} was cut off: {str(e)[:160]}",
                    hint="run the same pull again: it resumes where it stopped",
                ) from e
            except OSError as e:
                raise fsutil.io_error(e, str(label)) from e
        else:
            reporter.advance(have)
    if have + fetched != size or "sha256:" + sha.hexdigest() != digest:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=target.staging)
        raise IntegrityError(
            f"{path} from {ref} does not match its digest {digest[:19]}",
            hint="the registry holds damaged data; publish the bundle again",
        )
    return fetched
