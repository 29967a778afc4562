"""Debian's distribution registry (``docker-registry``) as a private process on 127.0.0.1, plain HTTP:
without auth, with Basic auth (htpasswd, bcrypt), or with token auth from a :class:`TokenServer`."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from tests.helpers.engine import unavailable
from tests.helpers.paths import SCRIPTS
from tests.helpers.tokens import TokenServer

REGISTRY_USER, REGISTRY_PASSWORD = "field-engineer", "correct horse battery staple"


@dataclass(frozen=True)
class PrivateRegistry:
    host: str  # 127.0.0.1:PORT
    log: Path  # its access log: one line per request

    def requests_seen(self, method: str, path_part: str) -> int:
        return sum(1 for line in self.log.read_text().splitlines() if f'"{method} ' in line and path_part in line)


def start_registry(directory: Path, htpasswd: Path | None = None) -> Iterator[PrivateRegistry]:
    """A registry storing under ``directory``, until the generator is closed or resumed."""
    if not shutil.which("docker-registry"):
        unavailable("docker-registry is not installed (.ci/run installs it)")
    script = SCRIPTS / "private-registry"
    args = [str(script), "start", str(directory)] + ([str(htpasswd)] if htpasswd else [])
    started = subprocess.run(args, capture_output=True, text=True, check=False)
    if started.returncode != 0:
        unavailable(f"private registry did not start: {started.stderr.strip()[-500:]}")
    try:
        yield PrivateRegistry(started.stdout.strip(), directory / "registry.log")
    finally:
        subprocess.run([str(script), "stop", str(directory)], check=False)


def basic_auth_registry(directory: Path) -> Iterator[PrivateRegistry]:
    """A registry asking for Basic auth, which REGISTRY_USER with REGISTRY_PASSWORD passes."""
    htpasswd = directory / "htpasswd"
    hashed = bcrypt.hashpw(REGISTRY_PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
    htpasswd.write_text(f"{REGISTRY_USER}:{hashed}\n")
    yield from start_registry(directory / "srv", htpasswd)


def token_auth_registry(directory: Path) -> Iterator[tuple[PrivateRegistry, TokenServer]]:
    """A registry with token (Bearer) authentication, and its token service."""
    tokens = TokenServer(directory, REGISTRY_USER, REGISTRY_PASSWORD)
    env = {
        "REGISTRY_AUTH": "token",
        "REGISTRY_AUTH_TOKEN_REALM": tokens.realm,
        "REGISTRY_AUTH_TOKEN_SERVICE": TokenServer.SERVICE,
        "REGISTRY_AUTH_TOKEN_ISSUER": TokenServer.ISSUER,
        "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": str(tokens.cert_path),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # read by the registry process when it starts
    try:
        registries = start_registry(directory / "srv")
        registry = next(registries)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield registry, tokens
    finally:
        next(registries, None)
        tokens.close()
