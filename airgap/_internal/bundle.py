"""Reading a bundle directory back safely: its manifest and signatures, its parts, its volumes.

The layout is described in :mod:`airgap._internal.writer`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Generator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from airgap._internal import fsutil
from airgap._internal.cache import VerifiedCache, file_key
from airgap._internal.parts import iter_part_data
from airgap._internal.rebuild import decode
from airgap._internal.writer import STAGING_DIR, VOLUME_GLOB
from airgap.errors import FormatError, IntegrityError, TrustError, UsageError
from airgap.keys import PublicKey
from airgap.models import MANIFEST_NAME, SIGNATURES_DIR, BundleFile, Manifest, Part
from airgap.trust import TrustResult, check_trust

MAX_MANIFEST_BYTES = 64 << 20
_SIG_RE = re.compile(r"^([0-9a-f]{64})\.sig$")


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedBundle:
    path: Path  # the directory holding manifest.json
    manifest_bytes: bytes
    manifest: Manifest
    signatures: dict[str, bytes]
    search: tuple[Path, ...] = ()  # more directories holding parts (other volumes, --from)
    base: LoadedBundle | None = None  # a delta's base bundle (install --base): where its external layers come from

    def part_file(self, part: Part | BundleFile) -> Path:
        """Where a part is: in the bundle directory, else in the first search directory that has it."""
        first = self.path / part.path
        if os.path.lexists(first):
            return first
        for directory in self.search:
            candidate = directory / part.path
            if os.path.lexists(candidate):
                return candidate
        return first


def locate(bundle: Path, extra: Sequence[Path] = ()) -> tuple[Path, tuple[Path, ...]]:
    """The directory holding manifest.json, and where else to look for parts.

    A bundle packed with --media-dir-size is a directory of vol-NN folders: the one holding
    manifest.json comes first, the others are searched, then ``extra`` (--from).
    """
    if not (bundle / MANIFEST_NAME).exists() and bundle.is_dir():
        volumes = sorted(p for p in bundle.glob(VOLUME_GLOB) if p.is_dir())
        primary = [v for v in volumes if (v / MANIFEST_NAME).exists()]
        if primary:
            return primary[0], tuple(v for v in volumes if v != primary[0]) + tuple(extra)
    return bundle, tuple(extra)


def read_manifest_bytes(bundle: Path) -> bytes:
    if not bundle.is_dir():
        raise UsageError(f"bundle {bundle} is not a directory", hint="pass the directory written by 'airgap pack'")
    path = bundle / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        staging = (bundle / STAGING_DIR).exists()
        raise FormatError(
            f"{path} is missing: this is not a complete bundle",
            hint="packing did not finish; pack again" if staging else "pass the directory written by 'airgap pack'",
        )
    with fsutil.open_regular(path, str(path)) as fh:
        data = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise FormatError(f"{path} is larger than any manifest airgap writes")
    return data


def read_signatures(bundle: Path) -> dict[str, bytes]:
    sig_dir = bundle / SIGNATURES_DIR
    signatures: dict[str, bytes] = {}
    if not sig_dir.is_dir() or sig_dir.is_symlink():
        return signatures
    for entry in sorted(sig_dir.iterdir()):
        m = _SIG_RE.match(entry.name)
        if not m:
            continue
        with fsutil.open_regular(entry, str(entry)) as fh:
            sig = fh.read(65)
        if len(sig) == 64:
            signatures[m.group(1)] = sig
        else:
            signatures[m.group(1)] = b""  # never verifies; reported as invalid for a trusted key
    return signatures


def _naming_manifest(bundle: Path, e: FormatError) -> FormatError:
    return FormatError(f"{bundle / MANIFEST_NAME}: {e.message.removeprefix('manifest: ')}", e.hint)


def load_bundle(bundle: Path, extra: Sequence[Path] = ()) -> LoadedBundle:
    """Read and parse a bundle's manifest without checking who signed it (inspect, sign)."""
    bundle, search = locate(bundle, extra)
    data = read_manifest_bytes(bundle)
    try:
        manifest = Manifest.from_bytes(data)
    except FormatError as e:
        raise _naming_manifest(bundle, e) from e
    return LoadedBundle(bundle, data, manifest, read_signatures(bundle), search)


def load_trusted_bundle(
    bundle: Path, trusted: Sequence[PublicKey], threshold: int, allow_expired: bool, extra: Sequence[Path] = ()
) -> tuple[LoadedBundle, TrustResult]:
    """Read a bundle's manifest and signatures; authenticate before parsing (see trust.check_trust)."""
    bundle, search = locate(bundle, extra)
    data = read_manifest_bytes(bundle)
    signatures = read_signatures(bundle)
    try:
        manifest, result = check_trust(data, signatures, trusted, threshold, allow_expired, datetime.now(timezone.utc))
    except FormatError as e:
        raise _naming_manifest(bundle, e) from e
    return LoadedBundle(bundle, data, manifest, signatures, search), result


