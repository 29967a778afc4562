"""airgap dials the engine the docker CLI would: ``DOCKER_HOST``, else the context ``DOCKER_CONTEXT`` names, else
the current context of the Docker client's config, with a private dockerd's socket as the context's endpoint.

Each test has a HOME of its own (no DOCKER_CONFIG), so the context store is the one ``docker context create``
writes: ``~/.docker/contexts/meta/<sha256 of the name>/meta.json`` and ``.../tls/<sha256>/docker/``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import docker
import pytest

from airgap._internal.clients.docker import DEFAULT_HOST, Engine, docker_endpoint
from airgap.errors import DockerError
from tests.helpers.cli import Cli
from tests.helpers.engine import remove
from tests.helpers.keys import KeyPair
from tests.helpers.samples import Samples


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own, with no engine chosen by the environment."""
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for name in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(name, raising=False)
    return home


def create_context(home: Path, name: str, host: str, skip_tls_verify: bool = False, tls: bool = False) -> Path:
    """What ``docker context create NAME --docker host=HOST`` writes into HOME/.docker (with TLS material when ``tls``)."""
    return create_context_in(home / ".docker", name, host, skip_tls_verify, tls)


def create_context_in(config_dir: Path, name: str, host: str, skip_tls_verify: bool = False, tls: bool = False) -> Path:
    """What ``docker context create`` writes into the Docker client's config directory."""
    context_id = hashlib.sha256(name.encode()).hexdigest()
    meta = config_dir / "contexts" / "meta" / context_id
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps({"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": skip_tls_verify}}})
    )
    if tls:
        store = config_dir / "contexts" / "tls" / context_id / "docker"
        store.mkdir(parents=True)
        for f in ("ca.pem", "cert.pem", "key.pem"):
            (store / f).write_text("-----BEGIN PLACEHOLDER-----\n")
    return meta


def use_context(home: Path, name: str) -> None:
    """What ``docker context use NAME`` writes into the client config."""
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": {}, "currentContext": name}))


# --- which engine, without dialling it ------------------------------------------------------------------------


def test_without_anything_set_the_default_socket_is_dialled(home: Path) -> None:
    assert docker_endpoint().host == DEFAULT_HOST
    use_context(home, "default")
    assert docker_endpoint().host == DEFAULT_HOST


def test_docker_host_wins_over_docker_context_which_wins_over_the_current_context(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_context(home, "current", "unix:///run/current.sock")
    create_context(home, "asked", "tcp://10.0.0.5:2375")
    use_context(home, "current")
    assert docker_endpoint().host == "unix:///run/current.sock"
    monkeypatch.setenv("DOCKER_CONTEXT", "asked")
    assert docker_endpoint().host == "tcp://10.0.0.5:2375"
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/explicit.sock")
    assert docker_endpoint().host == "unix:///run/explicit.sock"
    monkeypatch.setenv("DOCKER_HOST", "")  # set but empty: as unset, for the docker CLI too
    assert docker_endpoint().host == "tcp://10.0.0.5:2375"


def test_docker_config_moves_the_context_store(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    create_context(home, "x", "unix:///run/in-home.sock")
    use_context(home, "x")
    elsewhere = tmp_path / "elsewhere"
    create_context_in(elsewhere, "x", "unix:///run/elsewhere.sock")
    (elsewhere / "config.json").write_text(json.dumps({"currentContext": "x"}))
    monkeypatch.setenv("DOCKER_CONFIG", str(elsewhere))
    assert docker_endpoint().host == "unix:///run/elsewhere.sock"


def test_a_context_keeps_its_tls_material(home: Path) -> None:
    create_context(home, "secure", "tcp://engine.example:2376", tls=True)
    create_context(home, "lax", "tcp://engine.example:2376", skip_tls_verify=True)
    use_context(home, "secure")
    secure = docker_endpoint()
    assert secure.tls and not secure.skip_verify and secure.ca is not None and secure.ca.endswith("/docker/ca.pem")
    assert secure.cert is not None and secure.cert[1].endswith("/docker/key.pem")
    use_context(home, "lax")
    lax = docker_endpoint()
    assert lax.tls and lax.skip_verify and lax.ca is None


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("unix:///var/run/docker.sock", True),
        ("tcp://127.0.0.1:2375", True),
        ("tcp://LocalHost:2375", True),
        ("tcp://[::1]:2375", True),
        ("tcp://10.0.0.5:2375", False),
        ("ssh://admin@engine.example", False),
    ],
)
def test_an_engine_shares_this_hosts_loopback_only_on_a_socket_or_loopback(home: Path, host: str, local: bool) -> None:
    create_context(home, "c", host)
    use_context(home, "c")
    endpoint = docker_endpoint()
    client = docker.DockerClient(base_url="tcp://127.0.0.1:1", version="1.24")  # never dialled
    try:
        assert Engine(client, endpoint).is_local() is local
    finally:
        client.close()


