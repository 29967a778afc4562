"""Rough edges as a person at a terminal (tmux) sees them: a mistyped passphrase asked again in the same
lower-case voice as every prompt, and a progress bar in binary units that ends at 100 %.  The rest, without a
terminal: ``unit/test_rough_edges.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.keys import PASS, KeyPair, encrypted_key
from tests.helpers.paths import ROOT

Screen = Callable[[str], str]


def _tmux() -> str:
    path = shutil.which("tmux")
    if path is None:
        pytest.fail("tmux is not installed (.ci/run installs it)")
    return path


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Callable[[str], tuple[Screen, Callable[[str], None]]]]:
    """Run a shell line in a 150x40 tmux window: gives ``wait_for(text)`` (the screen once it shows text) and
    ``type_line(text)`` (keys, then Enter)."""
    session = f"airgap-edges-{os.getpid()}"
    tmux = [_tmux(), "-L", session]

    def start(line: str) -> tuple[Screen, Callable[[str], None]]:
        shell = f"cd {ROOT} && AIRGAP_STATE={tmp_path / 'state' / 'installed.json'} {line}; echo EXIT=$?; sleep 60"
        subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "150", "-y", "40", shell], check=True)

        def wait_for(text: str) -> str:
            deadline = time.monotonic() + 60
            while text not in (shown := subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=True
            ).stdout):  # fmt: skip
                assert time.monotonic() < deadline, f"{text!r} never shown:\n{shown}"
                time.sleep(0.2)
            return shown

        def type_line(text: str) -> None:
            subprocess.run([*tmux, "send-keys", "-t", session, text, "Enter"], check=True)

        return wait_for, type_line

    yield start
    subprocess.run([*tmux, "kill-server"], check=False)


@pytest.mark.tools
def test_mistyped_passphrase_is_asked_again_at_the_terminal(
    terminal: Callable[[str], tuple[Screen, Callable[[str], None]]], bundle: Path, keypair: KeyPair, tmp_path: Path
) -> None:
    key, _, fingerprint = encrypted_key(tmp_path)
    wait_for, type_line = terminal(f"{sys.executable} -m airgap sign {bundle} --key {key} --trust {keypair[1]}")
    wait_for(f"passphrase for {key}:")
    type_line("not it")
    wait_for("wrong passphrase, try again (2 attempts left)")
    type_line(PASS.decode())
    shown = wait_for("EXIT=")
    assert "EXIT=0" in shown and f"signed {bundle} as {fingerprint}" in shown, shown
    assert "check parts: 100%|" in shown and "MiB of " in shown and "iB/s]" in shown, shown
    assert "MB/s" not in shown and "Traceback" not in shown
    for line in shown.splitlines():
        if line.startswith(("passphrase", "wrong", "the ")):
            assert line[0].islower(), line
