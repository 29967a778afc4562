from __future__ import annotations

from pathlib import Path

import pytest

from airgap.trust import keys
from airgap.trust import policy as trust
from tests.helpers.tools import openssl_verifies

MANIFEST = b'{"schema_version": 1}\n'


@pytest.mark.tools
def test_signature_checks_with_openssl(tmp_path: Path) -> None:
    key_path, pub_path, _ = keys.generate(tmp_path / "k", None)
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(MANIFEST)
    _, sig = trust.sign(MANIFEST, keys.load_private(key_path, None))
    (tmp_path / "m.sig").write_bytes(sig)
    assert openssl_verifies(pub_path, manifest, tmp_path / "m.sig")
    manifest.write_bytes(MANIFEST + b" ")
    assert not openssl_verifies(pub_path, manifest, tmp_path / "m.sig")
