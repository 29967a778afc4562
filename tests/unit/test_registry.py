"""Registry references, install targets and credentials, parsed with no peer; a two-platform bundle written
to an oci-archive and packed again per platform.  Against real registries: ``integration/test_registry.py``."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from airgap._internal.clients.distribution import credentials_for, parse_ref
from airgap._internal.sinks.base import parse_target
from airgap._internal.sinks.registry import split_ref
from airgap.errors import UsageError
from tests.helpers.bundles import two_platform_pack
from tests.helpers.cli import Cli
from tests.helpers.keys import KeyPair

# --- parsing (no peers) ---------------------------------------------------------------------


def test_registry_reference_parsing() -> None:
    ref = parse_ref("oci://127.0.0.1:5000/team/bundle:1.0", "oci")
    assert (ref.host, ref.repository, ref.reference) == ("127.0.0.1:5000", "team/bundle", "1.0")
    digest = "sha256:" + "a" * 64
    assert parse_ref(f"oci://reg.example/b@{digest}", "oci").reference == digest
    for bad in ("oci://reg/Upper:1", "oci://reg/b:bad tag", "http://reg/b:1", "oci://reg/b@sha256:short", "oci://reg/b"):
        with pytest.raises(UsageError):
            parse_ref(bad, "oci")


def test_install_targets_and_repository_mapping() -> None:
    assert parse_target(None).kind == "docker"
    assert parse_target("registry://127.0.0.1:5000/site/").value == "127.0.0.1:5000/site"
    assert parse_target("oci-archive:/tmp/x.tar").value == "/tmp/x.tar"
    with pytest.raises(UsageError):
        parse_target("registry://127.0.0.1:5000/Bad Prefix")
    with pytest.raises(UsageError):
        parse_target("s3://bucket/x")
    assert split_ref("registry.example:5000/team/agent:1.0") == ("team/agent", "1.0")
    assert split_ref("team/agent:1.0") == ("team/agent", "1.0")


def test_credentials_come_from_docker_config_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRGAP_REGISTRY_USER", raising=False)
    monkeypatch.delenv("AIRGAP_REGISTRY_PASSWORD", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert credentials_for("reg.example:5000") is None
    auth = base64.b64encode(b"alice:s3cret").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"https://reg.example:5000": {"auth": auth}}}))
    creds = credentials_for("reg.example:5000")
    assert creds is not None and (creds.username, creds.password) == ("alice", "s3cret")
    assert credentials_for("other.example") is None
    monkeypatch.setenv("AIRGAP_REGISTRY_USER", "bob")
    monkeypatch.setenv("AIRGAP_REGISTRY_PASSWORD", "pw")
    creds = credentials_for("reg.example:5000")
    assert creds is not None and creds.username == "bob"


# --- publish / pull -------------------------------------------------------------------------


def test_pack_from_a_two_platform_oci_archive_takes_the_platform_asked_for(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    both, amd, arm = two_platform_pack(cli, keypair, tmp_path, "airgap-test/oci-plat:1.0")
    archive = tmp_path / "both-oci.tar"
    assert cli("install", str(both), "--trust", str(keypair[1]), "--to", f"oci-archive:{archive}").code == 0
    for platform, expected in (("linux/arm64", [arm.image_id]), ("all", sorted([amd.image_id, arm.image_id]))):
        out = tmp_path / f"from-oci-{platform.replace('/', '-')}"
        r = cli("pack", f"oci-archive:{archive}", "-o", str(out), "--key", str(keypair[0]), "--platform", platform, "--json")
        assert r.code == 0, r.err
        assert sorted(i["image_id"] for i in json.loads(r.out)["images"]) == expected
    r = cli("pack", f"oci-archive:{archive}", "-o", str(tmp_path / "none"), "--key", str(keypair[0]), "--platform", "linux/s390x")
    assert r.code == 2 and "linux/amd64, linux/arm64" in r.err, r.err
