"""Registries as they fail in the field, imitated by the in-memory registry: throttling and unavailability
(retried with bounded backoff), broken connections (uploads resume where the registry stands, downloads with
Range), refused chunked uploads (one streamed PUT), refused or unauthorized mounts (an upload instead), digests
the registry names wrongly (refused, blaming the registry), and push progress that counts every blob once.
No process, no socket, no real waiting: the client's waits are recorded in ``MemoryRegistry.slept``."""

from __future__ import annotations

import email.utils
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from airgap._internal.clients.distribution import USER_ENV, Registry
from airgap.errors import ExitCode, IntegrityError, RegistryError
from airgap.install import InstallOptions, InstallResult, install
from airgap.pack import PackOptions, PackResult, pack, parse_source
from airgap.trust import keys
from tests.helpers.memregistry import HOST, TOKEN_REALM, MemoryRegistry, Reply, Request, digest_of
from tests.helpers.samples import sample_image

LOGIN = ("field-engineer", "correct horse battery staple")
CHUNK = 1 << 16
A, B = "site/airgap-test/faults-a", "site/airgap-test/faults-b"
BUNDLE_HINT = "copy the bundle again"


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    private, public, _ = keys.generate(tmp_path_factory.mktemp("faultkeys") / "signer", None)
    return Keys(private, public)


@pytest.fixture(scope="module")
def two_repo_bundle(tmp_path_factory: pytest.TempPathFactory, signer: Keys) -> Path:
    """Two small images in two repositories sharing their base layer."""
    d = tmp_path_factory.mktemp("fault-bundle")
    a = sample_image.build(d / "a.tar", tag="airgap-test/faults-a:1.0", model_size=1 << 18, app_size=1 << 16, seed="fa")
    b = sample_image.build(d / "b.tar", tag="airgap-test/faults-b:1.0", model_size=1 << 18, app_size=1 << 16, seed="fb")
    assert set(a.layers) & set(b.layers)
    sources = (parse_source(f"docker-archive:{a.path}"), parse_source(f"docker-archive:{b.path}"))
    pack(PackOptions(sources, d / "bundle", signer.private, part_size=1 << 20))
    return d / "bundle"


@pytest.fixture(scope="module")
def two_platform_bundle(tmp_path_factory: pytest.TempPathFactory, signer: Keys) -> Path:
    d = tmp_path_factory.mktemp("fault-platforms")
    tag = "airgap-test/faults-multi:1.0"
    amd = sample_image.build(d / "amd.tar", tag=tag, model_size=1 << 16, app_size=1 << 14, seed="fm")
    arm = sample_image.build(d / "arm.tar", tag=tag, model_size=1 << 16, app_size=1 << 14, seed="fm", arch="arm64")
    pack(
        PackOptions(
            (parse_source(f"docker-archive:{amd.path}"), parse_source(f"docker-archive:{arm.path}")), d / "b", signer.private
        )
    )
    return d / "b"


@pytest.fixture
def no_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.delenv(USER_ENV, raising=False)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, no_login: None) -> MemoryRegistry:
    registry = MemoryRegistry()
    registry.install(monkeypatch)
    return registry


@pytest.fixture
def token_fake(monkeypatch: pytest.MonkeyPatch, no_login: None) -> MemoryRegistry:
    monkeypatch.setenv("AIRGAP_REGISTRY_USER", LOGIN[0])
    monkeypatch.setenv("AIRGAP_REGISTRY_PASSWORD", LOGIN[1])
    registry = MemoryRegistry(auth="bearer", login=LOGIN)
    registry.install(monkeypatch)
    return registry


class Recorder:
    """A reporter that keeps what a progress bar would show."""

    def __init__(self) -> None:
        self.total = -1
        self.done = 0
        self.highest = 0
        self.finished = False

    def start(self, label: str, total: int) -> None:
        self.total, self.done = total, 0

    def advance(self, n: int) -> None:
        self.done += n
        self.highest = max(self.highest, self.done)

    def finish(self) -> None:
        self.finished = True

    def note(self, message: str) -> None:
        pass


def _install(bundle: Path, signer: Keys, reporter: Recorder | None = None) -> InstallResult:
    options = InstallOptions(bundle, (keys.load_public(signer.public),), target=f"registry://{HOST}/site", chunk_size=CHUNK)
    return install(options, reporter)


