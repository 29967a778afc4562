"""pack from oci://, install --to registry:// and publish/pull against the in-memory registry: the real client
and the real command code, with faults a real registry is hard to make (damaged blobs, cut or endless bodies,
errors mid-upload, token challenges).  No Docker, no registry process, no socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from airgap._internal.clients.distribution import MANIFEST_LIMIT, USER_ENV
from airgap.errors import ExitCode, IntegrityError, RegistryError
from airgap.install import InstallOptions, InstallResult, install
from airgap.pack import PackOptions, PackResult, pack, parse_source
from airgap.publish import publish, pull
from airgap.trust import keys
from tests.helpers.memregistry import HOST, STORAGE, TOKEN_REALM, MemoryRegistry, digest_of, tar_layer
from tests.helpers.samples import sample_image

LOGIN = ("field-engineer", "correct horse battery staple")


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    private, public, _ = keys.generate(tmp_path_factory.mktemp("memkeys") / "signer", None)
    return Keys(private, public)


@pytest.fixture(scope="module")
def two_repo_bundle(tmp_path_factory: pytest.TempPathFactory, signer: Keys) -> Path:
    """Two small sample images in two repositories, sharing their base layer, packed from docker-archives."""
    d = tmp_path_factory.mktemp("mem-bundle")
    a = sample_image.build(d / "a.tar", tag="airgap-test/mem-a:1.0", model_size=1 << 18, app_size=1 << 16, seed="mem-a")
    b = sample_image.build(d / "b.tar", tag="airgap-test/mem-b:1.0", model_size=1 << 18, app_size=1 << 16, seed="mem-b")
    assert set(a.layers) & set(b.layers)  # the base layer
    sources = (parse_source(f"docker-archive:{a.path}"), parse_source(f"docker-archive:{b.path}"))
    pack(PackOptions(sources, d / "bundle", signer.private, part_size=1 << 20))
    return d / "bundle"


@pytest.fixture
def no_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.delenv(USER_ENV, raising=False)


@pytest.fixture
def login(monkeypatch: pytest.MonkeyPatch, no_login: None) -> None:
    monkeypatch.setenv("AIRGAP_REGISTRY_USER", LOGIN[0])
    monkeypatch.setenv("AIRGAP_REGISTRY_PASSWORD", LOGIN[1])


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, no_login: None) -> MemoryRegistry:
    registry = MemoryRegistry()
    registry.install(monkeypatch)
    return registry


LAYERS = [tar_layer("etc/base", b"base " * 1000), tar_layer("app/main.py", bytes(range(256)) * 2000)]


def _pack_from(registry: MemoryRegistry, ref: str, out: Path, signer: Keys, platform: str | None = None) -> PackResult:
    return pack(PackOptions((parse_source(f"oci://{registry.host}/{ref}"),), out, signer.private, platform=platform))


def _install(bundle: Path, signer: Keys, target: str, chunk: int = 1 << 16) -> InstallResult:
    options = InstallOptions(bundle, (keys.load_public(signer.public),), target=target, chunk_size=chunk)
    return install(options)


def _manifest(registry: MemoryRegistry, repo: str, reference: str) -> bytes:
    found = registry.manifest(repo, reference)
    assert found is not None, f"the registry holds no manifest {repo}:{reference}"
    return found[0]


def _pushed_blobs(registry: MemoryRegistry, repo: str, tag: str) -> Iterator[tuple[str, int]]:
    body = json.loads(_manifest(registry, repo, tag))
    for desc in (body["config"], *body["layers"]):
        yield desc["digest"], desc["size"]


# --- pack from oci:// -----------------------------------------------------------------------


def test_image_pulled_from_a_registry_is_packed_with_its_digests(fake: MemoryRegistry, signer: Keys, tmp_path: Path) -> None:
    manifest = fake.put_image("team/app", "1", LAYERS)
    result = _pack_from(fake, "team/app:1", tmp_path / "b", signer)
    (image,) = result.manifest.images
    assert [layer.digest for layer in image.layers] == [digest_of(layer) for layer in LAYERS]
    assert image.ref_names == (f"{HOST}/team/app:1",)
    assert image.config.digest in fake.blobs
    assert fake.seen("GET", "/manifests/1") and not fake.seen("PUT")
    assert (tmp_path / "b" / "manifest.json").exists()
    assert manifest == digest_of(_manifest(fake, "team/app", "1"))


def test_index_yields_only_the_platform_asked_for(fake: MemoryRegistry, signer: Keys, tmp_path: Path) -> None:
    amd = fake.put_image("team/app", None, LAYERS[:1], architecture="amd64")
    arm = fake.put_image("team/app", None, [tar_layer("etc/arm", b"arm64 only")], architecture="arm64")
    fake.put_index("team/app", "multi", [(amd, "linux", "amd64"), (arm, "linux", "arm64")])
    result = _pack_from(fake, "team/app:multi", tmp_path / "b", signer, platform="linux/arm64")
    assert [str(i.platform) for i in result.manifest.images] == ["linux/arm64"]
    assert not fake.seen("GET", digest_of(LAYERS[0]))  # the other platform's layer was never downloaded


@pytest.mark.parametrize("blob", ["config", "layer"])
def test_blob_whose_bytes_do_not_match_its_digest_is_refused(
    fake: MemoryRegistry, signer: Keys, tmp_path: Path, blob: str
) -> None:
    fake.put_image("team/app", "1", LAYERS)
    body = json.loads(_manifest(fake, "team/app", "1"))
    digest = body["config"]["digest"] if blob == "config" else body["layers"][1]["digest"]
    damaged = bytearray(fake.blobs[digest])
    damaged[len(damaged) // 2] ^= 1
    fake.corrupt_blob(digest, bytes(damaged))
    with pytest.raises(IntegrityError, match=digest[:19]) as caught:
        _pack_from(fake, "team/app:1", tmp_path / "b", signer)
    assert caught.value.exit_code == ExitCode.INTEGRITY
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_download_cut_off_midway_resumes_with_range(fake: MemoryRegistry, signer: Keys, tmp_path: Path) -> None:
    fake.put_image("team/app", "1", LAYERS)
    fake.cut_body(digest_of(LAYERS[1]), after=100_000, times=1)
    result = _pack_from(fake, "team/app:1", tmp_path / "b", signer)
    assert [layer.digest for layer in result.manifest.images[0].layers] == [digest_of(layer) for layer in LAYERS]
    ranges = [r.headers.get("Range") for r in fake.seen("GET", digest_of(LAYERS[1]))]
    assert ranges[0] is None and len(ranges) == 2
    assert ranges[1] is not None and 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= 100_000
    assert len(fake.slept) == 1


def test_stalled_download_that_never_progresses_gives_up_naming_the_host(
    fake: MemoryRegistry, signer: Keys, tmp_path: Path
) -> None:
    fake.put_image("team/app", "1", LAYERS)
    fake.cut_body(digest_of(LAYERS[1]), after=0, error=TimeoutError)
    with pytest.raises(RegistryError, match=f"from registry {HOST} was cut off .*tried 5 times") as caught:
        _pack_from(fake, "team/app:1", tmp_path / "b", signer)
    assert caught.value.exit_code == ExitCode.ENVIRONMENT
    assert "run the same command again" in (caught.value.hint or "")
    assert len(fake.seen("GET", digest_of(LAYERS[1]))) == 5 and len(fake.slept) == 4
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_endless_manifest_is_refused_at_the_size_limit(fake: MemoryRegistry, signer: Keys, tmp_path: Path) -> None:
    fake.put_image("team/app", "1", LAYERS)
    fake.oversize_body("/manifests/1", extra=MANIFEST_LIMIT)
    with pytest.raises(RegistryError, match=f"larger than {MANIFEST_LIMIT} bytes"):
        _pack_from(fake, "team/app:1", tmp_path / "b", signer)


def test_layer_longer_than_its_descriptor_is_refused(fake: MemoryRegistry, signer: Keys, tmp_path: Path) -> None:
    fake.put_image("team/app", "1", LAYERS)
    fake.oversize_body(digest_of(LAYERS[1]), extra=10)
    with pytest.raises(IntegrityError, match="longer than the manifest says"):
        _pack_from(fake, "team/app:1", tmp_path / "b", signer)


# --- install --to registry:// ---------------------------------------------------------------


def test_pushed_images_arrive_with_the_digests_the_bundle_signed(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path
) -> None:
    result = _install(two_repo_bundle, signer, f"registry://{HOST}/site")
    assert {i.location for i in result.images} == {f"{HOST}/site/airgap-test/mem-a:1.0", f"{HOST}/site/airgap-test/mem-b:1.0"}
    for image in result.images:
        repo, _, tag = image.location.removeprefix(f"{HOST}/").rpartition(":")
        stored = dict(_pushed_blobs(fake, repo, tag))
        assert next(iter(stored)) == image.image_id  # the config: the image ID did not change
        for digest, size in stored.items():
            assert digest in fake.repo(repo).blobs and digest_of(fake.blobs[digest]) == digest and len(fake.blobs[digest]) == size
        assert image.manifest_digest == digest_of(_manifest(fake, repo, tag))
    assert len(fake.seen("PATCH")) > len(fake.seen("PUT", "/blobs/uploads/"))  # large layers went up in several chunks


def test_second_push_sends_no_blob_the_registry_already_has(fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path) -> None:
    _install(two_repo_bundle, signer, f"registry://{HOST}/site")
    before = len(fake.seen("PATCH"))
    again = _install(two_repo_bundle, signer, f"registry://{HOST}/site")
    assert len(fake.seen("PATCH")) == before
    assert all(i.blobs_sent == 0 for i in again.images)


def test_layer_two_repositories_share_is_mounted_not_sent_twice(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path
) -> None:
    _install(two_repo_bundle, signer, f"registry://{HOST}/site")
    mounts = [r for r in fake.seen("POST", "mount=") if r.query["from"] == "site/airgap-test/mem-a"]
    assert len(mounts) == 1  # the shared base layer
    shared = mounts[0].query["mount"]
    assert shared in fake.repo("site/airgap-test/mem-b").blobs
    uploads = [r for r in fake.seen("PUT", "/blobs/uploads/") if r.query.get("digest") == shared]
    assert len(uploads) == 1  # sent once, to the first repository


def test_registry_unavailable_mid_upload_gives_up_deletes_the_upload_and_no_tag_moves(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path
) -> None:
    fake.fail(503, method="PATCH", nth=3, times=None)
    with pytest.raises(RegistryError, match=r"answered 503 to uploading sha256:.*\(tried 5 times") as caught:
        _install(two_repo_bundle, signer, f"registry://{HOST}/site")
    assert caught.value.exit_code == ExitCode.ENVIRONMENT
    assert "docker login" not in (caught.value.hint or "") and "overloaded" in (caught.value.hint or "")
    assert not fake.seen("PUT", "/manifests/")  # no manifest names blobs that never arrived
    assert fake.open_uploads == []  # the upload given up was deleted


def test_connection_dropping_every_upload_gives_up_naming_the_host(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path
) -> None:
    fake.fail(None, method="PATCH", nth=2, times=None)
    with pytest.raises(RegistryError, match=rf"registry {HOST} did not answer uploading sha256:.*\(tried 5 times"):
        _install(two_repo_bundle, signer, f"registry://{HOST}/site")
    assert fake.open_uploads == []


def test_manifest_stored_under_another_digest_is_an_integrity_error(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path
) -> None:
    fake.answer_digest = "sha256:" + "0" * 64
    with pytest.raises(IntegrityError, match=f"stored manifest .* as {fake.answer_digest}"):
        _install(two_repo_bundle, signer, f"registry://{HOST}/site")


# --- authentication ------------------------------------------------------------------------


def test_token_challenge_is_answered_and_credentials_never_reach_blob_storage(
    monkeypatch: pytest.MonkeyPatch, login: None, signer: Keys, two_repo_bundle: Path, tmp_path: Path
) -> None:
    registry = MemoryRegistry(auth="bearer", login=LOGIN, storage=True)
    registry.install(monkeypatch)
    registry.put_image("team/app", "1", LAYERS)
    _pack_from(registry, "team/app:1", tmp_path / "b", signer)  # downloads redirected to storage
    _install(tmp_path / "b", signer, f"registry://{HOST}/site")  # uploads go on at storage
    assert "repository:team/app:pull" in registry.scopes_asked
    assert "repository:site/team/app:pull,push" in registry.scopes_asked
    to_token_service = [r for r in registry.requests if r.url.startswith(TOKEN_REALM)]
    assert to_token_service and all(r.headers["Authorization"].startswith("Basic ") for r in to_token_service)
    to_storage = [r for r in registry.requests if r.url.startswith(STORAGE)]
    assert {r.method for r in to_storage} == {"GET", "PATCH", "PUT"}
    assert not any("Authorization" in r.headers for r in to_storage)
    assert not any(r.headers.get("Authorization", "").startswith("Basic ") for r in registry.requests if r.netloc == HOST)


def test_wrong_password_is_refused_with_a_login_hint(
    monkeypatch: pytest.MonkeyPatch, login: None, signer: Keys, tmp_path: Path
) -> None:
    registry = MemoryRegistry(auth="bearer", login=(LOGIN[0], "another password"))
    registry.install(monkeypatch)
    registry.put_image("team/app", "1", LAYERS)
    with pytest.raises(RegistryError, match="refused the credentials") as caught:
        _pack_from(registry, "team/app:1", tmp_path / "b", signer)
    assert "docker login" in (caught.value.hint or "")


def test_layer_two_repositories_share_is_mounted_on_a_token_registry(
    monkeypatch: pytest.MonkeyPatch, login: None, signer: Keys, two_repo_bundle: Path
) -> None:
    registry = MemoryRegistry(auth="bearer", login=LOGIN)
    registry.install(monkeypatch)
    _install(two_repo_bundle, signer, f"registry://{HOST}/site")
    (mount,) = registry.seen("POST", "mount=")
    assert mount.query["from"] == "site/airgap-test/mem-a"
    assert mount.query["mount"] in registry.repo("site/airgap-test/mem-b").blobs
    # one token for both: push on the target, pull on the source, each its own scope parameter
    asked = [r for r in registry.requests if r.url.startswith(TOKEN_REALM) and "mem-a%3Apull&" in r.url + "&"]
    assert any(
        r.url.count("scope=") == 2 and "scope=repository%3Asite%2Fairgap-test%2Fmem-b%3Apull%2Cpush" in r.url for r in asked
    ), [r.url for r in asked]
    uploads = [r for r in registry.seen("PUT", "/blobs/uploads/") if r.query.get("digest") == mount.query["mount"]]
    assert len(uploads) == 1  # the shared layer went up once


# --- publish and pull -----------------------------------------------------------------------


def test_pull_cut_off_by_the_network_completes_on_the_next_run(
    fake: MemoryRegistry, two_repo_bundle: Path, tmp_path: Path
) -> None:
    published = publish(two_repo_bundle, f"oci://{HOST}/bundles/mem:1")
    part = max(json.loads((two_repo_bundle / "manifest.json").read_text())["parts"], key=lambda p: int(p["size"]))
    half = part["size"] // 2
    # every answer is cut at half the part and Range is ignored: the download gets no farther, and gives up
    fake.cut_body(part["sha256"], after=half)
    fake.ranges = False
    with pytest.raises(RegistryError, match="cut off") as caught:
        pull(f"oci://{HOST}/bundles/mem:1", tmp_path / "out")
    assert "run the same command again" in (caught.value.hint or "")
    assert not (tmp_path / "out" / "manifest.json").exists()
    fake.clear_faults()
    fake.ranges = True
    result = pull(f"oci://{HOST}/bundles/mem:1", tmp_path / "out")
    assert any(r.headers.get("Range") == f"bytes={half}-" for r in fake.seen("GET", part["sha256"]))
    assert result.manifest_digest == published.manifest_digest
    for name in ("manifest.json", part["path"]):
        assert (tmp_path / "out" / name).read_bytes() == (two_repo_bundle / name).read_bytes()


def test_download_resumes_at_the_offset_asked_for_or_starts_over(fake: MemoryRegistry) -> None:
    data = bytes(range(256)) * 100
    digest = fake.put_blob("team/app", data)
    with fake.client() as client:
        res, start = client.open_blob("team/app", digest, offset=1000)
        with res:
            assert (res.status_code, start, res.content) == (206, 1000, data[1000:])
        fake.ranges = False  # a registry that ignores Range: the caller must start over
        res, start = client.open_blob("team/app", digest, offset=1000)
        with res:
            assert (res.status_code, start, res.content) == (200, 0, data)
    assert [r.headers.get("Range") for r in fake.seen("GET", digest)] == ["bytes=1000-", "bytes=1000-"]
