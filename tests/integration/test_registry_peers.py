"""Registries as they behave in the field, in front of the real one: Debian's distribution registry on 127.0.0.1
(plain, and with token auth and its JWT service), behind a loopback proxy (tests/helpers/registry_proxy.py) that
throttles, fails, refuses chunked uploads, drops and cuts connections, redirects blobs to another origin and
rewrites digests.  Each push and pull goes through the fault and must end with the right digests, checked
against the registry itself with skopeo."""

from __future__ import annotations

import email.utils
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from airgap._internal.clients import distribution
from airgap.install import InstallOptions, InstallResult, install
from airgap.pack import PackOptions, pack, parse_source
from airgap.publish import publish, pull
from airgap.trust import keys
from tests.helpers.cli import Cli
from tests.helpers.keys import KeyPair
from tests.helpers.registries import REGISTRY_PASSWORD, REGISTRY_USER, PrivateRegistry
from tests.helpers.registry_proxy import RegistryProxy
from tests.helpers.samples import sample_image
from tests.helpers.tokens import TokenServer

pytestmark = [pytest.mark.tools]

CHUNK = 512 << 10


@pytest.fixture(scope="module")
def peers_bundle(tmp_path_factory: pytest.TempPathFactory, keypair: KeyPair) -> Path:
    """Two images in two repositories sharing their base layer; a 2 MiB model layer goes up in several chunks."""
    d = tmp_path_factory.mktemp("peers")
    a = sample_image.build(d / "a.tar", tag="airgap-test/peer-a:1.0", model_size=2 << 20, app_size=1 << 18, seed="pa")
    b = sample_image.build(d / "b.tar", tag="airgap-test/peer-b:1.0", model_size=1 << 18, app_size=1 << 16, seed="pb")
    assert set(a.layers) & set(b.layers)
    sources = (parse_source(f"docker-archive:{a.path}"), parse_source(f"docker-archive:{b.path}"))
    pack(PackOptions(sources, d / "bundle", keypair[0], part_size=1 << 20))
    return d / "bundle"


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits between retries: recorded, and shortened to keep the suite fast."""
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(min(seconds, 0.05))

    monkeypatch.setattr(distribution, "DEFAULT_RETRY", replace(distribution.DEFAULT_RETRY, sleep=sleep))
    return waits


@pytest.fixture
def proxy(registry: PrivateRegistry) -> Iterator[RegistryProxy]:
    with RegistryProxy(registry.host) as p:
        yield p


@pytest.fixture
def login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.setenv("AIRGAP_REGISTRY_USER", REGISTRY_USER)
    monkeypatch.setenv("AIRGAP_REGISTRY_PASSWORD", REGISTRY_PASSWORD)


def _push(bundle: Path, public: Path, host: str, prefix: str) -> InstallResult:
    options = InstallOptions(bundle, (keys.load_public(public),), target=f"registry://{host}/{prefix}", chunk_size=CHUNK)
    return install(options)


def _skopeo(*args: str, creds: bool = False) -> str:
    if not shutil.which("skopeo"):
        pytest.fail("skopeo is not installed (.ci/run installs it)")
    login = ["--creds", f"{REGISTRY_USER}:{REGISTRY_PASSWORD}"] if creds else []
    done = subprocess.run(
        ["skopeo", *args[:1], "--tls-verify=false", *login, *args[1:]], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _check_push(result: InstallResult, registry_host: str, creds: bool = False) -> dict[str, dict[str, Any]]:
    """Every pushed image as the registry itself holds it (not through the proxy): the manifest digest reported,
    the config naming the image ID.  Returns each reference's manifest."""
    manifests = {}
    assert len(result.images) == 2
    for image in result.images:
        reference = image.location.split("/", 1)[1]
        ref = f"docker://{registry_host}/{reference}"
        assert json.loads(_skopeo("inspect", ref, creds=creds))["Digest"] == image.manifest_digest
        manifest = json.loads(_skopeo("inspect", "--raw", ref, creds=creds))
        assert manifest["config"]["digest"] == image.image_id
        manifests[reference] = manifest
    return manifests