def _pack_from(registry: MemoryRegistry, ref: str, out: Path, signer: Keys) -> PackResult:
    return pack(PackOptions((parse_source(f"oci://{registry.host}/{ref}"),), out, signer.private))


def _layers(registry: MemoryRegistry, repo: str, tag: str) -> Iterator[tuple[str, int]]:
    found = registry.manifest(repo, tag)
    assert found is not None, f"no manifest {repo}:{tag}"
    body = json.loads(found[0])
    for desc in (body["config"], *body["layers"]):
        yield desc["digest"], desc["size"]


def _assert_pushed_intact(registry: MemoryRegistry, result: InstallResult) -> None:
    """Both images are in the registry, every blob under its digest, each manifest under the digest reported."""
    for image in result.images:
        repo, _, tag = image.location.removeprefix(f"{HOST}/").rpartition(":")
        found = registry.manifest(repo, tag)
        assert found is not None and digest_of(found[0]) == image.manifest_digest
        for digest, size in _layers(registry, repo, tag):
            assert digest in registry.repo(repo).blobs
            assert digest_of(registry.blobs[digest]) == digest and len(registry.blobs[digest]) == size
    assert {i.location for i in result.images} == {f"{HOST}/{A}:1.0", f"{HOST}/{B}:1.0"}


def _shared(registry: MemoryRegistry) -> str:
    (shared,) = set(dict(_layers(registry, A, "1.0"))) & set(dict(_layers(registry, B, "1.0")))
    return shared


LAYERS = [b"base " * 1000, bytes(range(256)) * 2000]


# --- item 7: push progress counts every blob once --------------------------------------------


@pytest.mark.parametrize(
    "fault", ["none", "pushed-before", "mount-refused", "patch-cut-midway", "chunks-refused", "upload-started-over"]
)
def test_push_progress_never_passes_the_total_and_ends_there(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path, fault: str
) -> None:
    if fault == "pushed-before":
        _install(two_repo_bundle, signer)
    elif fault == "mount-refused":
        fake.refuse_mount = 405  # the shared layer goes up twice, and counts once
    elif fault == "patch-cut-midway":
        fake.fail(None, method="PATCH", nth=4, keep=1000)  # bytes of a chunk are sent twice
    elif fault == "chunks-refused":
        fake.refuse_patch = 405  # every blob's first chunk is read, then the whole blob again
    elif fault == "upload-started-over":
        fake.fail(None, method="PATCH", nth=4)
        fake.fail(404, method="GET", path="/blobs/uploads/")  # the registry cannot say where it stands
    reporter = Recorder()
    result = _install(two_repo_bundle, signer, reporter)
    _assert_pushed_intact(fake, result)
    distinct = dict(_layers(fake, A, "1.0")) | dict(_layers(fake, B, "1.0"))
    assert reporter.total == sum(distinct.values())
    assert reporter.highest <= reporter.total  # never past 100 %
    assert reporter.done == reporter.total and reporter.finished  # and ends at 100 %
    if fault == "mount-refused":
        assert len([r for r in fake.seen("PUT", "digest=") if r.query["digest"] == _shared(fake)]) == 2


# --- item 8: cross-repository mounts ---------------------------------------------------------


@pytest.mark.parametrize("status", [202, 400, 401, 403, 404, 405, 500, 503])
def test_mount_refused_or_unauthorized_falls_back_to_an_upload(
    token_fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path, status: int
) -> None:
    if status == 503:
        token_fake.fail(503, method="POST", path="mount=", times=None)
    else:
        token_fake.refuse_mount = status
    result = _install(two_repo_bundle, signer)
    _assert_pushed_intact(token_fake, result)
    shared = _shared(token_fake)
    assert token_fake.seen("POST", "mount=")  # it was asked
    assert len([r for r in token_fake.seen("PUT", "digest=") if r.query["digest"] == shared]) == 2
    assert token_fake.open_uploads == []  # an upload the registry started instead of mounting is deleted


def test_token_request_asks_the_scopes_the_challenge_names(token_fake: MemoryRegistry) -> None:
    digest = token_fake.put_blob("team/app", b"layer")
    first = True

    def challenge_naming_more(r: Request) -> Reply | None:
        nonlocal first
        if r.method == "HEAD" and first:
            first = False
            scope = "repository:team/app:pull repository:team/base:pull"
            header = f'Bearer realm="{TOKEN_REALM}",service="{HOST}",scope="{scope}"'
            return Reply(401, {"WWW-Authenticate": header})
        return None

    token_fake.hook = challenge_naming_more
    with token_fake.client() as client:
        assert client.has_blob("team/app", digest)
    (asked,) = [r for r in token_fake.requests if r.url.startswith(TOKEN_REALM)]
    assert [v for k, v in _query(asked) if k == "scope"] == ["repository:team/app:pull", "repository:team/base:pull"]


