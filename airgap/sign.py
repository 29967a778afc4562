"""sign: add a signature to an existing bundle (a second signer, later, offline).

A signer vouches for what the bundle holds, not only for the manifest's text, and never for what it did not
check: the existing signatures are checked against ``--trust`` first (a trusted key's signature that does not
verify stops the signing: the manifest was changed after it was signed), then every part and file is hashed
against the manifest, and only then is the signature written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from airgap._internal.format.check import PartsFailed, check_parts
from airgap._internal.format.reader import find_unexpected, load_trusted_bundle
from airgap._internal.util import fsutil
from airgap.errors import IntegrityError
from airgap.model.manifest import SIGNATURES_DIR, Manifest
from airgap.progress import NullReporter, Reporter
from airgap.trust import keys
from airgap.trust import policy as trust
from airgap.trust.keys import PublicKey, SigningKey
from airgap.trust.policy import TrustResult


@dataclass(frozen=True)
class SignOptions:
    """What to sign: the bundle, the signing key, and the trusted keys its present signatures must meet."""

    bundle: Path
    key: SigningKey | Path  # a key file (a bare Path: unencrypted) or a key on a token; keys.open_signer opens either
    trusted: tuple[PublicKey, ...]
    threshold: int = 1
    jobs: int = os.cpu_count() or 1
    allow_expired: bool = False
    search: tuple[Path, ...] = ()  # more directories holding parts (--from: other volumes)


@dataclass(frozen=True)
class SignResult:
    """A signed bundle: the new signature's fingerprint and every signer it now has."""

    bundle: Path
    fingerprint: str
    signers: tuple[str, ...]
    trust: TrustResult

    def to_dict(self) -> dict[str, object]:
        return {
            "bundle": str(self.bundle),
            "fingerprint": self.fingerprint,
            "signers": list(self.signers),
            "signatures": self.trust.to_dict(),
        }


def summary(manifest: Manifest, result: TrustResult) -> list[str]:
    """What the signer is about to vouch for, one line each."""
    lines = [
        f"signing bundle {manifest.name} sequence {manifest.sequence}, created {manifest.created}, "
        + (f"expires {manifest.expires}" if manifest.expires else "no expiry date")
    ]
    for image in manifest.images:
        lines.append(f"  image {', '.join(image.ref_names) or '(untagged)'}  {image.image_id}  {image.platform}")
    if manifest.base:
        lines.append(f"  a delta of the bundle whose manifest is {manifest.base}")
    lines.append(f"  already signed by {', '.join(result.valid)} (trusted)")
    if result.unknown:
        lines.append(f"  and by {len(result.unknown)} key(s) not trusted here: {', '.join(fp[:16] for fp in result.unknown)}")
    return lines


def sign(options: SignOptions, reporter: Reporter | None = None) -> SignResult:
    """Add a signature by ``options.key``, after checking the present signatures and hashing every part.  The
    key opens first (a wrong passphrase or PIN fails before any part is read); a key on a token stays logged in
    until the signature is made."""
    with keys.open_signer(options.key) as signer:
        return _sign(options, signer, reporter or NullReporter())


def _sign(options: SignOptions, signer: keys.Signer, reporter: Reporter) -> SignResult:
    bundle, result = load_trusted_bundle(
        options.bundle, options.trusted, options.threshold, options.allow_expired, options.search
    )
    for line in summary(bundle.manifest, result):
        reporter.note(line)
    unexpected = find_unexpected(bundle)
    if unexpected:
        raise IntegrityError(
            f"file {unexpected[0].path} in the bundle {unexpected[0].why}",
            hint="a signer vouches for the whole bundle: remove what does not belong, or copy the bundle again",
        )
    results = check_parts(bundle, options.jobs, reporter, "check parts")
    bad = [r for r in results if not r.ok]
    if bad:
        raise PartsFailed(bad)
    fingerprint, signature = trust.sign(bundle.manifest_bytes, signer)
    sig_dir = bundle.path / SIGNATURES_DIR
    try:
        sig_dir.mkdir(mode=0o755, exist_ok=True)
    except OSError as e:
        raise fsutil.io_error(e, str(sig_dir)) from e
    if sig_dir.is_symlink() or not sig_dir.is_dir():
        raise IntegrityError(f"{sig_dir} is not a directory", hint="bundles hold regular files and directories only")
    fsutil.atomic_write(sig_dir / f"{fingerprint}.sig", signature)
    signers = tuple(sorted({*bundle.signatures, fingerprint}))
    return SignResult(options.bundle, fingerprint, signers, result)
