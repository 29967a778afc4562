"""verify: the signature, then every part, hashed in parallel.  Reads nothing but the bundle."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from airgap import receipt
from airgap._internal.format.cache import VerifiedCache
from airgap._internal.format.check import PartResult, PartsFailed, check_parts
from airgap._internal.format.reader import find_unexpected, load_trusted_bundle
from airgap._version import __version__
from airgap.errors import Error
from airgap.model.manifest import format_time
from airgap.progress import NullReporter, Reporter
from airgap.trust.keys import PublicKey, Signer
from airgap.trust.policy import TrustResult
from airgap.trust.rollback import cache_path
from airgap.trust.rollback import default_path as default_state_path

__all__ = ["PartResult", "PartsFailed", "VerifyOptions", "VerifyReport", "verify", "verify_with_receipt"]


@dataclass(frozen=True)
class VerifyOptions:
    """What to verify: the bundle, the trusted keys and how many must have signed, parallel hashing, what to allow."""

    bundle: Path
    trusted: tuple[PublicKey, ...]
    threshold: int = 1
    jobs: int = os.cpu_count() or 1
    allow_expired: bool = False
    allow_unexpected: bool = False  # files in the bundle that the manifest does not list: warn instead of fail
    search: tuple[Path, ...] = ()  # more directories holding parts (--from: other volumes)


@dataclass(frozen=True)
class VerifyReport:
    """A verification's outcome: signatures, each part and file checked, unexpected files; ``to_dict`` is the JSON report."""

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
        """Whether every part and file passed, and no unexpected file was found (unless they were allowed)."""
        return not self.bad_parts

    @property
    def bad_parts(self) -> list[PartResult]:
        """Failed parts, then unexpected files unless they were allowed."""
        bad = [p for p in self.parts if not p.ok]
        if not self.unexpected_allowed:
            bad += [PartResult(f, False, why, kind="file") for f, why in zip(self.unexpected_files, self._whys(), strict=True)]
        return bad

    def _whys(self) -> tuple[str, ...]:
        """What is wrong with each unexpected file, in order."""
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
        """The JSON report: the outcome, every check in order (:meth:`checks`), signatures, parts and files."""
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


def verify(options: VerifyOptions, reporter: Reporter | None = None) -> VerifyReport:
    """Check the bundle's signatures and hash every part and listed file; PartsFailed (carrying this report) if any is bad."""
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
    receipt_key: Signer | None,
    reporter: Reporter | None = None,
) -> VerifyReport:
    """verify, then write a receipt of the outcome, failed or not."""
    receipt.start(receipt_path, options.bundle)  # a receipt present always belongs to a finished run
    try:
        report = verify(options, reporter)
    except Error as e:
        details = e.report.to_dict() if isinstance(e, PartsFailed) and e.report is not None else None
        receipt.write(receipt_path, receipt.record(options.bundle, details, e), receipt_key)
        raise
    receipt.write(receipt_path, receipt.record(options.bundle, report.to_dict(), None), receipt_key)
    return report