def _query(r: Request) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl, urlsplit

    return parse_qsl(urlsplit(r.url).query)


# --- item 9: registries that refuse chunked uploads ------------------------------------------


@pytest.mark.parametrize("status", [405, 404, 400])
def test_registry_refusing_chunked_uploads_gets_each_blob_in_one_streamed_put(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path, status: int
) -> None:
    fake.refuse_patch = status
    result = _install(two_repo_bundle, signer)
    _assert_pushed_intact(fake, result)
    whole = fake.seen("PUT", "digest=")
    assert len(whole) == sum(i.blobs_sent for i in result.images)
    for r in whole:
        assert r.streamed  # read from the bundle as it was sent, never held whole in memory
        assert digest_of(r.body) == r.query["digest"] and r.headers["Content-Length"] == str(len(r.body))
    assert len(fake.seen("DELETE")) == len(fake.seen("PATCH")) == len(whole)  # each refused upload was deleted
    assert fake.open_uploads == []


def test_upload_refused_for_its_protocol_is_not_blamed_on_credentials(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path
) -> None:
    fake.refuse_patch = 405
    fake.fail(400, method="PUT", path="digest=", times=None, code="BLOB_UPLOAD_UNSUPPORTED")
    with pytest.raises(RegistryError, match=f"registry {HOST} answered 400 to uploading sha256:") as caught:
        _install(two_repo_bundle, signer)
    hint = caught.value.hint or ""
    assert "docker login" not in hint and "credentials" not in hint and "distribution API" in hint
    assert fake.open_uploads == []


# --- item 10: throttling, unavailability, broken connections ---------------------------------


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [("7", 7, 7), (30.0, 25, 31), ("100000", 120, 120), (-60.0, 0, 0), (None, 0.5, 1.0)],
    ids=["seconds", "http-date", "capped", "date-past", "absent"],
)
def test_throttled_request_waits_as_retry_after_says(
    fake: MemoryRegistry, retry_after: str | float | None, low: float, high: float
) -> None:
    if isinstance(retry_after, float):
        retry_after = _http_date(retry_after)
    digest = fake.put_blob("team/app", b"layer")
    fake.fail(429, method="HEAD", headers={"Retry-After": retry_after} if retry_after else {})
    with fake.client() as client:
        assert client.has_blob("team/app", digest)
    (waited,) = fake.slept
    assert low <= waited <= high
    assert len(fake.seen("HEAD")) == 2


@pytest.mark.parametrize("status", [502, 503, 504])
def test_unavailable_registry_is_tried_with_growing_waits_then_named(fake: MemoryRegistry, status: int) -> None:
    fake.put_image("team/app", "1", LAYERS)
    fake.fail(status, method="GET", path="/manifests/", times=None)
    with (
        fake.client() as client,
        pytest.raises(RegistryError, match=rf"registry {HOST} answered {status} to .*tried 5 times") as caught,
    ):
        client.get_manifest("team/app", "1")
    assert "overloaded" in (caught.value.hint or "")
    assert len(fake.seen("GET", "/manifests/")) == 5
    assert len(fake.slept) == 4
    for i, waited in enumerate(fake.slept):  # 1, 2, 4, 8 seconds, each with jitter down to half
        assert 2**i / 2 <= waited <= 2**i


def test_total_wait_is_bounded(fake: MemoryRegistry) -> None:
    fake.put_image("team/app", "1", LAYERS)
    fake.fail(429, method="GET", path="/manifests/", times=None, headers={"Retry-After": "100"})
    with fake.client(budget=250) as client, pytest.raises(RegistryError, match=r"answered 429 .*tried 3 times over 200 s"):
        client.get_manifest("team/app", "1")
    assert fake.slept == [100, 100]