def test_a_context_that_does_not_exist_is_named(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_context(home, "gone")
    with pytest.raises(DockerError, match=r"docker context 'gone' \(the current context in .*config.json\) does not exist"):
        docker_endpoint()
    monkeypatch.setenv("DOCKER_CONTEXT", "typo")
    with pytest.raises(DockerError, match=r"docker context 'typo' \(named by DOCKER_CONTEXT\) does not exist") as caught:
        docker_endpoint()
    assert "docker context ls" in (caught.value.hint or "")


def test_an_unreadable_context_is_an_environment_error(home: Path) -> None:
    meta = create_context(home, "broken", "unix:///x.sock")
    (meta / "meta.json").write_text("{not json")
    use_context(home, "broken")
    with pytest.raises(DockerError, match="cannot read docker context 'broken'"):
        docker_endpoint()
    (meta / "meta.json").write_text(json.dumps({"Name": "broken", "Endpoints": {}}))
    with pytest.raises(DockerError, match="has no Docker endpoint"):
        docker_endpoint()


# --- against a private dockerd --------------------------------------------------------------------------------


@pytest.mark.docker
def test_install_and_pack_reach_the_engine_of_the_current_context(
    cli: Cli, home: Path, docker_host: str, docker_client: docker.DockerClient, bundle: Path, keypair: KeyPair, samples: Samples
) -> None:
    sample = samples["docker"]
    remove(docker_client, sample.tag)
    create_context(home, "private", docker_host)
    use_context(home, "private")
    assert "DOCKER_HOST" not in os.environ
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--json")
    assert r.code == 0, r.err
    assert docker_client.images.get(sample.tag).id == sample.image_id  # the private engine has it now
    out = home / "again"
    r = cli("pack", sample.tag, "-o", str(out), "--key", str(keypair[0]), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["images"][0]["image_id"] == sample.image_id


@pytest.mark.docker
def test_docker_context_naming_a_dead_engine_fails_with_its_name_not_the_default_socket(
    cli: Cli, home: Path, docker_host: str, bundle: Path, keypair: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_context(home, "private", docker_host)
    create_context(home, "dead", f"unix://{home}/no-engine.sock")
    use_context(home, "private")
    monkeypatch.setenv("DOCKER_CONTEXT", "dead")
    r = cli("install", str(bundle), "--trust", str(keypair[1]))
    assert r.code == 6 and "Traceback" not in r.err
    assert f"{home}/no-engine.sock" in r.err and "'dead'" in r.err and "DOCKER_CONTEXT" in r.err
    assert "/var/run/docker.sock" not in r.err
    monkeypatch.setenv("DOCKER_HOST", docker_host)  # DOCKER_HOST overrides the context, as for the docker CLI
    r = cli("install", str(bundle), "--trust", str(keypair[1]))
    assert r.code == 0, r.err
