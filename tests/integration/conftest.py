"""Fixtures of the integration tests: a real Docker engine and private distribution registries.

Under CI a missing engine or registry fails the test instead of skipping it (``tests.helpers.engine``).
"""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from tests.helpers.engine import private_engine, session_engine
from tests.helpers.registries import PrivateRegistry, basic_auth_registry, start_registry, token_auth_registry
from tests.helpers.tokens import TokenServer


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """DOCKER_HOST of a real engine: the one configured, or a private one started for the session."""
    yield from session_engine()


@pytest.fixture(scope="session")
def docker_client(docker_host: str) -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=600)
    yield client
    client.close()


@pytest.fixture(scope="session")
def second_engine(docker_host: str) -> Iterator[str]:
    """DOCKER_HOST of a second private Docker engine (another site's host), for pulls from a registry."""
    with private_engine("airgap-test-dockerd2.") as host:
        yield host


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRegistry]:
    """Debian's distribution registry on 127.0.0.1, plain HTTP, no auth."""
    yield from start_registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRegistry]:
    """The same registry with basic auth (htpasswd, bcrypt) for REGISTRY_USER."""
    yield from basic_auth_registry(tmp_path_factory.mktemp("auth-registry"))


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateRegistry, TokenServer]]:
    """The distribution registry with token (Bearer) authentication, and its token service."""
    yield from token_auth_registry(tmp_path_factory.mktemp("token-registry"))
