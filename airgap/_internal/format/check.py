"""Checking a bundle's parts and listed files against its manifest: each hashed whole, ``jobs`` at a time.
Used by verify (every part), sign (a signer vouches for the parts) and install (the listed side files)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from airgap._internal.format.cache import VerifiedCache, file_key
from airgap._internal.format.reader import LoadedBundle, PartProblem, open_part
from airgap.errors import EnvironmentProblem, IntegrityError
from airgap.model.manifest import BundleFile, Part
from airgap.progress import Reporter

HASH_BLOCK = 4 << 20


@dataclass(frozen=True)
class PartResult:
    """How one part or file of a bundle fared: its path and kind, and what is wrong with it if anything."""

    path: str
    ok: bool
    problem: str | None = None
    kind: str = "part"  # or "file": a listed side file (installer), or one the manifest does not list
    volume: str | None = None  # the volume (vol-NN) it travels on, in a bundle split over media
    missing: bool = False


class PartsFailed(IntegrityError):
    """Some parts are missing or damaged; ``bad`` says which (and ``report``, verify's whole report, when
    verify raised it)."""

    def __init__(self, bad: list[PartResult], report: Any = None) -> None:
        first = bad[0]
        more = f" (and {len(bad) - 1} more problem(s))" if len(bad) > 1 else ""
        missing_volumes = sorted({b.volume for b in bad if b.missing and b.volume})
        hint = "copy the named part(s) again from the original medium, then verify again"
        if missing_volumes:
            hint = f"mount the media labelled {', '.join(missing_volumes)} and pass each directory with --from"
        super().__init__(f"{first.kind} {first.path} {first.problem}{more}", hint=hint)
        self.bad = bad
        self.report = report


def check_part(
    bundle: LoadedBundle,
    part: Part | BundleFile,
    advance: Callable[[int], None] | None = None,
    cache: VerifiedCache | None = None,
) -> PartResult:
    """Hash one part (or listed file) against the manifest (always: verify never trusts the cache, it only fills it)."""
    kind = "part" if isinstance(part, Part) else "file"
    label = f"{kind} {part.path}"
    try:
        fh = open_part(bundle, part)
    except PartProblem as e:
        return PartResult(part.path, False, e.message.removeprefix(label + " "), kind, e.volume, e.missing)
    with fh:
        key = file_key(fh.fileno(), bundle.part_file(part), part) if isinstance(part, Part) else ""
        sha = hashlib.sha256()
        buf = bytearray(HASH_BLOCK)
        view = memoryview(buf)
        try:
            while True:
                n = fh.readinto(view)  # type: ignore[attr-defined]
                if not n:
                    break
                sha.update(view[:n])
                if advance:
                    advance(n)
        except OSError as e:
            raise EnvironmentProblem(f"cannot read {label}: {e.strerror}", hint="the medium may be failing") from e
    if sha.hexdigest() != part.sha256:
        volume = bundle.manifest.volume_of(part.path)
        where = f" (on {volume})" if volume else ""
        return PartResult(
            part.path, False, f"does not match its sha256 in the manifest (damaged or replaced){where}", kind, volume
        )
    if cache is not None and key:
        cache.add(key)
    return PartResult(part.path, True, kind=kind)


def check_parts(
    bundle: LoadedBundle, jobs: int, reporter: Reporter, label: str, cache: VerifiedCache | None = None
) -> tuple[PartResult, ...]:
    """Hash every part against the manifest, ``jobs`` at a time (hashlib releases the GIL)."""
    items: list[Part | BundleFile] = [*bundle.manifest.parts, *bundle.manifest.files]
    reporter.start(label, sum(item.size for item in items))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = tuple(pool.map(lambda p: check_part(bundle, p, reporter.advance, cache), items))
    reporter.finish()
    return results