def _check_pull(manifests: dict[str, dict[str, Any]], host: str, signer: Path, out: Path) -> None:
    """Pack every pushed image back through ``host``: the same config and layer digests."""
    for i, (reference, manifest) in enumerate(sorted(manifests.items())):
        result = pack(PackOptions((parse_source(f"oci://{host}/{reference}"),), out / str(i), signer))
        (image,) = result.manifest.images
        assert image.config.digest == manifest["config"]["digest"]
        assert [d.digest for d in image.layers] == [d["digest"] for d in manifest["layers"]]


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


def _uploads_left(registry: PrivateRegistry, prefix: str) -> list[Path]:
    """Upload sessions the registry still holds under ``prefix``, started and neither finished nor deleted (a deleted
    one leaves only its hash state behind: distribution writes it once more as the DELETE's request ends)."""
    root = registry.log.parent / "storage" / "docker" / "registry" / "v2" / "repositories" / prefix
    return [p.parent for p in root.glob("**/_uploads/*/startedat")]


# --- throttling and unavailability -----------------------------------------------------------


def test_throttled_push_and_pull_wait_as_retry_after_says(
    proxy: RegistryProxy, registry: PrivateRegistry, peers_bundle: Path, keypair: KeyPair, slept: list[float], tmp_path: Path
) -> None:
    proxy.answer(429, "PATCH", nth=2, headers={"Retry-After": "3"})
    proxy.answer(429, "HEAD", "/blobs/", nth=3, headers={"Retry-After": _http_date(20)})
    proxy.answer(429, "GET", "/blobs/sha256:", nth=2, headers={"Retry-After": "1"})
    manifests = _check_push(_push(peers_bundle, keypair[1], proxy.host, "throttled"), registry.host)
    _check_pull(manifests, proxy.host, keypair[0], tmp_path)
    assert sorted(slept)[:2] == [1, 3] and 15 <= max(slept) <= 20 and len(slept) == 3
    assert [s.status for s in proxy.seen].count(429) == 3


def test_unavailable_registry_mid_push_and_pull_is_tried_again(
    proxy: RegistryProxy, registry: PrivateRegistry, peers_bundle: Path, keypair: KeyPair, slept: list[float], tmp_path: Path
) -> None:
    proxy.answer(503, "PATCH", nth=3)
    proxy.answer(502, "PUT", "digest=", nth=2)
    proxy.answer(504, "GET", "/manifests/", nth=1)
    proxy.answer(503, "GET", "/blobs/sha256:", nth=2)
    manifests = _check_push(_push(peers_bundle, keypair[1], proxy.host, "unavailable"), registry.host)
    _check_pull(manifests, proxy.host, keypair[0], tmp_path)
    assert len(slept) == 4 and all(0.5 <= s <= 1 for s in slept)  # each a first retry: 1 s, with jitter
    assert _uploads_left(registry, "unavailable") == []


def test_registry_that_stays_unavailable_is_named_when_retries_run_out(
    cli: Cli, proxy: RegistryProxy, registry: PrivateRegistry, keypair: KeyPair, slept: list[float], tmp_path: Path
) -> None:
    proxy.answer(503, "GET", "/manifests/", times=None)
    r = cli("pack", f"oci://{proxy.host}/stays/down:1", "-o", str(tmp_path / "b"), "--key", str(keypair[0]))
    assert r.code == 6, r.err
    assert f"error: registry {proxy.host} answered 503 to manifest stays/down:1" in r.err and "tried 5 times" in r.err
    assert "docker login" not in r.err and "copy the bundle" not in r.err
    assert len(proxy.requests_to("GET", "/manifests/")) == 5 and len(slept) == 4


# --- broken connections ----------------------------------------------------------------------


