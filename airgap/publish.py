"""publish / pull: carry a bundle through an OCI registry as an artifact, file for file.

The artifact is an OCI image manifest (artifactType ``application/vnd.airgap.bundle.v1``) whose
layers are the bundle's files, each titled with its path (``org.opencontainers.image.title``, as
oras writes them), so ``oras pull`` also gets a usable bundle.  Parts go up in chunks and keep
their own sha256 as the blob digest: the registry rejects a part that changed on the way.

A pull writes every file under a staging directory first, resumes partial downloads with HTTP
ranges, checks each file's digest, and writes ``manifest.json`` last: an interrupted pull never
leaves a bundle that looks complete.  Run ``airgap verify`` on the result as on any bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from airgap._internal import fsutil
from airgap._internal.bundle import load_bundle, open_part
from airgap._internal.registry import DEFAULT_CHUNK, MT_OCI_MANIFEST, Registry, RegistryRef, parse_ref
from airgap.errors import ConflictError, FormatError, IntegrityError, RegistryError, UsageError
from airgap.models import MANIFEST_NAME, Manifest
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
    r"^(?:manifest\.json|signatures/[0-9a-f]{64}\.sig|parts/[0-9a-f]{64}\.[0-9]{5}\.zst"
    r"|installer/[A-Za-z0-9_+-][A-Za-z0-9._+-]*(?:/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)*|volume-[0-9]{2,3}\.txt)$"
)


@dataclass(frozen=True)
class TransferResult:
    bundle: Path
    reference: str
    manifest_digest: str
    files: int
    bytes_total: int
    bytes_sent: int  # uploaded or downloaded in this run (the rest was there already)
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {
            "bundle": str(self.bundle),
            "reference": self.reference,
            "manifest_digest": self.manifest_digest,
            "files": self.files,
            "bytes_total": self.bytes_total,
            "bytes_transferred": self.bytes_sent,
            "seconds": round(self.seconds, 3),
        }


def _file_blocks(path: Path, label: str) -> Iterator[bytes]:
    with fsutil.open_regular(path, label) as fh:
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
    files: list[tuple[str, str, str, int]] = []  # (path, media type, digest, size)
    located: dict[str, Path] = {}  # parts and files: where they are (a split bundle spreads them over volumes)
    files.append((MANIFEST_NAME, MT_FILE["manifest"], _digest(bundle.manifest_bytes), len(bundle.manifest_bytes)))
    for fp, sig in sorted(bundle.signatures.items()):
        files.append((f"signatures/{fp}.sig", MT_FILE["signature"], _digest(sig), len(sig)))
    for part in bundle.manifest.parts:
        open_part(bundle, part).close()  # present, regular, of the right size: before any upload
        files.append((part.path, MT_FILE["part"], f"sha256:{part.sha256}", part.size))
        located[part.path] = bundle.part_file(part)
    for side in bundle.manifest.files:
        open_part(bundle, side).close()
        files.append((side.path, MT_FILE["file"], f"sha256:{side.sha256}", side.size))
        located[side.path] = bundle.part_file(side)
    artifact = _artifact_manifest(bundle.manifest, files)
    total = sum(size for *_, size in files)
    sent = 0
    reporter.start(f"publish {ref}", total)
    with Registry(ref.host, plain_http) as registry:
        if ref.reference and not ref.is_digest:
            registry.check_tag(ref.repository, ref.reference, _digest(artifact), replace)
        if not registry.has_blob(ref.repository, EMPTY_DIGEST, push=True):
            registry.upload_blob(ref.repository, EMPTY_DIGEST, 2, iter([b"{}"]), chunk)
        for path, _, digest, size in files:
            if registry.has_blob(ref.repository, digest, push=True):
                reporter.advance(size)
                continue
            label = str(located.get(path, bundle.path / path))
            blocks: Iterator[bytes]
            if path == MANIFEST_NAME:
                blocks = iter([bundle.manifest_bytes])
            elif path.startswith("signatures/"):
                blocks = iter([bundle.signatures[path.split("/")[1].removesuffix(".sig")]])
            else:
                blocks = _file_blocks(located[path], path)
            try:
                registry.upload_blob(ref.repository, digest, size, _advancing(blocks, reporter), chunk)
            except IntegrityError as e:
                raise IntegrityError(
                    f"{label} does not match the manifest: {e.message}", hint="run 'airgap verify' on the bundle"
                ) from e
            sent += size
        digest = registry.put_manifest(ref.repository, ref.reference or _digest(artifact), artifact, MT_OCI_MANIFEST)
    reporter.finish()
    return TransferResult(bundle_dir, str(ref), digest, len(files), total, sent, time.monotonic() - started)


def _advancing(blocks: Iterator[bytes], reporter: Reporter) -> Iterator[bytes]:
    for block in blocks:
        reporter.advance(len(block))
        yield block


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _artifact_manifest(manifest: Manifest, files: list[tuple[str, str, str, int]]) -> bytes:
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
        if not isinstance(title, str) or not _SAFE_PATH.match(title) or title in seen:
            raise FormatError(f"{where}: file name {str(title)[:100]!r} is not one an airgap bundle has")
        if not isinstance(digest, str) or not re.match(r"^sha256:[0-9a-f]{64}$", digest):
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
    reporter = reporter or NullReporter()
    started = time.monotonic()
    ref = parse_ref(source, "oci")
    reference = ref.reference or "latest"  # parse_ref requires one
    if (out_dir / MANIFEST_NAME).exists() and not overwrite:
        raise ConflictError(f"{out_dir} already holds a bundle", hint="pull into a new directory, or pass --overwrite")
    with Registry(ref.host, plain_http) as registry:
        found = registry.get_manifest(ref.repository, reference)
        if found is None:
            raise UsageError(f"{ref} is not in the registry", hint="check the repository and tag")
        data, _, manifest_digest = found
        files = _read_artifact(data, ref)
        total = sum(size for _, _, size in files)
        staging = out_dir / PULL_STAGING
        staging.mkdir(parents=True, exist_ok=True)
        fsutil.require_space(out_dir, total - _staged_bytes(staging, files) + (16 << 20), "pulling the bundle")
        if overwrite:
            (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # the bundle is incomplete until the new one lands
        reporter.start(f"pull {ref}", total)
        fetched = 0
        # parts first, manifest.json last
        for path, digest, size in sorted(files, key=lambda f: f[0] == MANIFEST_NAME):
            final = out_dir / path
            if final.is_file() and not final.is_symlink() and final.stat().st_size == size and path != MANIFEST_NAME:
                reporter.advance(size)  # placed by an earlier run after its digest matched
                continue
            fetched += _fetch(registry, ref, digest, size, staging / digest.removeprefix("sha256:"), path, reporter)
            final.parent.mkdir(parents=True, exist_ok=True)
            fetched_path = staging / digest.removeprefix("sha256:")
            if path.endswith(".sh"):
                fetched_path.chmod(0o755)
            os.replace(fetched_path, final)
        fsutil.fsync_dir(out_dir)
        shutil.rmtree(staging, ignore_errors=True)
    reporter.finish()
    return TransferResult(out_dir, str(ref), manifest_digest, len(files), total, fetched, time.monotonic() - started)


def _staged_bytes(staging: Path, files: list[tuple[str, str, int]]) -> int:
    total = 0
    for _, digest, _ in files:
        p = staging / digest.removeprefix("sha256:")
        if p.is_file():
            total += p.stat().st_size
    return total


def _fetch(registry: Registry, ref: RegistryRef, digest: str, size: int, tmp: Path, path: str, reporter: Reporter) -> int:
    """Download one blob into ``tmp``, resuming a partial file; check its digest.  Returns bytes fetched."""
    sha = hashlib.sha256()
    have = tmp.stat().st_size if tmp.is_file() else 0
    if have > size:
        tmp.unlink()
        have = 0
    if have:
        with open(tmp, "rb") as fh:
            while block := fh.read(BLOCK):
                sha.update(block)
    fetched = 0
    if have < size:
        res, start = registry.open_blob(ref.repository, digest, have)
        if start != have:  # the registry ignored the range: start over
            sha = hashlib.sha256()
            have = 0
        reporter.advance(have)
        try:
            with res, open(tmp, "r+b" if have else "wb") as fh:
                fh.seek(have)
                for block in res.iter_content(BLOCK):
                    if have + fetched + len(block) > size:
                        raise IntegrityError(f"{path} from {ref} is larger than the artifact says ({size} bytes)")
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
            raise fsutil.io_error(e, f"{tmp}") from e
    else:
        reporter.advance(have)
    if have + fetched != size or "sha256:" + sha.hexdigest() != digest:
        tmp.unlink(missing_ok=True)
        raise IntegrityError(
            f"{path} from {ref} does not match its digest {digest[:19]}",
            hint="the registry holds damaged data; publish the bundle again",
        )
    return fetched
