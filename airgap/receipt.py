"""Verification receipts: a JSON record of what was checked and what came out, optionally signed.

The receipt is written whatever the outcome: a failed verification is evidence too.  A signed receipt
names its signer's fingerprint inside and has a raw Ed25519 signature over its exact bytes beside it
(``RECEIPT.sig``), checkable with ``openssl pkeyutl -verify -rawin`` like a bundle signature.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airgap import __version__, trust
from airgap._internal.bundle import read_manifest_bytes
from airgap._internal.fsutil import atomic_write
from airgap.errors import Error
from airgap.keys import fingerprint
from airgap.models import format_time

RECEIPT_VERSION = 1


def record(bundle: Path, report: dict[str, Any] | None, error: Error | None) -> dict[str, Any]:
    manifest_sha256 = report.get("manifest_sha256") if report else None
    if manifest_sha256 is None:
        try:
            manifest_sha256 = hashlib.sha256(read_manifest_bytes(bundle)).hexdigest()
        except Error:
            manifest_sha256 = None
    return {
        "receipt_version": RECEIPT_VERSION,
        "tool": {"name": "airgap", "version": __version__},
        "time": format_time(datetime.now(timezone.utc)),
        "bundle": str(bundle),
        "manifest_sha256": manifest_sha256,
        "result": "pass" if error is None else "fail",
        "error": None if error is None else {"kind": error.kind(), "exit_code": int(error.exit_code), "message": error.message},
        "verification": report,
    }


def write(path: Path, data: dict[str, Any], key: Ed25519PrivateKey | None) -> str | None:
    """Write the receipt (and RECEIPT.sig when a key is given); return the signer's fingerprint."""
    signer = fingerprint(key.public_key()) if key is not None else None
    body = (json.dumps({**data, "signed_by": signer}, indent=2, sort_keys=True) + "\n").encode()
    if key is not None:
        _, signature = trust.sign(body, key)
        atomic_write(Path(f"{path}.sig"), signature)
    atomic_write(path, body)
    return signer
