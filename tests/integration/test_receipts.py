"""verify --receipt: evidence of what was checked, written whatever the outcome."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airgap._internal.format.reader import load_bundle
from tests.helpers.tools import openssl_verifies


@pytest.mark.tools
def test_signed_receipt_of_a_pass_checks_with_openssl(cli, bundle: Path, keypair, other_keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    receipt = tmp_path / "receipt.json"
    r = cli("verify", str(bundle), "--trust", str(keypair[1]), "--receipt", str(receipt), "--receipt-key", str(other_keypair[0]))
    assert r.code == 0, r.err
    data = json.loads(receipt.read_bytes())
    assert data["result"] == "pass" and data["error"] is None
    assert data["manifest_sha256"] == data["verification"]["manifest_sha256"]
    assert len(data["verification"]["parts"]) == len(load_bundle(bundle).manifest.parts)
    assert openssl_verifies(other_keypair[1], receipt, Path(f"{receipt}.sig"))
