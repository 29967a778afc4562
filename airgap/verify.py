"""verify: the signature, then every part, hashed in parallel.  Reads nothing but the bundle."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airgap import __version__
from airgap._internal.bundle import LoadedBundle, PartProblem, find_unexpected, load_trusted_bundle, open_part
from airgap._internal.cache import VerifiedCache, file_key
from airgap._internal.state import cache_path
from airgap._internal.state import default_path as default_state_path
from airgap.errors import EnvironmentProblem, Error, IntegrityError
from airgap.keys import PublicKey
from airgap.models import BundleFile, Part, format_time
from airgap.progress import NullReporter, Reporter
from airgap.trust import TrustResult

HASH_BLOCK = 4 << 20


@dataclass(frozen=True)
class VerifyOptions:
    bundle: Path
    trusted: tuple[PublicKey, ...]
    threshold: int = 1
    jobs: int = os.cpu_count() or 1
    allow_expired: bool = False
    allow_unexpected: bool = False  # files in the bundle that the manifest does not list: warn instead of fail
    search: tuple[Path, ...] = ()  # more directories holding parts (--from: other volumes)


@dataclass(frozen=True)
class PartResult:
    path: str
    ok: bool
    problem: str | None = None
    kind: str = "part"  # or "file": a listed side file (installer), or one the manifest does not list
    volume: str | None = None  # the volume (vol-NN) it travels on, in a bundle split over media
    missing: bool = False


@dataclass(frozen=True)
class VerifyReport:
    bundle: Path
    manifest_sha256: str
    trust: TrustResult
    parts: tuple[PartResult, ...]
    unexpected_files: tuple[str, ...]
    seconds: float
    unexpected_allowed: bool = False
    unexpected_why: tuple[str, ...] = ()  # for each unexpected file, what is wrong with it
    name: str = ""
    sequence: int = 0
    checked_at: str = ""

    @property
    def ok(self) -> bool:
        return not self.bad_parts

    @property
    def bad_parts(self) -> list[PartResult]:
        """Failed parts, then unexpected files unless they were allowed."""
        bad = [p for p in self.parts if not p.ok]
        if not self.unexpected_allowed:
            bad += [PartResult(f, False, why, kind="file") for f, why in zip(self.unexpected_files, self._whys(), strict=True)]
        return bad

    def _whys(self) -> tuple[str, ...]:
        return self.unexpected_why or ("is not part of the signed bundle",) * len(self.unexpected_files)

    def checks(self) -> list[dict[str, str]]:
        """Every check performed, in order, with its outcome: the evidence an auditor asks for."""
        t = self.trust
        checks = [
            {
                "check": "manifest",
                "result": "pass",
                "detail": f"manifest.json parses as schema_version 1, sha256 {self.manifest_sha256}",
            },
            {
                "check": "signatures",
                "result": "pass",
                "detail": f"{len(t.valid)} valid from trusted keys ({', '.join(t.valid)}), threshold {t.threshold}; "
                f"{len(t.invalid)} invalid, {len(t.unknown)} from unknown keys (ignored)",
            },
            {
                "check": "expiry",
                "result": "expired, allowed" if t.expired else "pass",
                "detail": f"expires {t.expires}" if t.expires else "no expiry date",
            },
        ]
        for p in self.parts:
            detail = "size and sha256 match the manifest" if p.ok else f"{p.kind} {p.problem}"
            checks.append({"check": f"{p.kind} {p.path}", "result": "pass" if p.ok else "fail", "detail": detail})
        for extra, why in zip(self.unexpected_files, self._whys(), strict=True):
            result, detail = ("warning", f"{why}; allowed") if self.unexpected_allowed else ("fail", why)
            checks.append({"check": f"file {extra}", "result": result, "detail": detail})
        return checks

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "bundle": str(self.bundle),
            "name": self.name,
            "sequence": self.sequence,
            "checked_at": self.checked_at,
            "checks": self.checks(),
            "manifest_sha256": self.manifest_sha256,
            "signatures": self.trust.to_dict(),
            "parts": [{"path": p.path, "ok": p.ok, "problem": p.problem} for p in self.parts if p.kind == "part"],
            "files": [{"path": p.path, "ok": p.ok, "problem": p.problem} for p in self.parts if p.kind == "file"],
            "parts_checked": sum(1 for p in self.parts if p.kind == "part"),
            "files_checked": sum(1 for p in self.parts if p.kind == "file"),
            "parts_bad": len(self.bad_parts),
            "unexpected_files": list(self.unexpected_files),
            "tool_version": __version__,
            "seconds": round(self.seconds, 3),
        }


class PartsFailed(IntegrityError):
    """Some parts are missing or damaged; ``bad`` (and ``report``, from verify) say which."""

    def __init__(self, bad: list[PartResult], report: VerifyReport | None = None) -> None:
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


def verify(options: VerifyOptions, reporter: Reporter | None = None) -> VerifyReport:
    reporter = reporter or NullReporter()
    started = time.monotonic()
    bundle, trust_result = load_trusted_bundle(
        options.bundle, options.trusted, options.threshold, options.allow_expired, options.search
    )
    for line in trust_result.notes():
        reporter.note(line)
    if bundle.manifest.base:
        reporter.note(
            f"note: a delta of the bundle whose manifest is {bundle.manifest.base[:19]}: its "
            f"{len(bundle.manifest.external_layers()) + len(bundle.manifest.rebuilds)} left-out or rebuilt layer(s) "
            "are checked against their digests when installed"
        )
    results = check_parts(bundle, options.jobs, reporter, "verify", VerifiedCache(cache_path(default_state_path())))
    unexpected = find_unexpected(bundle)
    report = VerifyReport(
        name=bundle.manifest.name,
        sequence=bundle.manifest.sequence,
        checked_at=format_time(datetime.now(timezone.utc)),
        bundle=options.bundle,
        manifest_sha256=hashlib.sha256(bundle.manifest_bytes).hexdigest(),
        trust=trust_result,
        parts=tuple(results),
        unexpected_files=tuple(u.path for u in unexpected),
        unexpected_why=tuple(u.why for u in unexpected),
        unexpected_allowed=options.allow_unexpected,
        seconds=time.monotonic() - started,
    )
    if options.allow_unexpected:
        for extra in report.unexpected_files:
            reporter.note(f"warning: unexpected file {extra} (not part of the signed bundle; allowed)")
    if not report.ok:
        raise PartsFailed(report.bad_parts, report)
    return report


def verify_with_receipt(
    options: VerifyOptions,
    receipt_path: Path,
    receipt_key: Ed25519PrivateKey | None,
    reporter: Reporter | None = None,
) -> VerifyReport:
    """verify, then write a receipt of the outcome, failed or not."""
    from airgap import receipt

    receipt.start(receipt_path, options.bundle)  # a receipt present always belongs to a finished run
    try:
        report = verify(options, reporter)
    except Error as e:
        details = e.report.to_dict() if isinstance(e, PartsFailed) and e.report is not None else None
        receipt.write(receipt_path, receipt.record(options.bundle, details, e), receipt_key)
        raise
    receipt.write(receipt_path, receipt.record(options.bundle, report.to_dict(), None), receipt_key)
    return report
