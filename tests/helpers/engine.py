"""A real Docker engine for the integration tests: the one DOCKER_HOST names, or a private dockerd.

A private engine has its own data root and socket (``scripts/private-dockerd``), so tests never touch the
images of the engine a developer works with.  Under CI (``CI`` set) a missing engine fails the test: CI must
run every Docker test; elsewhere it skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import docker
import docker.errors
import pytest

from airgap._internal.clients.docker import engine_answers
from tests.helpers.paths import SCRIPTS

IN_CI = bool(os.environ.get("CI"))


def unavailable(reason: str) -> NoReturn:
    """A service the test needs is missing: fail under CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must run every Docker test)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def private_engine(prefix: str) -> Iterator[str]:
    """Start a private dockerd (own data root and socket) for the block; yields its DOCKER_HOST."""
    if not shutil.which("dockerd") or os.geteuid() != 0:
        unavailable("no Docker engine answers and a private dockerd cannot be started here")
    engine_dir = Path(tempfile.mkdtemp(prefix=prefix))
    script = SCRIPTS / "private-dockerd"
    started = subprocess.run([str(script), "start", str(engine_dir)], capture_output=True, text=True, check=False)
    if started.returncode != 0:
        unavailable(f"private dockerd did not start: {started.stderr.strip()[-500:]}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([str(script), "stop", str(engine_dir)], check=False)
        shutil.rmtree(engine_dir, ignore_errors=True)


def session_engine() -> Iterator[str]:
    """DOCKER_HOST of a real engine: the one configured, or a private one set in DOCKER_HOST until the end."""
    if os.environ.get("DOCKER_HOST") and engine_answers():
        yield os.environ["DOCKER_HOST"]
        return
    with private_engine("airgap-test-dockerd.") as host:
        old = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = host
        try:
            yield host
        finally:
            if old is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = old


def remove(client: docker.DockerClient, *refs: str) -> None:
    """Remove these images or names, if present."""
    for ref in refs:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(ref, force=True)


def evict_images_sharing_layers(client: docker.DockerClient, diff_ids: tuple[str, ...]) -> None:
    """Remove every image that holds one of these layers: install reads no layer the engine already has,
    so a test that damages a part must start from an engine without that layer."""
    wanted = set(diff_ids)
    for image in client.images.list(all=True):
        if wanted & set((image.attrs.get("RootFS") or {}).get("Layers") or []):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)