def test_reset_connection_is_tried_again_but_a_refused_one_is_not(fake: MemoryRegistry) -> None:
    fake.put_image("team/app", "1", LAYERS)
    fake.fail(None, method="GET", path="/manifests/", times=2)
    with fake.client() as client:
        assert client.get_manifest("team/app", "1") is not None
    assert len(fake.slept) == 2
    with (
        Registry("nowhere.test", transport=fake, retry=fake.retry_policy()) as elsewhere,
        pytest.raises(RegistryError, match="did not answer") as caught,
    ):
        elsewhere.has_blob("team/app", digest_of(b"x"))
    assert len(fake.slept) == 2  # no wait: the address is wrong, not the network
    assert "check the address nowhere.test" in (caught.value.hint or "")


def _failed_then_next_patch(fake: MemoryRegistry, nth: int) -> tuple[Request, Request]:
    patches = fake.seen("PATCH")
    return patches[nth - 1], patches[nth]


def _start(r: Request) -> int:
    return int(r.headers["Content-Range"].split("-")[0])


def test_upload_the_registry_could_not_take_resumes_where_it_stands(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path
) -> None:
    fake.fail(503, method="PATCH", nth=4, headers={"Retry-After": "2"})
    result = _install(two_repo_bundle, signer)
    _assert_pushed_intact(fake, result)
    failed, again = _failed_then_next_patch(fake, 4)
    assert _start(failed) > 0 and _start(again) == _start(failed)  # the same chunk, not the blob from its start
    status = fake.requests[fake.requests.index(failed) + 1]
    assert status.method == "GET" and "/blobs/uploads/" in status.path  # where the registry stands was asked
    assert fake.slept == [2]


def test_chunk_cut_midway_resumes_from_the_bytes_the_registry_kept(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path
) -> None:
    fake.fail(None, method="PATCH", nth=4, keep=1000)
    result = _install(two_repo_bundle, signer)
    _assert_pushed_intact(fake, result)
    failed, again = _failed_then_next_patch(fake, 4)
    assert _start(again) == _start(failed) + 1000
    assert fake.open_uploads == []


def test_upload_whose_state_is_unknown_starts_over_in_a_new_upload(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path
) -> None:
    fake.fail(None, method="PATCH", nth=4)
    fake.fail(404, method="GET", path="/blobs/uploads/")
    result = _install(two_repo_bundle, signer)
    _assert_pushed_intact(fake, result)
    failed, again = _failed_then_next_patch(fake, 4)
    assert _start(failed) > 0 and _start(again) == 0
    between = fake.requests[fake.requests.index(failed) + 1 : fake.requests.index(again)]
    assert [r.method for r in between] == ["GET", "DELETE", "HEAD", "POST"]  # asked, deleted the old one, began anew
    assert fake.open_uploads == []


def test_lost_answer_to_the_last_put_does_not_send_the_blob_again(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path
) -> None:
    fake.fail(None, method="PUT", path="digest=", nth=2, taken=True)
    result = _install(two_repo_bundle, signer)
    _assert_pushed_intact(fake, result)
    assert len(fake.seen("PUT", "digest=")) == sum(i.blobs_sent for i in result.images)
    assert len(fake.seen("POST")) - len(fake.seen("POST", "mount=")) == sum(i.blobs_sent for i in result.images)


def test_download_from_a_registry_ignoring_range_resumes_past_what_it_had(
    fake: MemoryRegistry, signer: Keys, tmp_path: Path
) -> None:
    fake.put_image("team/app", "1", LAYERS)
    fake.ranges = False
    fake.cut_body(digest_of(LAYERS[1]), after=300_000, times=1)
    result = _pack_from(fake, "team/app:1", tmp_path / "b", signer)
    assert [d.digest for d in result.manifest.images[0].layers] == [digest_of(layer) for layer in LAYERS]
    assert len(fake.seen("GET", digest_of(LAYERS[1]))) == 2


def test_manifest_read_cut_off_is_read_again(fake: MemoryRegistry, signer: Keys, tmp_path: Path) -> None:
    fake.put_image("team/app", "1", LAYERS)
    fake.cut_body("/manifests/1", after=10, times=1)
    _pack_from(fake, "team/app:1", tmp_path / "b", signer)
    assert len(fake.seen("GET", "/manifests/1")) == 2 and len(fake.slept) == 1


# --- item 12: digests from the registry ------------------------------------------------------


