"""A private containerd for the integration tests, as ``scripts/private-dockerd`` is for dockerd.

Its root, state, temporary directory and sockets are under one directory of its own; the CRI plugin is off
(no networking, no stream server), the debug and metrics listeners too, so nothing listens anywhere but on
its unix socket and nothing touches the host's /run/containerd.  Under CI a missing containerd or ctr
fails the test; elsewhere it skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

IN_CI = bool(os.environ.get("CI"))
NAMESPACE = "k8s.io"


def unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (CI must run every containerd test: .ci/run installs containerd)", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class PrivateContainerd:
    directory: Path
    socket: Path

    def target(self, namespace: str | None = None) -> str:
        """``--to`` for this containerd (the default namespace, k8s.io, unless one is named)."""
        return f"containerd://{self.socket}" + (f"?namespace={namespace}" if namespace else "")

    def ctr(self, *args: str, namespace: str = NAMESPACE, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """``ctr`` against this containerd; fails the test when ctr does."""
        done = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", namespace, *args],
            input=stdin.decode("latin-1") if stdin is not None else None,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert done.returncode == 0, f"ctr {' '.join(args)}: {done.stderr.strip()}"
        return done

    def images(self, namespace: str = NAMESPACE) -> dict[str, str]:
        """Every image name in the namespace -> the digest of its target (a manifest or an index)."""
        lines = self.ctr("images", "ls", namespace=namespace).stdout.splitlines()[1:]
        return {fields[0]: fields[2] for fields in (line.split() for line in lines) if len(fields) >= 3}

    def checked(self, namespace: str = NAMESPACE) -> dict[str, str]:
        """``ctr images check``: name -> "STATUS UNPACKED" (e.g. "complete true")."""
        lines = self.ctr("images", "check", namespace=namespace).stdout.splitlines()[1:]
        return {f[0]: f"{f[3]} {f[-1]}" for f in (line.split() for line in lines) if len(f) >= 6}

    def content(self, namespace: str = NAMESPACE) -> set[str]:
        """The digests of every blob in the namespace's content store."""
        return set(self.ctr("content", "ls", "--quiet", namespace=namespace).stdout.split())

    def blob(self, digest: str, namespace: str = NAMESPACE) -> bytes:
        out = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", namespace, "content", "get", digest],
            capture_output=True,
            check=True,
            timeout=60,
        )
        return out.stdout

    def remove_all(self, namespace: str = NAMESPACE) -> None:
        """Remove every image of the namespace, and wait until containerd has collected their content."""
        names = list(self.images(namespace))
        if names:
            self.ctr("images", "rm", "--sync", *names, namespace=namespace)
        deadline = time.monotonic() + 30
        while self.content(namespace) and time.monotonic() < deadline:
            time.sleep(0.2)


def _answers(sock: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(str(sock))
    except OSError:
        return False
    finally:
        s.close()
    done = subprocess.run(["ctr", "--address", str(sock), "version"], capture_output=True, text=True, check=False, timeout=30)
    return done.returncode == 0 and "Server:" in done.stdout


def _unmount_below(directory: Path) -> None:
    """Snapshot mounts a killed containerd may have left below its root."""
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1] for line in fh]
    for point in sorted((p for p in points if p.startswith(f"{directory}/")), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@contextlib.contextmanager
def private_containerd(directory: Path) -> Iterator[PrivateContainerd]:
    """Start containerd with everything under ``directory`` for the block."""
    if not shutil.which("containerd") or not shutil.which("ctr"):
        unavailable("containerd and ctr are not installed (Debian: apt-get install containerd)")
    if os.geteuid() != 0:
        unavailable("starting a private containerd needs root")
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / "containerd.sock"
    config = directory / "config.toml"
    config.write_text(
        "\n".join(
            [
                "version = 2",
                f'root = "{directory / "root"}"',
                f'state = "{directory / "state"}"',
                f'temp = "{directory / "tmp"}"',
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                "[grpc]",
                f'  address = "{sock}"',
                "[ttrpc]",
                f'  address = "{sock}.ttrpc"',
                "[debug]",
                '  address = ""',
                "[metrics]",
                '  address = ""',
                "",
            ]
        )
    )
    (directory / "tmp").mkdir(exist_ok=True)
    log = open(directory / "containerd.log", "wb")  # noqa: SIM115 - closed when the service stops
    proc = subprocess.Popen(
        ["containerd", "--config", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (sock.exists() and _answers(sock)):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (directory / "containerd.log").read_text(errors="replace")[-2000:]
                unavailable(f"private containerd did not start: {tail}")
            time.sleep(0.1)
        yield PrivateContainerd(directory, sock)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        _unmount_below(directory)
