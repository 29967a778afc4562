"""verify --receipt: evidence of what was checked, written whatever the outcome."""

from __future__ import annotations

import json
from pathlib import Path

from airgap._internal.format.reader import load_bundle
from tests.helpers.cli import Cli
from tests.helpers.keys import KeyPair


def test_json_report_lists_every_check(cli: Cli, bundle: Path, keypair: KeyPair) -> None:
    r = cli("verify", str(bundle), "--trust", str(keypair[1]), "--json")
    assert r.code == 0
    checks = json.loads(r.out)["checks"]
    names = [c["check"] for c in checks]
    assert names[:3] == ["manifest", "signatures", "expiry"]
    assert {f"part {p.path}" for p in load_bundle(bundle).manifest.parts} <= set(names)
    assert all(c["result"] == "pass" for c in checks)


def test_receipt_of_a_damaged_part_records_the_failure(cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path) -> None:
    part = load_bundle(bundle).manifest.parts[1]
    path = bundle / part.path
    path.write_bytes(path.read_bytes()[:-1])
    receipt = tmp_path / "receipt.json"
    r = cli("verify", str(bundle), "--trust", str(keypair[1]), "--receipt", str(receipt))
    assert r.code == 4
    data = json.loads(receipt.read_bytes())
    assert data["result"] == "fail" and data["error"]["kind"] == "integrity" and data["error"]["exit_code"] == 4
    failed = [c for c in data["verification"]["checks"] if c["result"] == "fail"]
    assert [c["check"] for c in failed] == [f"part {part.path}"]


def test_receipt_of_an_untrusted_bundle_records_the_failure(
    cli: Cli, bundle: Path, other_keypair: KeyPair, tmp_path: Path
) -> None:
    receipt = tmp_path / "receipt.json"
    r = cli("verify", str(bundle), "--trust", str(other_keypair[1]), "--receipt", str(receipt))
    assert r.code == 5
    data = json.loads(receipt.read_bytes())
    assert data["result"] == "fail" and data["error"]["kind"] == "trust" and data["verification"] is None
    assert len(data["manifest_sha256"]) == 64


def test_receipt_key_without_receipt_is_usage_error(cli: Cli, bundle: Path, keypair: KeyPair) -> None:
    r = cli("verify", str(bundle), "--trust", str(keypair[1]), "--receipt-key", str(keypair[0]))
    assert r.code == 2 and "--receipt" in r.err