def test_manifest_named_by_another_digest_than_its_bytes_is_refused(fake: MemoryRegistry, signer: Keys, tmp_path: Path) -> None:
    fake.put_image("team/app", "1", LAYERS)
    fake.header_digest = "sha256:" + "1" * 64
    with pytest.raises(IntegrityError, match=f"names it {fake.header_digest}") as caught:
        _pack_from(fake, "team/app:1", tmp_path / "b", signer)
    assert caught.value.exit_code == ExitCode.INTEGRITY
    assert caught.value.digest == fake.header_digest
    assert BUNDLE_HINT not in (caught.value.hint or "") and f"registry {HOST}" in (caught.value.hint or "")


def test_manifest_named_by_a_sha512_digest_is_checked_with_sha512(fake: MemoryRegistry) -> None:
    fake.put_image("team/app", "1", LAYERS)
    found = fake.manifest("team/app", "1")
    assert found is not None
    fake.header_digest = "sha512:" + hashlib.sha512(found[0]).hexdigest()
    with fake.client() as client:
        assert client.get_manifest("team/app", "1") is not None
        fake.header_digest = "sha512:" + hashlib.sha512(b"other").hexdigest()
        with pytest.raises(IntegrityError, match="Docker-Content-Digest"):
            client.get_manifest("team/app", "1")


def test_manifest_stored_under_another_digest_never_gets_the_tag(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path
) -> None:
    fake.answer_digest = "sha256:" + "0" * 64
    with pytest.raises(IntegrityError, match=f"as {fake.answer_digest}, not sha256:") as caught:
        _install(two_repo_bundle, signer)
    assert caught.value.digest == fake.answer_digest
    assert BUNDLE_HINT not in (caught.value.hint or "")
    assert not fake.seen("PUT", "/manifests/1.0")  # refused on the PUT by digest, before any tag moved


def test_index_is_stored_by_digest_before_its_tag_names_it(fake: MemoryRegistry, signer: Keys, two_platform_bundle: Path) -> None:
    result = _install(two_platform_bundle, signer)
    (digest,) = {i.manifest_digest for i in result.images}
    puts = [r.path.rsplit("/", 1)[-1] for r in fake.seen("PUT", "/manifests/")]
    assert puts.index(digest) < puts.index("1.0") == len(puts) - 1


def test_blob_changed_on_the_way_is_sent_again_once_then_blamed_on_the_registry(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path
) -> None:
    fake.fail(400, method="PUT", path="digest=", times=1, code="DIGEST_INVALID")
    _assert_pushed_intact(fake, _install(two_repo_bundle, signer))
    fake.clear_faults()
    other = MemoryRegistry()
    other.fail(400, method="PUT", path="digest=", times=None, code="DIGEST_INVALID")
    with pytest.MonkeyPatch.context() as mp:
        other.install(mp)
        with pytest.raises(IntegrityError, match=r"received blob sha256:.* with other bytes") as caught:
            _install(two_repo_bundle, signer)
    assert caught.value.exit_code == ExitCode.INTEGRITY and caught.value.digest
    assert BUNDLE_HINT not in (caught.value.hint or "") and "proxy" in (caught.value.hint or "")
    assert len(other.seen("PUT", "digest=")) == 2  # sent once more, cleanly, then refused
    assert other.open_uploads == []


@pytest.mark.parametrize("status", [500, 507])
def test_registry_failure_mid_upload_blames_the_registry_not_the_bundle(
    fake: MemoryRegistry, signer: Keys, two_repo_bundle: Path, status: int
) -> None:
    fake.fail(status, method="PATCH", nth=3)
    with pytest.raises(RegistryError) as caught:
        _install(two_repo_bundle, signer)
    assert caught.value.exit_code == ExitCode.ENVIRONMENT
    assert f"registry {HOST}" in (caught.value.hint or "") and BUNDLE_HINT not in (caught.value.hint or "")
    assert fake.open_uploads == []


def test_config_damaged_in_the_registry_blames_the_registry(fake: MemoryRegistry, signer: Keys, tmp_path: Path) -> None:
    fake.put_image("team/app", "1", LAYERS)
    found = fake.manifest("team/app", "1")
    assert found is not None
    config = json.loads(found[0])["config"]["digest"]
    fake.corrupt_blob(config, fake.blobs[config] + b" ")
    with pytest.raises(IntegrityError, match=config[:19]) as caught:
        _pack_from(fake, "team/app:1", tmp_path / "b", signer)
    assert caught.value.digest == config
    assert BUNDLE_HINT not in (caught.value.hint or "") and f"registry {HOST}" in (caught.value.hint or "")