def test_connection_dropped_mid_upload_resumes_where_the_registry_stands(
    proxy: RegistryProxy, registry: PrivateRegistry, peers_bundle: Path, keypair: KeyPair, slept: list[float], tmp_path: Path
) -> None:
    proxy.drop("PATCH", nth=3)
    manifests = _check_push(_push(peers_bundle, keypair[1], proxy.host, "dropped"), registry.host)
    _check_pull(manifests, proxy.host, keypair[0], tmp_path)
    patches = proxy.requests_to("PATCH")
    dropped, following = patches[2], patches[3]
    assert dropped.status is None
    asked = proxy.seen[proxy.seen.index(dropped) + 1]
    assert (asked.method, asked.status) == ("GET", 204) and "/blobs/uploads/" in asked.path
    assert following.header("Content-Range") == dropped.header("Content-Range")  # the same chunk again, no more
    assert _uploads_left(registry, "dropped") == []


def test_answer_lost_after_a_chunk_was_taken_starts_the_upload_over(
    proxy: RegistryProxy, registry: PrivateRegistry, peers_bundle: Path, keypair: KeyPair, slept: list[float], tmp_path: Path
) -> None:
    # the registry took the chunk, and the Location naming the upload's new state was lost with the answer:
    # distribution no longer lets that upload be asked about, continued or deleted (its purge removes it later)
    proxy.drop("PATCH", nth=3, taken=True)
    manifests = _check_push(_push(peers_bundle, keypair[1], proxy.host, "lost"), registry.host)
    _check_pull(manifests, proxy.host, keypair[0], tmp_path)
    dropped = proxy.requests_to("PATCH")[2]
    after = proxy.seen[proxy.seen.index(dropped) + 1 :]
    assert [(s.method, s.status) for s in after[:2]] == [("GET", 404), ("DELETE", 404)]  # asked, tried to delete it
    assert after[2].method == "HEAD" and (after[3].method, after[3].status) == ("POST", 202)  # a new upload
    assert after[4].method == "PATCH" and (after[4].header("Content-Range") or "").startswith("0-")
    assert len(slept) == 1
    assert len(_uploads_left(registry, "lost")) == 1  # the one it would not let go


def test_connection_cut_mid_download_resumes_with_range(
    proxy: RegistryProxy, registry: PrivateRegistry, peers_bundle: Path, keypair: KeyPair, slept: list[float], tmp_path: Path
) -> None:
    manifests = _check_push(_push(peers_bundle, keypair[1], registry.host, "cut"), registry.host)
    reference, manifest = next((k, v) for k, v in manifests.items() if "peer-a" in k)
    largest = max(manifest["layers"], key=lambda d: d["size"])
    proxy.cut_body(largest["digest"], after=1 << 20)
    _check_pull({reference: manifest}, proxy.host, keypair[0], tmp_path)
    gets = proxy.requests_to("GET", largest["digest"])
    assert [g.header("Range") for g in gets] == [None, f"bytes={1 << 20}-"] and gets[1].status == 206


