"""verify: the signature, then every part, hashed in parallel.  Reads nothing but the bundle.

A split bundle can be checked one volume at a time (``--volume``: a disc as it is burned, or as it arrives)
and read from one drive, its discs coming one after another (``--one-drive``); this host remembers which of
its volumes passed, so each run says which are still unchecked."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from airgap import receipt
from airgap._internal.format import discs
from airgap._internal.format.cache import KnownBundles, VerifiedCache, known_dir
from airgap._internal.format.check import PartResult, PartsFailed, check_parts
from airgap._internal.format.discs import NeverAsk
from airgap._internal.format.reader import LoadedBundle, Unexpected, find_unexpected, load_trusted_bundle
from airgap._version import __version__
from airgap.discs import Changer, VolumeCheck
from airgap.errors import Error, UsageError
from airgap.model.manifest import format_time
from airgap.progress import NullReporter, Reporter
from airgap.trust.keys import PublicKey, Signer
from airgap.trust.policy import TrustResult
from airgap.trust.rollback import cache_path
from airgap.trust.rollback import default_path as default_state_path

__all__ = [
    "PartResult",
    "PartsFailed",
    "VerifyOptions",
    "VerifyReport",
    "VolumesChecked",
    "verify",
    "verify_with_receipt",
]


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
    volume: str | None = None  # --volume: check this volume only ("3", "vol-03"; "" the one in ``bundle``)
    changer: Changer | None = None  # --one-drive: ``bundle`` is a drive's directory, its discs come one after another
    state: Path | None = None  # the install state file: the verified-parts cache and the split bundles read here live
    # beside it, where install and sign look for them; None: the default ($AIRGAP_STATE, else ~/.local/state/airgap)
    cache: bool = True  # False: record no verified part on this host (install and sign then hash every part again)


@dataclass(frozen=True)
class VolumesChecked:
    """A split bundle's volumes as checked on this host: which this run checked, and the latest result of each."""

    names: tuple[str, ...]  # every volume, in order
    this_run: tuple[str, ...]
    checks: tuple[tuple[str, VolumeCheck], ...]  # volume -> its latest check here (this run's, else an earlier one)

    @classmethod
    def of(cls, names: list[str], this_run: list[str], checks: Mapping[str, VolumeCheck]) -> VolumesChecked:
        """The status from the checks so far (this run's included)."""
        return cls(tuple(names), tuple(this_run), tuple((n, checks[n]) for n in names if n in checks))

    def _with(self, result: str) -> list[str]:
        """The volumes whose latest check had this result."""
        return [name for name, check in self.checks if check.result == result]

    @property
    def unchecked(self) -> list[str]:
        """The volumes not checked on this host yet."""
        done = {name for name, _ in self.checks}
        return [name for name in self.names if name not in done]

    def line(self) -> str:
        """One line for the user: what this run checked, what passed so far, what is still unchecked."""
        passed, failed, left = self._with("pass"), self._with("fail"), self.unchecked
        text = f"volumes passed on this host: {', '.join(passed) or 'none'} (of {len(self.names)})"
        if failed:
            text += f"; failed: {', '.join(failed)}"
        return text + (f"; still unchecked: {', '.join(left)}" if left else "; none unchecked")

    def to_dict(self) -> dict[str, object]:
        """As ``verify --json`` reports it, under ``volumes``."""
        return {
            "total": len(self.names),
            "this_run": list(self.this_run),
            "passed": self._with("pass"),
            "failed": self._with("fail"),
            "unchecked": self.unchecked,
            "checks": {name: check.to_dict() for name, check in self.checks},
        }


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
    volumes: VolumesChecked | None = None  # a split bundle: its volumes checked on this host

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
            **({"volumes": self.volumes.to_dict()} if self.volumes is not None else {}),
        }


