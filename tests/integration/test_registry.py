"""Registries against real peers: Debian's distribution registry on 127.0.0.1 (plain and with basic
auth), a second private Docker engine pulling what airgap pushed, skopeo and oras-py cross-checking."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import docker
import pytest

from airgap._internal.clients import distribution
from airgap._internal.clients.distribution import Registry
from tests.helpers.bundles import two_platform_pack
from tests.helpers.registries import REGISTRY_PASSWORD, REGISTRY_USER, PrivateRegistry
from tests.helpers.samples import sample_image

pytestmark = [pytest.mark.docker, pytest.mark.tools]


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def _pulled_by(engine_host: str, repository: str, tag: str) -> str:
    """The image ID another Docker engine gets when it pulls ``repository:tag``."""
    other = docker.DockerClient(base_url=engine_host, timeout=300)
    try:
        return str(other.images.pull(repository, tag=tag).id)
    finally:
        other.close()


def _skopeo(*args: str) -> str:
    if not shutil.which("skopeo"):
        pytest.fail("skopeo is not installed (.ci/run installs it)")
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- install --to registry:// ---------------------------------------------------------------


def test_pushed_image_pulled_by_another_docker_engine_has_the_same_image_id(
    cli, bundle: Path, keypair, samples, registry: PrivateRegistry, second_engine: str
) -> None:
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"registry://{registry.host}/site", "--json")
    assert r.code == 0, r.err
    pushed = json.loads(r.out)["images"][0]
    assert pushed["location"] == f"{registry.host}/site/airgap-test/agent:1.0"
    assert pushed["manifest_digest"].startswith("sha256:")
    inspected = json.loads(_skopeo("inspect", "--tls-verify=false", f"docker://{pushed['location']}"))
    assert inspected["Digest"] == pushed["manifest_digest"]

    assert _pulled_by(second_engine, f"{registry.host}/site/airgap-test/agent", "1.0") == samples["docker"].image_id


def test_second_push_sends_no_blob_the_registry_already_has(cli, bundle: Path, keypair, registry: PrivateRegistry) -> None:
    target = f"registry://{registry.host}/again"
    blobs = len(json.loads((bundle / "manifest.json").read_text())["blobs"])
    first = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", target, "--json")
    assert first.code == 0, first.err
    image = json.loads(first.out)["images"][0]
    assert image["blobs_sent"] + image["blobs_present"] == blobs
    uploads_before = registry.requests_seen("POST", "/v2/again/")
    second = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", target, "--json")
    assert second.code == 0, second.err
    image = json.loads(second.out)["images"][0]
    assert (image["blobs_sent"], image["blobs_present"]) == (0, blobs)
    assert registry.requests_seen("POST", "/v2/again/") == uploads_before
    assert json.loads(second.out)["bytes_streamed"] == 0 or json.loads(second.out)["parts_hashed"] == 0


def test_registry_tag_naming_another_image_is_not_moved(cli, samples, keypair, tmp_path: Path, registry: PrivateRegistry) -> None:
    one = tmp_path / "one"
    two = tmp_path / "two"
    other_sample = sample_image.build(
        tmp_path / "x.tar", tag="airgap-test/agent:1.0", model_size=1 << 20, app_size=1 << 18, seed="x"
    )
    for out, archive, seq in ((one, samples["docker"].path, "1"), (two, other_sample.path, "2")):
        assert cli("pack", f"docker-archive:{archive}", "-o", str(out), "--key", str(keypair[0]), "--sequence", seq).code == 0
    target = f"registry://{registry.host}/tags"
    assert cli("install", str(one), "--trust", str(keypair[1]), "--to", target).code == 0
    with Registry(registry.host) as reg:
        before = reg.manifest_digest("tags/airgap-test/agent", "1.0")
    r = cli("install", str(two), "--trust", str(keypair[1]), "--to", target)
    assert r.code == 7, r.err
    assert "tags/airgap-test/agent:1.0 already names manifest" in r.err and "--replace" in r.err
    with Registry(registry.host) as reg:
        assert reg.manifest_digest("tags/airgap-test/agent", "1.0") == before
    assert cli("install", str(two), "--trust", str(keypair[1]), "--to", target, "--replace").code == 0
    with Registry(registry.host) as reg:
        assert reg.manifest_digest("tags/airgap-test/agent", "1.0") != before


def test_flipped_byte_in_a_part_never_reaches_the_registry(cli, bundle: Path, keypair, registry: PrivateRegistry) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    biggest = max(manifest["parts"], key=lambda p: p["size"])
    _flip_byte(bundle / biggest["path"], biggest["size"] // 2)
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"registry://{registry.host}/tampered")
    assert r.code == 4, r.err
    assert biggest["path"] in r.err
    with Registry(registry.host) as reg:
        assert reg.manifest_digest("tampered/airgap-test/agent", "1.0") is None
        assert not reg.has_blob("tampered/airgap-test/agent", biggest["blob"])


def test_large_layer_goes_up_in_chunks(cli, bundle: Path, keypair, registry: PrivateRegistry) -> None:
    r = cli(
        "install",
        str(bundle),
        "--trust",
        str(keypair[1]),
        "--to",
        f"registry://{registry.host}/chunked",
        "--chunk-size",
        "512KiB",
    )
    assert r.code == 0, r.err
    model = max(json.loads((bundle / "manifest.json").read_text())["blobs"], key=lambda b: b["size"])
    assert model["size"] > 4 * (512 << 10)
    # one PATCH per 512 KiB of every blob uploaded
    assert registry.requests_seen("PATCH", "/v2/chunked/") >= model["size"] // (512 << 10)


def test_two_platforms_under_one_tag_become_an_index(
    cli, keypair, tmp_path: Path, registry: PrivateRegistry, second_engine: str
) -> None:
    out, amd, _arm = two_platform_pack(cli, keypair, tmp_path, "airgap-test/multi:1.0")
    assert cli("install", str(out), "--trust", str(keypair[1]), "--to", f"registry://{registry.host}").code == 0
    raw = json.loads(_skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/airgap-test/multi:1.0"))
    assert sorted(m["platform"]["architecture"] for m in raw["manifests"]) == ["amd64", "arm64"]
    assert _pulled_by(second_engine, f"{registry.host}/airgap-test/multi", "1.0") == amd.image_id


# --- basic auth -----------------------------------------------------------------------------


def test_registry_login_from_docker_config_never_from_the_command_line(
    cli, bundle: Path, keypair, auth_registry: PrivateRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRGAP_REGISTRY_USER", raising=False)
    monkeypatch.delenv("AIRGAP_REGISTRY_PASSWORD", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty"))
    target = f"registry://{auth_registry.host}/secure"
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", target)
    assert r.code == 6, r.err
    assert f"docker login {auth_registry.host}" in r.err

    config = tmp_path / "docker"
    config.mkdir()
    token = base64.b64encode(f"{REGISTRY_USER}:wrong".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", target)
    assert r.code == 6 and "refused" in r.err, r.err

    token = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", target, "--json")
    assert r.code == 0, r.err
    assert REGISTRY_PASSWORD not in r.out + r.err

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty"))
    monkeypatch.setenv("AIRGAP_REGISTRY_USER", REGISTRY_USER)
    monkeypatch.setenv("AIRGAP_REGISTRY_PASSWORD", REGISTRY_PASSWORD)
    r = cli("publish", str(bundle), f"oci://{auth_registry.host}/bundles/agent:1")
    assert r.code == 0, r.err
    out = tmp_path / "pulled"
    assert cli("pull", f"oci://{auth_registry.host}/bundles/agent:1", "-o", str(out)).code == 0
    assert cli("verify", str(out), "--trust", str(keypair[1])).code == 0


# --- publish / pull -------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_published_bundle_pulls_back_byte_identical_and_verifies(
    cli, bundle: Path, keypair, registry: PrivateRegistry, tmp_path: Path
) -> None:
    ref = f"oci://{registry.host}/bundles/roundtrip:1"
    r = cli("publish", str(bundle), ref, "--chunk-size", "256KiB", "--json")
    assert r.code == 0, r.err
    published = json.loads(r.out)
    manifest = json.loads((bundle / "manifest.json").read_text())
    parts = manifest["parts"]
    assert published["files"] == len(parts) + len(manifest["files"]) + 2  # parts, installer, manifest.json, one signature
    assert registry.requests_seen("PATCH", "/v2/bundles/roundtrip/") > len(parts)  # several chunks per part
    out = tmp_path / "pulled"
    r = cli("pull", ref, "-o", str(out), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["manifest_digest"] == published["manifest_digest"]
    assert _tree(out) == _tree(bundle)
    assert cli("verify", str(out), "--trust", str(keypair[1])).code == 0


def test_interrupted_pull_resumes_where_it_stopped(cli, bundle: Path, keypair, registry: PrivateRegistry, tmp_path: Path) -> None:
    ref = f"oci://{registry.host}/bundles/resume:1"
    assert cli("publish", str(bundle), ref).code == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    parts = manifest["parts"]
    total = sum(p["size"] for p in parts + manifest["files"]) + (bundle / "manifest.json").stat().st_size + 64
    # what a pull killed half way leaves: some parts in place, one half downloaded in the staging area
    out = tmp_path / "pulled"
    (out / "parts").mkdir(parents=True)
    shutil.copy(bundle / parts[0]["path"], out / parts[0]["path"])
    half = parts[1]["size"] // 2
    (out / ".airgap-pull").mkdir()
    (out / ".airgap-pull" / parts[1]["sha256"]).write_bytes((bundle / parts[1]["path"]).read_bytes()[:half])
    r = cli("pull", ref, "-o", str(out), "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["bytes_total"] == total
    assert result["bytes_transferred"] == total - parts[0]["size"] - half
    assert _tree(out) == _tree(bundle)
    assert not (out / ".airgap-pull").exists()


def test_pull_of_a_blob_damaged_in_the_registry_is_refused(
    cli, bundle: Path, keypair, tmp_path: Path, registry: PrivateRegistry
) -> None:
    ref = f"oci://{registry.host}/bundles/damaged:1"
    assert cli("publish", str(bundle), ref).code == 0
    part = json.loads((bundle / "manifest.json").read_text())["parts"][0]
    data = registry.log.parent / "storage/docker/registry/v2/blobs/sha256" / part["sha256"][:2] / part["sha256"] / "data"
    _flip_byte(data, 10)
    try:
        out = tmp_path / "pulled"
        r = cli("pull", ref, "-o", str(out))
        assert r.code == 4, r.err
        assert part["path"] in r.err
        assert not (out / "manifest.json").exists()
    finally:
        _flip_byte(data, 10)


def test_artifact_with_a_path_outside_the_bundle_is_refused(cli, registry: PrivateRegistry, tmp_path: Path) -> None:
    evil = b"#!/bin/sh\necho owned\n"
    digest = "sha256:" + hashlib.sha256(evil).hexdigest()
    with Registry(registry.host) as reg:
        reg.upload_blob("bundles/evil", digest, len(evil), iter([evil]))
        reg.upload_blob("bundles/evil", "sha256:" + hashlib.sha256(b"{}").hexdigest(), 2, iter([b"{}"]))
        body = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.airgap.bundle.v1",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "x/y",
                    "digest": digest,
                    "size": len(evil),
                    "annotations": {"org.opencontainers.image.title": "../../evil.sh"},
                }
            ],
        }
        reg.put_manifest("bundles/evil", "1", json.dumps(body).encode(), "application/vnd.oci.image.manifest.v1+json")
    out = tmp_path / "deep" / "pulled"
    r = cli("pull", f"oci://{registry.host}/bundles/evil:1", "-o", str(out))
    assert r.code == 3, r.err
    assert "../../evil.sh" in r.err
    assert not (tmp_path / "evil.sh").exists() and not (tmp_path / "deep" / "evil.sh").exists()


def test_oras_py_pulls_a_published_bundle(cli, bundle: Path, registry: PrivateRegistry, tmp_path: Path) -> None:
    import oras.client

    assert cli("publish", str(bundle), f"oci://{registry.host}/bundles/oras:1").code == 0
    out = tmp_path / "oras"
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    client.pull(target=f"{registry.host}/bundles/oras:1", outdir=str(out))
    assert _tree(out) == _tree(bundle)


def test_publish_does_not_move_a_tag_silently(
    cli, bundle: Path, samples, keypair, registry: PrivateRegistry, tmp_path: Path
) -> None:
    ref = f"oci://{registry.host}/bundles/fixed:1"
    assert cli("publish", str(bundle), ref).code == 0
    other = tmp_path / "other"
    assert cli("pack", f"docker-archive:{samples['docker2'].path}", "-o", str(other), "--key", str(keypair[0])).code == 0
    r = cli("publish", str(other), ref)
    assert r.code == 7, r.err
    assert cli("publish", str(other), ref, "--replace").code == 0


# --- archive sinks --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive"])
def test_archive_sinks_are_valid_for_skopeo_and_keep_the_image_id(
    cli, bundle: Path, keypair, samples, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / f"image-{kind}.tar"
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"{kind}:{path}")
    assert r.code == 0, r.err
    config = subprocess.run(["skopeo", "inspect", "--raw", "--config", f"{kind}:{path}"], capture_output=True, check=True).stdout
    assert "sha256:" + hashlib.sha256(config).hexdigest() == samples["docker"].image_id
    # and the archive packs again into the same image
    again = tmp_path / "again"
    r = cli("pack", f"{kind}:{path}", "-o", str(again), "--key", str(keypair[0]), "--json")
    assert r.code == 0, r.err
    packed = json.loads(r.out)["images"][0]
    assert packed["image_id"] == samples["docker"].image_id
    assert packed["ref_names"] == ["airgap-test/agent:1.0"]
    # an existing archive is not overwritten silently
    assert cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"{kind}:{path}").code == 7


def test_docker_archive_sink_loads_into_docker(cli, bundle: Path, keypair, samples, tmp_path: Path, docker_client) -> None:
    path = tmp_path / "image.tar"
    assert cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"docker-archive:{path}").code == 0
    with open(path, "rb") as fh:
        loaded = docker_client.images.load(fh)
    assert [i.id for i in loaded] == [samples["docker"].image_id]


# --- pack from a registry -------------------------------------------------------------------


def test_pack_from_registry_with_gzip_layers_installs_with_the_same_image_id(
    cli, samples, keypair, registry: PrivateRegistry, tmp_path: Path, docker_client
) -> None:
    # skopeo, not airgap, puts the image there: it compresses the layers with gzip on the way
    dest = f"{registry.host}/skopeo/agent:2.0"
    _skopeo("copy", "--dest-tls-verify=false", f"docker-archive:{samples['docker2'].path}", f"docker://{dest}")
    raw = json.loads(_skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{dest}"))
    assert all(layer["mediaType"].endswith("gzip") for layer in raw["layers"])
    out = tmp_path / "from-registry"
    r = cli("pack", f"oci://{dest}", "-o", str(out), "--key", str(keypair[0]), "--json")
    assert r.code == 0, r.err
    packed = json.loads(r.out)["images"][0]
    assert packed["image_id"] == samples["docker2"].image_id
    assert packed["ref_names"] == [dest]
    try:
        r = cli("install", str(out), "--trust", str(keypair[1]), "--json")
        assert r.code == 0, r.err
        assert docker_client.images.get(dest).id == samples["docker2"].image_id
    finally:
        docker_client.images.remove(dest, force=True)


def test_pack_from_registry_chooses_platforms(cli, keypair, tmp_path: Path, registry: PrivateRegistry) -> None:
    both, amd, arm = two_platform_pack(cli, keypair, tmp_path, "airgap-test/plat:1.0")
    assert cli("install", str(both), "--trust", str(keypair[1]), "--to", f"registry://{registry.host}/plat").code == 0
    source = f"oci://{registry.host}/plat/airgap-test/plat:1.0"

    def packed(*extra: str) -> list[tuple[str, str]]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        r = cli("pack", source, "-o", str(out), "--key", str(keypair[0]), "--json", *extra)
        assert r.code == 0, r.err
        return sorted((i["platform"], i["image_id"]) for i in json.loads(r.out)["images"])

    assert packed("--platform", "linux/arm64") == [("linux/arm64", arm.image_id)]
    assert packed("--platform", "all") == [("linux/amd64", amd.image_id), ("linux/arm64", arm.image_id)]
    assert packed("--platform", "linux/amd64,linux/arm64") == packed("--platform", "all")
    r = cli("pack", source, "-o", str(tmp_path / "none"), "--key", str(keypair[0]), "--platform", "linux/s390x")
    assert r.code == 2 and "linux/amd64, linux/arm64" in r.err, r.err


def test_pack_from_registry_refuses_a_damaged_layer(cli, samples, keypair, registry: PrivateRegistry, tmp_path: Path) -> None:
    dest = f"{registry.host}/damaged/agent:1.0"
    _skopeo("copy", "--dest-tls-verify=false", f"docker-archive:{samples['docker'].path}", f"docker://{dest}")
    raw = json.loads(_skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{dest}"))
    biggest = max(raw["layers"], key=lambda layer: layer["size"])["digest"].removeprefix("sha256:")
    data = registry.log.parent / "storage/docker/registry/v2/blobs/sha256" / biggest[:2] / biggest / "data"
    _flip_byte(data, data.stat().st_size // 2)
    try:
        out = tmp_path / "out"
        r = cli("pack", f"oci://{dest}", "-o", str(out), "--key", str(keypair[0]))
        assert r.code == 4, r.err
        assert biggest[:12] in r.err
        assert not (out / "manifest.json").exists()
    finally:
        _flip_byte(data, data.stat().st_size // 2)


def test_pack_from_a_tag_the_registry_does_not_have(cli, keypair, registry: PrivateRegistry, tmp_path: Path) -> None:
    r = cli("pack", f"oci://{registry.host}/nothing/here:1", "-o", str(tmp_path / "o"), "--key", str(keypair[0]))
    assert r.code == 2, r.err
    assert "nothing/here:1 is not in the registry" in r.err


class _CuttingProxy:
    """A loopback HTTP proxy to the registry that cuts the connection after ``cut`` bytes of the first
    blob body it serves, and every later request for that blob at once: a network that drops in the middle
    of a download and stays down for that blob however often the client retries."""

    def __init__(self, upstream: str, cut: int) -> None:
        import http.server
        import threading

        import requests

        proxy = self
        self.cut = cut
        self.cuts = 0
        self.cut_path: str | None = None

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range", "authorization")}
                res = requests.get(f"http://{upstream}{self.path}", headers=headers, stream=True, timeout=60)
                self.send_response(res.status_code)
                for k, v in res.headers.items():
                    if k.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.end_headers()
                limit = None
                if "/blobs/" in self.path and proxy.cuts == 0:
                    limit, proxy.cut_path = proxy.cut, self.path
                elif self.path == proxy.cut_path:
                    limit = 0
                sent = 0
                for chunk in res.raw.stream(65536, decode_content=False):
                    if limit is not None and sent + len(chunk) > limit:
                        self.wfile.write(chunk[: limit - sent])
                        self.wfile.flush()
                        proxy.cuts += 1
                        self.close_connection = True
                        return
                    self.wfile.write(chunk)
                    sent += len(chunk)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_pull_cut_off_by_the_network_resumes_on_the_next_run(
    cli, samples, keypair, registry: PrivateRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the client retries a broken download (bounded); here the blob stays cut for the whole run
    monkeypatch.setattr(distribution, "DEFAULT_RETRY", dataclasses.replace(distribution.DEFAULT_RETRY, sleep=lambda s: None))
    big = sample_image.build(tmp_path / "big.tar", tag="airgap-test/big:1.0", model_size=24 << 20, app_size=1 << 18, seed="cut")
    bundle = tmp_path / "big"
    assert (
        cli("pack", f"docker-archive:{big.path}", "-o", str(bundle), "--key", str(keypair[0]), "--part-size", "16MiB").code == 0
    )
    assert cli("publish", str(bundle), f"oci://{registry.host}/bundles/cut:1").code == 0
    first_blob_cut = 5 << 20
    proxy = _CuttingProxy(registry.host, first_blob_cut)
    out = tmp_path / "pulled"
    try:
        r = cli("pull", f"oci://{proxy.host}/bundles/cut:1", "-o", str(out))
    finally:
        proxy.close()
    assert r.code == 6, r.err
    assert "cut off" in r.err and "run the same" in r.err
    assert not (out / "manifest.json").exists()
    partial = [p for p in (out / ".airgap-pull").iterdir() if p.stat().st_size > 0]
    assert partial and max(p.stat().st_size for p in partial) >= first_blob_cut - (1 << 20)
    r = cli("pull", f"oci://{registry.host}/bundles/cut:1", "-o", str(out), "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["bytes_transferred"] <= result["bytes_total"] - first_blob_cut + (1 << 20)
    assert _tree(out) == _tree(bundle)
    assert cli("verify", str(out), "--trust", str(keypair[1])).code == 0


def test_token_authentication_as_harbor_and_quay_use_it(
    cli, bundle: Path, keypair, token_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import requests

    registry, tokens = token_registry
    challenge = requests.get(f"http://{registry.host}/v2/", timeout=10)
    assert challenge.status_code == 401 and challenge.headers["WWW-Authenticate"].startswith("Bearer realm=")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty"))
    monkeypatch.setenv("AIRGAP_REGISTRY_USER", REGISTRY_USER)
    monkeypatch.setenv("AIRGAP_REGISTRY_PASSWORD", "wrong")
    r = cli("publish", str(bundle), f"oci://{registry.host}/bundles/agent:1")
    assert r.code == 6 and "refused the credentials" in r.err, r.err
    monkeypatch.setenv("AIRGAP_REGISTRY_PASSWORD", REGISTRY_PASSWORD)
    r = cli("publish", str(bundle), f"oci://{registry.host}/bundles/agent:1")
    assert r.code == 0, r.err
    assert "repository:bundles/agent:pull,push" in tokens.issued
    out = tmp_path / "pulled"
    assert cli("pull", f"oci://{registry.host}/bundles/agent:1", "-o", str(out)).code == 0
    assert cli("verify", str(out), "--trust", str(keypair[1])).code == 0
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"registry://{registry.host}/site", "--json")
    assert r.code == 0, r.err
    assert "repository:site/airgap-test/agent:pull,push" in tokens.issued


def test_bearer_token_is_renewed_before_it_expires(token_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from airgap._internal.clients import distribution as registry_module

    registry, tokens = token_registry
    monkeypatch.setenv("AIRGAP_REGISTRY_USER", REGISTRY_USER)
    monkeypatch.setenv("AIRGAP_REGISTRY_PASSWORD", REGISTRY_PASSWORD)
    digest = "sha256:" + "0" * 64
    with Registry(registry.host) as reg:
        assert not reg.has_blob("renew/me", digest)
        issued = len(tokens.issued)
        assert not reg.has_blob("renew/me", digest)
        assert len(tokens.issued) == issued  # still valid: no new token
        later = time.monotonic() + 3600
        monkeypatch.setattr(registry_module.time, "monotonic", lambda: later)
        assert not reg.has_blob("renew/me", digest)
        assert len(tokens.issued) == issued + 1  # renewed before use, not after a failure


def test_delta_from_a_registry_downloads_only_new_layers(cli, keypair, registry: PrivateRegistry, tmp_path: Path) -> None:
    one = sample_image.build(tmp_path / "1.tar", tag="airgap-test/regdelta:1", model_size=4 << 20, app_size=1 << 18, seed="rd1")
    two = sample_image.build(
        tmp_path / "2.tar", tag="airgap-test/regdelta:2", model_size=4 << 20, app_size=1 << 18, seed="rd1", model_mtime=7
    )
    for sample in (one, two):
        _skopeo("copy", "--dest-tls-verify=false", f"docker-archive:{sample.path}", f"docker://{registry.host}/{sample.tag}")
    full = tmp_path / "full-1"
    assert cli("pack", f"oci://{registry.host}/{one.tag}", "-o", str(full), "--key", str(keypair[0])).code == 0
    raw = json.loads(_skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/{two.tag}"))
    shared = {layer["digest"] for layer in raw["layers"]} & {
        b["digest"] for b in json.loads((full / "manifest.json").read_text())["blobs"]
    }
    assert shared  # the base and app layers did not change

    def gets(digest: str) -> int:
        return registry.requests_seen("GET", f"/v2/airgap-test/regdelta/blobs/{digest}")

    before = {layer["digest"]: gets(layer["digest"]) for layer in raw["layers"]}
    delta = tmp_path / "delta-2"
    r = cli("pack", f"oci://{registry.host}/{two.tag}", "-o", str(delta), "--key", str(keypair[0]), "--since", str(full))
    assert r.code == 0, r.err
    for digest, count in before.items():
        assert gets(digest) == count + (0 if digest in shared else 1), digest
    assert not shared & {b["digest"] for b in json.loads((delta / "manifest.json").read_text())["blobs"]}


def test_delta_pushed_to_a_registry_that_has_its_base(
    cli, keypair, registry: PrivateRegistry, tmp_path: Path, second_engine: str
) -> None:
    one = sample_image.build(tmp_path / "1.tar", tag="airgap-test/pushdelta:1", model_size=2 << 20, app_size=1 << 18, seed="pd1")
    two = sample_image.build(
        tmp_path / "2.tar", tag="airgap-test/pushdelta:2", model_size=2 << 20, app_size=1 << 18, seed="pd2", model_seed="pd1"
    )
    full, delta = tmp_path / "full", tmp_path / "delta"
    assert cli("pack", f"docker-archive:{one.path}", "-o", str(full), "--key", str(keypair[0]), "--sequence", "1").code == 0
    r = cli(
        "pack", f"docker-archive:{two.path}", "-o", str(delta), "--key", str(keypair[0]), "--sequence", "2", "--since", str(full)
    )
    assert r.code == 0, r.err
    target = f"registry://{registry.host}/pd"
    # a registry without the base layers: the delta alone cannot complete the image
    r = cli("install", str(delta), "--trust", str(keypair[1]), "--to", f"registry://{registry.host}/empty-pd")
    assert r.code == 2 and "--base" in r.err, r.err
    assert cli("install", str(full), "--trust", str(keypair[1]), "--to", target).code == 0
    r = cli("install", str(delta), "--trust", str(keypair[1]), "--to", target, "--json")
    assert r.code == 0, r.err
    assert _pulled_by(second_engine, f"{registry.host}/pd/airgap-test/pushdelta", "2") == two.image_id


def test_a_layer_two_repositories_share_is_sent_once_and_mounted(
    cli, samples, keypair, registry: PrivateRegistry, tmp_path: Path
) -> None:
    other = sample_image.build(tmp_path / "o.tar", tag="airgap-test/other:1.0", model_size=1 << 18, app_size=1 << 16, seed="mnt")
    shared = set(other.layers) & set(samples["docker"].layers)
    assert shared  # the base layer
    out = tmp_path / "two"
    r = cli(
        "pack",
        f"docker-archive:{samples['docker'].path}",
        f"docker-archive:{other.path}",
        "-o",
        str(out),
        "--key",
        str(keypair[0]),
    )
    assert r.code == 0, r.err
    r = cli("install", str(out), "--trust", str(keypair[1]), "--to", f"registry://{registry.host}/mnt", "--json")
    assert r.code == 0, r.err
    mounts = [line for line in registry.log.read_text().splitlines() if '"POST /v2/mnt/' in line and "mount=" in line]
    assert any(d.replace(":", "%3A") in line and '" 201 ' in line for d in shared for line in mounts), mounts
    images = json.loads(r.out)["images"]
    assert sum(i["blobs_sent"] for i in images) == len(set(samples["docker"].layers) | set(other.layers)) + 2  # + 2 configs
    # the progress a person or a GUI follows counts the shared layer once: it never passes its total and ends there
    r = cli("install", str(out), "--trust", str(keypair[1]), "--to", f"registry://{registry.host}/mnt2", "--progress", "json")
    assert r.code == 0, r.err
    events = [json.loads(line) for line in r.err.splitlines() if line.startswith("{")]
    moving = [e for e in events if "done" in e and e.get("total")]
    assert moving and all(e["done"] <= e["total"] for e in moving), moving[-3:]
    assert moving[-1]["done"] == moving[-1]["total"]
