"""A private Podman service for the integration tests: its Docker-compatible API on a unix socket of its own.

``podman system service`` runs with storage (``--root``, ``--runroot``), its temporary files, events, volumes,
networks and its configuration (containers.conf, storage.conf, registries.conf written here, so the host's
files play no part) under one directory, as ``scripts/private-dockerd`` does for dockerd.  It listens on
that socket only.  Under CI a missing podman fails the test; elsewhere it skips.
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


def unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (CI must run every Podman test: .ci/run installs podman)", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class PrivatePodman:
    directory: Path
    socket: Path
    env: dict[str, str]  # the configuration files, for the podman command line on the same storage

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The podman command line on the service's storage; fails the test when podman does."""
        done = subprocess.run(
            ["podman", *self._flags(), *args], env=self.env, capture_output=True, text=True, check=False, timeout=300
        )
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr.strip()}"
        return done

    def _flags(self) -> list[str]:
        d = self.directory
        return ["--root", str(d / "root"), "--runroot", str(d / "runroot"), "--tmpdir", str(d / "libpod")]

    def names(self) -> dict[str, str]:
        """Every image name -> its image ID (sha256:...)."""
        lines = self.podman("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", "--no-trunc").stdout.splitlines()
        return {name: image_id for name, image_id in (line.split() for line in lines) if not name.startswith("<none>")}

    def image_ids(self) -> set[str]:
        return set(self.podman("images", "--all", "--quiet", "--no-trunc").stdout.split())

    def remove_all(self) -> None:
        ids = self.image_ids()
        if ids:
            self.podman("rmi", "--force", *ids)

    def temporary_files(self) -> list[str]:
        """What the service left in its temporary directories (an upload it buffered, an unpacked archive)."""
        return sorted(p.name for d in ("tmp", "copy-tmp") for p in (self.directory / d).iterdir())


def _ping(sock: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(str(sock))
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
        return b" 200 " in s.recv(4096)
    except OSError:
        return False
    finally:
        s.close()


def _write_config(d: Path) -> dict[str, str]:
    for sub in ("root", "runroot", "libpod", "tmp", "copy-tmp", "net", "volumes"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "storage.conf").write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{d / "root"}"\nrunroot = "{d / "runroot"}"\n')
    (d / "containers.conf").write_text(
        "\n".join(
            [
                "[containers]",
                'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]',
                "[engine]",
                'cgroup_manager = "cgroupfs"',
                'events_logger = "file"',
                f'events_logfile_path = "{d / "events.log"}"',
                f'tmp_dir = "{d / "libpod"}"',
                f'static_dir = "{d / "root" / "libpod"}"',
                f'volume_path = "{d / "volumes"}"',
                f'image_copy_tmp_dir = "{d / "copy-tmp"}"',
                "[network]",
                f'network_config_dir = "{d / "net"}"',
                "",
            ]
        )
    )
    (d / "registries.conf").write_text("unqualified-search-registries = []\n")
    env = dict(os.environ)
    env.update(
        CONTAINERS_CONF=str(d / "containers.conf"),
        CONTAINERS_STORAGE_CONF=str(d / "storage.conf"),
        CONTAINERS_REGISTRIES_CONF=str(d / "registries.conf"),
        TMPDIR=str(d / "tmp"),  # where the service buffers an image upload
    )
    env.pop("DOCKER_HOST", None)
    return env


def _unmount_below(directory: Path) -> None:
    """The overlay driver's own mount of its directory, and any layer mount a killed service left."""
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1] for line in fh]
    for point in sorted((p for p in points if p == str(directory) or p.startswith(f"{directory}/")), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@contextlib.contextmanager
def private_podman(directory: Path) -> Iterator[PrivatePodman]:
    """Start ``podman system service`` with everything under ``directory`` for the block."""
    if not shutil.which("podman"):
        unavailable("podman is not installed (Debian: apt-get install --no-install-recommends podman)")
    if os.geteuid() != 0:
        unavailable("the private Podman service runs as root here")
    env = _write_config(directory)
    sock = directory / "podman.sock"
    service = PrivatePodman(directory, sock, env)
    log = open(directory / "podman.log", "wb")  # noqa: SIM115 - closed when the service stops
    proc = subprocess.Popen(
        ["podman", *service._flags(), "system", "service", "--time=0", f"unix://{sock}"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (sock.exists() and _ping(sock)):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (directory / "podman.log").read_text(errors="replace")[-2000:]
                unavailable(f"private podman service did not start: {tail}")
            time.sleep(0.1)
        yield service
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        _unmount_below(directory)
