"""Local files another user must not be able to change: a receipt whose path is a planted link is replaced,
not followed, and its signature still checks with openssl."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.tools import openssl_verifies


def test_receipt_symlinks_replaced_not_followed(cli, bundle: Path, keypair, other_keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "receipt.json"
    victim, victim_sig = tmp_path / "victim.txt", tmp_path / "victim.sig"
    victim.write_text("keep me\n")
    victim_sig.write_text("keep me too\n")
    path.symlink_to(victim)
    Path(f"{path}.sig").symlink_to(victim_sig)
    r = cli("verify", str(bundle), "--trust", str(keypair[1]), "--receipt", str(path), "--receipt-key", str(other_keypair[0]))
    assert r.code == 0, r.err
    assert victim.read_text() == "keep me\n" and victim_sig.read_text() == "keep me too\n"
    assert not path.is_symlink() and not Path(f"{path}.sig").is_symlink()
    assert openssl_verifies(other_keypair[1], path, Path(f"{path}.sig"))
