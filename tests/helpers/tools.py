"""The tools an auditor or a bare host uses instead of airgap: openssl, and dash running ``install.sh``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def openssl_verifies(public_key: Path, signed_file: Path, signature: Path) -> bool:
    """The auditor's check of a raw Ed25519 signature, with openssl alone."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is not installed (.ci/run installs it)")
    cmd = [
        "openssl",
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(public_key),
        "-rawin",
        "-in",
        str(signed_file),
        "-sigfile",
        str(signature),
    ]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def dash() -> str:
    """Debian's /bin/sh, which install.sh is written for."""
    path = shutil.which("dash")
    if path is None:
        pytest.fail("dash is not installed (Debian's /bin/sh; .ci/run installs it)")
    return path


def run_sh(bundle: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the bundle's own installer/install.sh with dash; a hang past ``timeout`` fails the test."""
    return subprocess.run(
        [dash(), str(bundle / "installer" / "install.sh"), *args],
        capture_output=True,
        text=True,
        check=False,
        env=env if env is not None else dict(os.environ),
        timeout=timeout,
    )