def test_published_bundle_pull_cut_midway_completes_in_the_same_run(
    proxy: RegistryProxy, registry: PrivateRegistry, peers_bundle: Path, keypair: KeyPair, slept: list[float], tmp_path: Path
) -> None:
    publish(peers_bundle, f"oci://{registry.host}/bundles/peers:1")
    part = max(json.loads((peers_bundle / "manifest.json").read_text())["parts"], key=lambda p: int(p["size"]))
    proxy.cut_body(part["sha256"], after=part["size"] // 2)
    pull(f"oci://{proxy.host}/bundles/peers:1", tmp_path / "out")
    for name in ("manifest.json", part["path"]):
        assert (tmp_path / "out" / name).read_bytes() == (peers_bundle / name).read_bytes()
    assert [g.header("Range") for g in proxy.requests_to("GET", part["sha256"])][1:] == [f"bytes={part['size'] // 2}-"]


# --- protocol: chunked uploads, redirects, mounts ---------------------------------------------


def test_registry_refusing_chunked_uploads_takes_each_blob_in_one_put(
    proxy: RegistryProxy, registry: PrivateRegistry, peers_bundle: Path, keypair: KeyPair, slept: list[float], tmp_path: Path
) -> None:
    proxy.answer(405, "PATCH", times=None)
    manifests = _check_push(_push(peers_bundle, keypair[1], proxy.host, "nochunks"), registry.host)
    _check_pull(manifests, proxy.host, keypair[0], tmp_path)
    patches, puts = proxy.requests_to("PATCH"), proxy.requests_to("PUT", "digest=")
    assert patches and all(p.status == 405 for p in patches)
    assert len(puts) == len(patches) and all(p.status == 201 and int(p.header("Content-Length") or 0) > 0 for p in puts)
    assert len(proxy.requests_to("DELETE", "/blobs/uploads/")) == len(patches)  # each refused upload deleted
    assert _uploads_left(registry, "nochunks") == []
    assert slept == []  # a protocol, not a failure: nothing waited


def test_blobs_redirected_to_storage_are_fetched_without_credentials(
    token_registry: tuple[PrivateRegistry, TokenServer],
    peers_bundle: Path,
    keypair: KeyPair,
    login: None,
    slept: list[float],
    tmp_path: Path,
) -> None:
    registry, _ = token_registry
    manifests = _check_push(_push(peers_bundle, keypair[1], registry.host, "redirected"), registry.host, creds=True)
    with RegistryProxy(registry.host) as proxy:
        proxy.redirect_blobs = True
        _check_pull(manifests, proxy.host, keypair[0], tmp_path)
        fetched = proxy.storage_seen
    assert fetched and all(s.status == 200 for s in fetched)
    assert not any(s.header("Authorization") for s in fetched)  # the registry's token stays with the registry


def test_mount_on_a_token_registry_asks_pull_on_the_source_and_is_taken(
    token_registry: tuple[PrivateRegistry, TokenServer], peers_bundle: Path, keypair: KeyPair, login: None, slept: list[float]
) -> None:
    registry, tokens = token_registry
    _check_push(_push(peers_bundle, keypair[1], registry.host, "mounted"), registry.host, creds=True)
    mounts = [line for line in registry.log.read_text().splitlines() if '"POST /v2/mounted/' in line and "mount=" in line]
    assert mounts and all('" 201 ' in line for line in mounts), mounts
    scopes = [set(issued.split(",repository:")) for issued in tokens.issued]
    assert any(any(s.endswith("mounted/airgap-test/peer-a:pull") for s in asked) and len(asked) == 2 for asked in scopes), (
        tokens.issued
    )


@pytest.mark.parametrize("status", [401, 403, 405])
def test_mount_refused_falls_back_to_an_upload(
    token_registry: tuple[PrivateRegistry, TokenServer],
    peers_bundle: Path,
    keypair: KeyPair,
    login: None,
    slept: list[float],
    status: int,
) -> None:
    registry, _ = token_registry
    prefix = f"refused{status}"
    with RegistryProxy(registry.host) as proxy:
        proxy.answer(status, "POST", "mount=", times=None)
        _check_push(_push(peers_bundle, keypair[1], proxy.host, prefix), registry.host, creds=True)
        assert proxy.requests_to("POST", "mount=")
    assert _uploads_left(registry, prefix) == []


# --- digests the registry names --------------------------------------------------------------


def test_manifest_named_by_another_digest_is_refused_naming_it(
    cli: Cli, proxy: RegistryProxy, registry: PrivateRegistry, peers_bundle: Path, keypair: KeyPair, tmp_path: Path
) -> None:
    manifests = _check_push(_push(peers_bundle, keypair[1], registry.host, "renamed"), registry.host)
    other = "sha256:" + "1" * 64
    proxy.set_header("/manifests/", "Docker-Content-Digest", other)
    reference = next(iter(manifests))
    r = cli("pack", f"oci://{proxy.host}/{reference}", "-o", str(tmp_path / "b"), "--key", str(keypair[0]))
    assert r.code == 4, r.err
    assert other in r.err and "Docker-Content-Digest" in r.err
    assert f"hint: the registry {proxy.host}" in r.err and "copy the bundle" not in r.err
    assert not (tmp_path / "b" / "manifest.json").exists()
