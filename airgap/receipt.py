"""Verification receipts: a JSON record of what was checked and what came out, optionally signed.

The receipt is written whatever the outcome: a failed verification is evidence too.  A signed receipt
names its signer's fingerprint inside and has a raw Ed25519 signature over its exact bytes beside it
(``RECEIPT.sig``), checkable with ``openssl pkeyutl -verify -rawin`` like a bundle signature.

Before a verification starts, :func:`start` replaces RECEIPT by an "incomplete" record and removes
RECEIPT.sig, so a run that is killed never leaves an earlier run's "pass" behind: a receipt that says
pass or fail belongs to a finished run.  Every write replaces the file atomically (a link at RECEIPT is
replaced, never followed).

A delta bundle (its manifest names a ``base``) leaves layers out or rebuilds them from its base: verify
cannot check those, install checks them against their digests.  The receipt lists them under ``delta``,
adds a "not checked here" entry per layer to the checks, and its result says so.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airgap._internal.format.reader import locate, read_manifest_bytes
from airgap._internal.util.fsutil import atomic_write, io_error
from airgap._internal.util.text import json_safe
from airgap._version import __version__
from airgap.errors import Error
from airgap.model.manifest import Manifest, format_time
from airgap.trust import policy as trust
from airgap.trust.keys import Signer, fingerprint

RECEIPT_VERSION = 1
NOT_CHECKED = "not checked here: checked against their digests at install"


def _now() -> str:
    return format_time(datetime.now(timezone.utc))


def start(path: Path, bundle: Path | None = None) -> None:
    """Before verifying: put an "incomplete" record at PATH and remove PATH.sig (in that order)."""
    body = {
        "receipt_version": RECEIPT_VERSION,
        "tool": {"name": "airgap", "version": __version__},
        "time": _now(),
        "bundle": None if bundle is None else str(bundle),
        "manifest_sha256": None,
        "result": "incomplete",
        "error": None,
        "verification": None,
        "delta": None,
        "signed_by": None,
        "note": "verification started at this time and did not finish (interrupted, or still running): not a result",
    }
    atomic_write(path, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
    _remove(Path(f"{path}.sig"))


def _remove(path: Path) -> None:
    """Unlink PATH (a link itself, never what it points to); a missing one is fine."""
    try:
        os.unlink(path)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise io_error(e, str(path)) from e


def record(bundle: Path, report: dict[str, Any] | None, error: Error | None) -> dict[str, Any]:
    manifest_sha256 = report.get("manifest_sha256") if report else None
    data: bytes | None
    try:
        data = read_manifest_bytes(locate(bundle)[0])
    except (Error, OSError):
        data = None
    if manifest_sha256 is None and data is not None:
        manifest_sha256 = hashlib.sha256(data).hexdigest()
    delta = _delta(data, report)
    layers: list[dict[str, Any]] = delta.get("layers", []) if delta else []
    verification = report
    if report is not None and layers:
        unchecked = [
            {
                "check": f"layer {x['layer']}",
                "result": "not checked here",
                "detail": f"{x['why']}; checked against its digest at install",
            }
            for x in layers
        ]
        verification = {**report, "checks": [*report.get("checks", []), *unchecked]}
    result = "pass" if error is None else "fail"
    if error is None and delta and "unknown" in delta:
        result = "pass (delta: which layers it leaves out is unknown, manifest.json changed after verification)"
    elif error is None and layers:
        result = f"pass (delta: {len(layers)} layers not in this bundle, checked against their digests at install)"
    return {
        "receipt_version": RECEIPT_VERSION,
        "tool": {"name": "airgap", "version": __version__},
        "time": _now(),
        "bundle": str(bundle),
        "manifest_sha256": manifest_sha256,
        "result": result,
        "error": None if error is None else {"kind": error.kind(), "exit_code": int(error.exit_code), "message": error.message},
        "verification": verification,
        "delta": delta,
    }


def _delta(data: bytes | None, report: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a verified delta bundle leaves to install; None for a full bundle or an unverified manifest."""
    if report is None or data is None:
        return None  # the manifest was not verified (trust failed): nothing to say about it
    if hashlib.sha256(data).hexdigest() != report.get("manifest_sha256"):
        return {"unknown": "manifest.json changed after verification: which layers a delta leaves out is unknown"}
    try:
        manifest = Manifest.from_bytes(data)
    except Error:
        return {"unknown": "manifest.json no longer parses"}
    if manifest.base is None:
        return None
    layers = [
        {"layer": d.digest, "size": d.size, "why": "left out of this delta bundle: comes from its base bundle"}
        for d in manifest.external_layers()
    ]
    layers += [
        {
            "layer": r.layer,
            "size": r.size,
            "why": f"rebuilt at install from base layer {r.source} by recipe {r.recipe}",
        }
        for r in manifest.rebuilds
    ]
    return {"base": manifest.base, "layers": layers, "note": NOT_CHECKED}


def write(path: Path, data: dict[str, Any], key: Signer | None) -> str | None:
    """Write the receipt (and RECEIPT.sig when a key is given, a key file's or a token's); return the signer's
    fingerprint.  The signature is made before either file is written: a key that fails (a token removed)
    leaves the "incomplete" record of :func:`start` in place."""
    signer = fingerprint(key.public_key()) if key is not None else None
    body = (json.dumps(json_safe({**data, "signed_by": signer}), indent=2, sort_keys=True) + "\n").encode()
    if key is not None:
        _, signature = trust.sign(body, key)
        atomic_write(Path(f"{path}.sig"), signature)
    else:
        _remove(Path(f"{path}.sig"))  # an earlier run's signature must not sit beside this receipt
    atomic_write(path, body)
    return signer
