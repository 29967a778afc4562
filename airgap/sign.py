"""sign: add a signature to an existing bundle (a second signer, later, offline).

A signer vouches for the parts too, not only for the manifest's text: every part is hashed against
the manifest before the signature is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from airgap import keys, trust
from airgap._internal import fsutil
from airgap._internal.bundle import load_bundle
from airgap.models import SIGNATURES_DIR
from airgap.progress import NullReporter, Reporter
from airgap.verify import PartsFailed, check_parts


@dataclass(frozen=True)
class SignOptions:
    bundle: Path
    key_path: Path
    passphrase: bytes | None = None
    jobs: int = os.cpu_count() or 1


@dataclass(frozen=True)
class SignResult:
    bundle: Path
    fingerprint: str
    signers: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"bundle": str(self.bundle), "fingerprint": self.fingerprint, "signers": list(self.signers)}


def sign(options: SignOptions, reporter: Reporter | None = None) -> SignResult:
    reporter = reporter or NullReporter()
    private = keys.load_private(options.key_path, options.passphrase)
    bundle = load_bundle(options.bundle)
    results = check_parts(bundle, options.jobs, reporter, "check parts")
    bad = [r for r in results if not r.ok]
    if bad:
        raise PartsFailed(bad)
    fingerprint, signature = trust.sign(bundle.manifest_bytes, private)
    sig_dir = bundle.path / SIGNATURES_DIR
    try:
        sig_dir.mkdir(exist_ok=True)
    except OSError as e:
        raise fsutil.io_error(e, str(sig_dir)) from e
    fsutil.atomic_write(sig_dir / f"{fingerprint}.sig", signature)
    signers = tuple(sorted({*bundle.signatures, fingerprint}))
    return SignResult(options.bundle, fingerprint, signers)
