"""Signature checks.  Pure: bytes and keys in, a result or a TrustError out.

A signature is Ed25519 over the exact bytes of ``manifest.json``, stored raw (64 bytes) in
``signatures/<fingerprint>.sig``.  Only signatures from distinct trusted keys count toward the
threshold; signatures from unknown keys are reported and never counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from cryptography.exceptions import InvalidSignature

from airgap.errors import TrustError, UsageError
from airgap.model.manifest import Manifest, parse_time
from airgap.trust.keys import PublicKey, Signer, fingerprint


def sign(manifest_bytes: bytes, key: Signer) -> tuple[str, bytes]:
    """Return (signer fingerprint, raw signature).  KEY is an ``Ed25519PrivateKey`` or any :class:`Signer`
    (a key on a token): the signature is the same raw Ed25519 either way."""
    return fingerprint(key.public_key()), key.sign(manifest_bytes)


@dataclass(frozen=True)
class TrustResult:
    """Whose signatures verified, failed or were ignored, against the threshold; and the expiry."""

    valid: tuple[str, ...]  # fingerprints of trusted keys whose signature verified
    invalid: tuple[str, ...]  # fingerprints of trusted keys whose signature did not verify
    unknown: tuple[str, ...]  # signatures from keys not trusted here: ignored
    threshold: int
    expires: str | None = None
    expired: bool = False  # only ever True when expired bundles were explicitly allowed

    def notes(self) -> list[str]:
        """What a person should read about the signatures, one line each."""
        lines = [f"signatures OK: {len(self.valid)} of {self.threshold} required, by {', '.join(fp[:16] for fp in self.valid)}"]
        if self.unknown:
            lines.append(f"ignored {len(self.unknown)} signature(s) from keys not trusted here: {_some(self.unknown)}")
        if self.expired:
            lines.append(f"warning: the bundle expired at {self.expires} (allowed by --allow-expired)")
        return lines

    def to_dict(self) -> dict[str, object]:
        return {
            "valid": list(self.valid),
            "invalid": list(self.invalid),
            "unknown": list(self.unknown),
            "threshold": self.threshold,
            "expires": self.expires,
            "expired": self.expired,
        }


def _some(fingerprints: Sequence[str], shown: int = 5) -> str:
    """A few fingerprints (16 hex digits each) and how many more: one short line however many there are."""
    more = f" and {len(fingerprints) - shown} more" if len(fingerprints) > shown else ""
    return ", ".join(fp[:16] for fp in fingerprints[:shown]) + more


def verify_signatures(
    manifest_bytes: bytes,
    signatures: Mapping[str, bytes],
    trusted: Sequence[PublicKey],
    threshold: int = 1,
) -> TrustResult:
    if threshold < 1:
        raise UsageError("the signature threshold must be at least 1")
    if not trusted:
        raise TrustError("no trusted key given", hint="pass --trust KEY.pub")
    by_fp = {k.fingerprint: k for k in trusted}
    valid: list[str] = []
    invalid: list[str] = []
    unknown: list[str] = []
    for fp in sorted(signatures):
        key = by_fp.get(fp)
        if key is None:
            unknown.append(fp)
            continue
        try:
            key.key.verify(signatures[fp], manifest_bytes)
        except InvalidSignature:
            invalid.append(fp)
        else:
            valid.append(fp)
    result = TrustResult(tuple(valid), tuple(invalid), tuple(unknown), threshold)
    if invalid:
        # a trusted key's signature that does not verify is evidence of tampering, never noise
        raise TrustError(
            f"signature signatures/{invalid[0]}.sig by a trusted key does not match manifest.json",
            hint="the manifest or the signature was changed after signing; do not install or sign this bundle",
        )
    if len(valid) < threshold:
        if not signatures:
            raise TrustError("the bundle has no signature", hint="ask the security team for a signed bundle")
        if not valid:
            raise TrustError(
                f"no signature from a trusted key ({len(unknown)} from unknown keys)",
                hint=f"check that --trust names the signer's .pub file; fingerprints: {_some(unknown)}",
            )
        raise TrustError(f"only {len(valid)} valid signature(s) from trusted keys, {threshold} required")
    return result


def check_trust(
    manifest_bytes: bytes,
    signatures: Mapping[str, bytes],
    trusted: Sequence[PublicKey],
    threshold: int,
    allow_expired: bool,
    now: datetime,
) -> tuple[Manifest, TrustResult]:
    """Authenticate, then parse, then check freshness: nothing in the manifest is read before its
    signatures verified (python-tuf order), and an expiry date counts only once it is signed."""
    result = verify_signatures(manifest_bytes, signatures, trusted, threshold)
    manifest = Manifest.from_bytes(manifest_bytes)
    expired = check_expiry(manifest.expires, now, allow_expired)
    return manifest, replace(result, expires=manifest.expires, expired=expired)


# --- freshness and rollback (TUF's freeze and rollback attacks) ---------------------------------


def check_expiry(expires: str | None, now: datetime, allow_expired: bool) -> bool:
    """Fail if the bundle has expired (unless allowed).  Returns whether it has expired."""
    if expires is None:
        return False
    expired = parse_time(expires) <= now
    if expired and not allow_expired:
        raise TrustError(
            f"the bundle expired at {expires}",
            hint="ask the security team for a current bundle; --allow-expired installs it anyway",
        )
    return expired


@dataclass(frozen=True)
class Installed:
    """What the installer remembers of the newest bundle of one name."""

    sequence: int
    manifest_sha256: str


def check_rollback(name: str, sequence: int, manifest_sha256: str, seen: Installed | None, allow_downgrade: bool) -> None:
    """Refuse a bundle older than the newest of its name installed here, or a different one with the same number."""
    if seen is None or allow_downgrade:
        return
    if sequence < seen.sequence:
        raise TrustError(
            f"bundle {name} sequence {sequence} is older than sequence {seen.sequence}, installed here before",
            hint="this looks like a rollback to an old bundle; --allow-downgrade installs it anyway",
        )
    if sequence == seen.sequence and manifest_sha256 != seen.manifest_sha256:
        raise TrustError(
            f"bundle {name} sequence {sequence} differs from the bundle with that sequence installed here before",
            hint="two different bundles carry the same name and sequence; ask the security team which is genuine",
        )