def iter_blob(
    bundle: LoadedBundle,
    digest: str,
    block: int = 1 << 20,
    cache: VerifiedCache | None = None,
    counts: dict[str, int] | None = None,
) -> Generator[bytes, None, None]:
    """Yield a blob's bytes from its parts, checking every part and finally the blob digest.

    Parts found in ``cache`` are not hashed again (the blob digest still covers them); parts hashed
    here are added to it.  ``counts`` tallies "hashed" and "cached" parts.
    """
    rebuild = None if bundle.manifest.has_blob(digest) else bundle.manifest.rebuild_of(digest)
    if rebuild is not None:
        if bundle.base is None:
            raise UsageError(
                f"layer {digest[:19]} is rebuilt from the base bundle of this delta",
                hint="pass the base bundle with --base OLD_BUNDLE",
            )
        with (
            closing(iter_blob(bundle, rebuild.recipe, block, cache, counts)) as recipe,
            closing(iter_blob(bundle.base, rebuild.source, block, cache, counts)) as source,
        ):
            yield from decode(recipe, source, digest, rebuild.size, f"layer {digest[:19]}")
        return
    if not bundle.manifest.has_blob(digest):
        if bundle.base is None:
            raise UsageError(
                f"blob {digest} is in the base bundle of this delta, not in the delta",
                hint="pass the base bundle with --base OLD_BUNDLE",
            )
        yield from iter_blob(bundle.base, digest, block, cache, counts)
        return
    sha = hashlib.sha256()
    total = 0
    tally = counts if counts is not None else {}
    for part in bundle.manifest.parts_of(digest):
        with open_part(bundle, part) as fh:
            key = file_key(fh.fileno(), bundle.part_file(part), part) if cache is not None else ""
            known = cache is not None and key in cache
            for data in iter_part_data(fh, part, f"part {part.path}", block, check_hash=not known):
                sha.update(data)
                total += len(data)
                yield data
        tally["cached" if known else "hashed"] = tally.get("cached" if known else "hashed", 0) + 1
        if cache is not None and not known:
            cache.add(key)
    if "sha256:" + sha.hexdigest() != digest or total != bundle.manifest.blob(digest).size:
        raise IntegrityError(
            f"blob {digest} rebuilt from its parts does not match its digest",
            hint="the manifest was built from different data; do not use this bundle",
        )


def attach_base(bundle: LoadedBundle, base: LoadedBundle) -> LoadedBundle:
    """A delta with its base bundle: the base must be the very bundle the delta names (by manifest digest)."""
    digest = "sha256:" + hashlib.sha256(base.manifest_bytes).hexdigest()
    if bundle.manifest.base is None:
        raise UsageError(f"bundle {bundle.path} is not a delta; it needs no --base")
    if digest != bundle.manifest.base:
        raise TrustError(
            f"--base {base.path} is not the bundle this delta was made against (its manifest is {digest[:19]}, "
            f"the delta names {bundle.manifest.base[:19]})",
            hint="pass the exact bundle given to 'pack --since'",
        )
    return replace(bundle, base=base)


def open_part(bundle: LoadedBundle, part: Part | BundleFile) -> BinaryIO:
    """Open a part (or listed file) for reading: present, a regular file (no symlink), of the size the manifest says."""
    label = f"{'part' if isinstance(part, Part) else 'file'} {part.path}"
    volume = bundle.manifest.volume_of(part.path)
    on = f" (on {volume})" if volume else ""
    try:
        fh = fsutil.open_regular(bundle.part_file(part), label)
    except IntegrityError as e:
        if volume is not None:
            e.message += on
            if e.message.startswith(f"{label} is missing"):
                e.hint = f"mount the medium labelled {volume} and pass its directory with --from"
        raise
    size = os.fstat(fh.fileno()).st_size
    if size != part.size:
        fh.close()
        raise IntegrityError(
            f"{label} is {size} bytes, the manifest says {part.size} (truncated or damaged){on}",
            hint="copy the part again from the original medium",
        )
    return fh


def unexpected_files(bundle: LoadedBundle) -> list[str]:
    listed = {p.path for p in bundle.manifest.parts} | {f.path for f in bundle.manifest.files}
    extra = []
    for root, dirs, files in os.walk(bundle.path):
        rel_root = os.path.relpath(root, bundle.path)
        if rel_root == STAGING_DIR:
            dirs[:] = []
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = os.path.normpath(os.path.join(rel_root, name))
            if rel == MANIFEST_NAME or rel in listed:
                continue
            if rel.startswith(SIGNATURES_DIR + "/") and rel.endswith(".sig"):
                continue
            extra.append(rel)
    return sorted(extra)


def refuse_unexpected(bundle: LoadedBundle, allow: bool) -> list[str]:
    """Fail on files the manifest does not list (nothing unsigned rides along), unless allowed."""
    extra = unexpected_files(bundle)
    if extra and not allow:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise IntegrityError(
            f"file {extra[0]} in the bundle is not part of the signed bundle{more}",
            hint="remove it if you know where it came from (or pass --allow-unexpected); otherwise copy the bundle again",
        )
    return extra