def verify(options: VerifyOptions, reporter: Reporter | None = None) -> VerifyReport:
    """Check the bundle's signatures and hash every part and listed file (of one volume with ``volume``; read
    from one drive with ``changer``); PartsFailed (carrying this report) if any is bad."""
    reporter = reporter or NullReporter()
    started = time.monotonic()
    state_path = options.state or default_state_path()
    known = KnownBundles(known_dir(state_path))
    cache = VerifiedCache(cache_path(state_path) if options.cache else None)
    bundle, trust_result = _open(options, known, reporter)
    for line in trust_result.notes():
        reporter.note(line)
    if bundle.manifest.base:
        reporter.note(
            f"note: a delta of the bundle whose manifest is {bundle.manifest.base[:19]}: its "
            f"{len(bundle.manifest.external_layers()) + len(bundle.manifest.rebuilds)} left-out or rebuilt layer(s) "
            "are checked against their digests when installed"
        )
    volume = _wanted_volume(bundle, options.volume)
    outcome: dict[str, tuple[bool, Path]] = {}
    results: list[PartResult] = []
    unexpected: list[Unexpected] = []
    if options.changer is None and volume is None:
        results = list(check_parts(bundle, options.jobs, reporter, "verify", cache))
        unexpected = find_unexpected(bundle)
        if bundle.manifest.volumes:
            outcome = _outcome_of_whole(bundle, results, unexpected)
    else:
        names = [volume] if volume is not None else [v.name for v in bundle.manifest.volumes]
        reporter.start("verify", sum(i.size for name in names for i in discs.items_on(bundle.manifest, name)))
        for done in discs.check_volumes(bundle, names, options.jobs, reporter.advance, cache):
            results += done.results
            unexpected += done.unexpected
            outcome[done.volume] = (done.ok, done.where)
        reporter.finish()
    volumes = None
    if bundle.manifest.volumes:
        discs.remember(known, bundle)
        checks = discs.record_checks(known, bundle, outcome)
        volumes = VolumesChecked.of([v.name for v in bundle.manifest.volumes], list(outcome), checks)
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
        volumes=volumes,
    )
    if options.allow_unexpected:
        for extra in report.unexpected_files:
            reporter.note(f"warning: unexpected file {extra} (not part of the signed bundle; allowed)")
    if not report.ok:
        raise _failed(report)
    return report


UNLISTED_HINT = (
    "remove the files the manifest does not list if you know where they came from (or pass --allow-unexpected); "
    "otherwise copy the bundle again"
)


def _failed(report: VerifyReport) -> PartsFailed:
    """The failure for a report that did not pass, its hint naming the fix for what was found: parts to copy
    again, files that do not belong, or both."""
    error = PartsFailed(report.bad_parts, report)
    if report.unexpected_files and not report.unexpected_allowed:
        damaged = any(not p.ok for p in report.parts)
        error.hint = f"{error.hint}; {UNLISTED_HINT}" if damaged else UNLISTED_HINT
    return error


def _open(options: VerifyOptions, known: KnownBundles, reporter: Reporter) -> tuple[LoadedBundle, TrustResult]:
    """The bundle and its trust check: from the directory (and --from), or from one drive (``changer``); a disc
    other than the first checked alone (``volume``) with the manifest this host kept of its bundle."""
    args = (options.trusted, options.threshold, options.allow_expired)
    if options.changer is not None:
        if options.search:
            raise UsageError("--one-drive reads every volume from BUNDLE, the drive's directory", hint="leave out --from")
        return discs.open_drive(options.bundle, options.changer, *args, known, reporter.note)
    if options.volume is not None and not options.search:
        # the disc (or folders) given, as a drive that holds what it holds: a disc is known by its listing, and one
        # other than the first is checked against the manifest this host kept of its bundle
        return discs.open_drive(options.bundle, NeverAsk(), *args, known, reporter.note)
    return load_trusted_bundle(options.bundle, *args, options.search)


def _wanted_volume(bundle: LoadedBundle, text: str | None) -> str | None:
    """The volume ``--volume`` names: by number, or ("") the one the given directory holds."""
    if text is None:
        return None
    if not bundle.manifest.volumes:
        raise UsageError(
            f"bundle {bundle.path} is not split into volumes", hint="--volume is for a bundle packed with --media-dir-size"
        )
    number = discs.volume_number(text)
    if number is not None:
        return discs.volume_named(bundle.manifest, number)
    held = sorted(bundle.drive.discs()) if bundle.drive is not None else [p.volume for p in bundle.places()[:1] if p.volume]
    if len(held) != 1 or bundle.root is not None:
        raise UsageError(
            f"{bundle.path} holds {'several volumes' if held else 'no one volume'}: name the one to check",
            hint="--volume N (e.g. --volume 3)",
        )
    return held[0]


def _outcome_of_whole(
    bundle: LoadedBundle, results: list[PartResult], unexpected: list[Unexpected]
) -> dict[str, tuple[bool, Path]]:
    """Each volume's result when the whole bundle was checked at once: all pass when nothing was wrong; else a
    volume fails that carries a bad part or file (where an unexpected file lies is not told, so others stay unsaid)."""
    m = bundle.manifest
    where = {v.name: bundle.place_of(discs.items_on(m, v.name)[0]).path for v in m.volumes}
    bad = {m.volume_of(r.path) for r in results if not r.ok}
    if not bad and not unexpected:
        return {name: (True, path) for name, path in where.items()}
    return {name: (False, where[name]) for name in sorted(v for v in bad if v)}


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
