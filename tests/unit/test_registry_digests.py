"""Registry digests kept: an image packed from a registry is served by the offline mirror under the manifest
digest (and, with every platform packed, the index digest) it had at its source, so deployments pinned by digest
(``image@sha256:...``, Kubernetes manifests, Helm charts) keep working.  The in-memory registry plays both the
source and the mirror; the real registry and skopeo check the same in tests/integration/test_registry_digests.py."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from airgap._internal.clients.distribution import USER_ENV
from airgap.errors import ExitCode, FormatError
from airgap.install import InstallOptions, InstallResult, install
from airgap.model.manifest import Manifest
from airgap.model.mediatypes import MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_MANIFEST
from airgap.pack import PackOptions, PackResult, pack, parse_source
from airgap.progress import Reporter
from airgap.trust import keys
from tests.helpers.cli import Cli
from tests.helpers.keys import KeyPair
from tests.helpers.memregistry import HOST, MemoryRegistry, tar_layer

IN_TOTO = "application/vnd.in-toto+json"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MemoryRegistry:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.delenv(USER_ENV, raising=False)
    registry = MemoryRegistry()
    registry.install(monkeypatch)
    return registry


def _compact(body: dict[str, Any]) -> bytes:
    """Bytes as a registry may hold them: compact, keys in an order airgap would not write."""
    return json.dumps(body, separators=(",", ":")).encode()


def _attestation(fake: MemoryRegistry, repo: str, subject: str) -> tuple[str, bytes]:
    """An in-toto attestation manifest for ``subject``, as BuildKit attaches them: (digest, statement blob)."""
    statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "subject": [{"digest": subject}]}).encode()
    config = b"{}"
    body = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": fake.put_blob(repo, config), "size": len(config)},
        "layers": [{"mediaType": IN_TOTO, "digest": fake.put_blob(repo, statement), "size": len(statement)}],
    }
    return fake.put_manifest(repo, _compact(body), MT_OCI_MANIFEST), statement


def _multi(fake: MemoryRegistry, repo: str, tag: str, attest: bool = True) -> dict[str, str]:
    """A two-platform index under ``tag`` (with an attestation per platform when ``attest``): name -> digest."""
    amd = fake.put_image(repo, None, [tar_layer("etc/amd", b"amd64 " * 500)], architecture="amd64")
    arm = fake.put_image(repo, None, [tar_layer("etc/arm", b"arm64 " * 500)], architecture="arm64")
    entries = []
    for digest, arch in ((amd, "amd64"), (arm, "arm64")):
        data, media_type = fake.repo(repo).manifests[digest]
        entries.append(
            {"mediaType": media_type, "digest": digest, "size": len(data), "platform": {"architecture": arch, "os": "linux"}}
        )
    found = {"amd64": amd, "arm64": arm}
    if attest:
        for digest, arch in ((amd, "amd64"), (arm, "arm64")):
            att, _ = _attestation(fake, repo, digest)
            data, _ = fake.repo(repo).manifests[att]
            entries.append({
                "mediaType": MT_OCI_MANIFEST, "digest": att, "size": len(data),
                "annotations": {"vnd.docker.reference.digest": digest, "vnd.docker.reference.type": "attestation-manifest"},
                "platform": {"architecture": "unknown", "os": "unknown"},
            })  # fmt: skip
            found[f"attestation-{arch}"] = att
    found["index"] = fake.put_manifest(
        repo, _compact({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": entries}), MT_OCI_INDEX, tag
    )
    return found


def _pack(ref: str, out: Path, keypair: KeyPair, platform: str | None = None, reporter: Reporter | None = None) -> PackResult:
    return pack(PackOptions((parse_source(f"oci://{HOST}/{ref}"),), out, keypair[0], platform=platform), reporter)


def _install(
    bundle: Path, keypair: KeyPair, target: str, platform: str | None = None, reporter: Reporter | None = None
) -> InstallResult:
    options = InstallOptions(bundle, (keys.load_public(keypair[1]),), target=target, platform=platform)
    return install(options, reporter)


class Recorder:
    """A reporter that keeps what it hears."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.totals: list[int] = []
        self.advanced: list[int] = []

    def start(self, label: str, total: int) -> None:
        self.totals.append(total)
        self.advanced.append(0)

    def advance(self, n: int) -> None:
        self.advanced[-1] += n

    def finish(self) -> None:
        pass

    def note(self, message: str) -> None:
        self.notes.append(message)


def test_image_from_a_registry_is_pushed_under_the_manifest_digest_it_had_there(
    fake: MemoryRegistry, keypair: KeyPair, tmp_path: Path
) -> None:
    source = fake.put_image("team/app", "1", [tar_layer("etc/app", b"app " * 800)])
    source_bytes = fake.repo("team/app").manifests[source][0]
    result = _pack("team/app:1", tmp_path / "b", keypair)
    (image,) = result.manifest.images
    assert image.manifest is not None and image.manifest.digest == source
    pushed = _install(tmp_path / "b", keypair, f"registry://{HOST}/mirror")
    assert pushed.images[0].manifest_digest == source
    assert fake.manifest("mirror/team/app", "1") == fake.repo("team/app").manifests[source]
    assert fake.manifest("mirror/team/app", "1")[0] == source_bytes  # type: ignore[index]


def test_index_with_every_platform_and_its_attestations_is_served_under_its_source_digest(
    fake: MemoryRegistry, keypair: KeyPair, tmp_path: Path
) -> None:
    found = _multi(fake, "team/app", "2")
    result = _pack("team/app:2", tmp_path / "b", keypair, platform="all")
    (index,) = result.manifest.indexes
    assert index.index.digest == found["index"] and index.ref_names == (f"{HOST}/team/app:2",)
    assert {x.digest for x in index.extras} >= {found["attestation-amd64"], found["attestation-arm64"]}
    recorder = Recorder()
    pushed = _install(tmp_path / "b", keypair, f"registry://{HOST}/mirror", reporter=recorder)
    assert {i.manifest_digest for i in pushed.images} == {found["index"]}
    mirror = fake.repo("mirror/team/app")
    assert mirror.tags["2"] == found["index"]
    for name, digest in found.items():  # every manifest the index names, byte for byte, and every blob they name
        assert mirror.manifests[digest] == fake.repo("team/app").manifests[digest], name
    for digest in found.values():
        body = json.loads(mirror.manifests[digest][0])
        for desc in (*body.get("manifests", ()), *([body["config"]] if "config" in body else ()), *body.get("layers", ())):
            assert desc["digest"] in mirror.blobs or desc["digest"] in mirror.manifests
    assert recorder.advanced[-1] == recorder.totals[-1]  # the progress ends at its total, kept manifests included


def test_inspect_names_the_kept_manifests_and_index_and_its_json_keeps_the_schema(
    fake: MemoryRegistry, keypair: KeyPair, tmp_path: Path, cli: Cli
) -> None:
    found = _multi(fake, "team/app", "6")
    _pack("team/app:6", tmp_path / "b", keypair, platform="all")
    shown = cli("inspect", str(tmp_path / "b"))
    assert shown.code == 0
    assert f"{found['index'][7:19]}" in shown.out and "index of registry.test/team/app:6 as its registry served it" in shown.out
    assert shown.out.count("manifest as its registry served it") == 2
    as_json = cli("inspect", str(tmp_path / "b"), "--json")  # checked against cli-inspect.schema.json by the runner
    assert json.loads(as_json.out)["manifest"]["indexes"][0]["index"]["digest"] == found["index"]


def test_platform_subset_keeps_each_manifest_digest_and_says_the_index_is_not_kept(
    fake: MemoryRegistry, keypair: KeyPair, tmp_path: Path
) -> None:
    found = _multi(fake, "team/app", "3")
    recorder = Recorder()
    result = _pack("team/app:3", tmp_path / "b", keypair, platform="linux/arm64", reporter=recorder)
    assert result.manifest.indexes == ()
    assert any("index of" in n and "not kept" in n for n in recorder.notes), recorder.notes
    pushed = _install(tmp_path / "b", keypair, f"registry://{HOST}/mirror")
    assert pushed.images[0].manifest_digest == found["arm64"]
    assert fake.repo("mirror/team/app").tags["3"] == found["arm64"]


def test_install_of_one_platform_pushes_a_new_index_never_the_kept_one_naming_missing_images(
    fake: MemoryRegistry, keypair: KeyPair, tmp_path: Path
) -> None:
    found = _multi(fake, "team/app", "4", attest=False)
    _pack("team/app:4", tmp_path / "b", keypair, platform="all")
    recorder = Recorder()
    pushed = _install(tmp_path / "b", keypair, f"registry://{HOST}/mirror", platform="linux/amd64", reporter=recorder)
    assert fake.repo("mirror/team/app").tags["4"] == found["amd64"] == pushed.images[0].manifest_digest
    assert found["index"] not in fake.repo("mirror/team/app").manifests
    assert recorder.advanced[-1] == recorder.totals[-1]


def test_same_image_packed_twice_from_an_engine_source_pushes_the_same_manifest_digest(
    fake: MemoryRegistry, keypair: KeyPair, tmp_path: Path
) -> None:
    from tests.helpers.samples import sample_image

    archive = sample_image.build(tmp_path / "a.tar", tag="airgap-test/det:1", model_size=1 << 16, app_size=1 << 12, seed="det")
    digests = []
    for n in (1, 2):
        pack(PackOptions((parse_source(f"docker-archive:{archive.path}"),), tmp_path / f"b{n}", keypair[0], sequence=n))
        digests.append(_install(tmp_path / f"b{n}", keypair, f"registry://{HOST}/site{n}").images[0].manifest_digest)
    assert digests[0] == digests[1]
    assert fake.manifest("site1/airgap-test/det", "1") == fake.manifest("site2/airgap-test/det", "1")


def _resign(bundle: Path, keypair: KeyPair, edit: Any) -> None:
    """Edit manifest.json and sign it again with the trusted key (a signer who made a wrong bundle)."""
    from airgap.trust import policy

    data = json.loads((bundle / "manifest.json").read_bytes())
    edit(data)
    raw = Manifest.from_dict(data).to_bytes()
    (bundle / "manifest.json").write_bytes(raw)
    fingerprint, signature = policy.sign(raw, keys.load_private(keypair[0], None))
    for old in (bundle / "signatures").iterdir():
        old.unlink()
    (bundle / "signatures" / f"{fingerprint}.sig").write_bytes(signature)


def test_kept_manifest_that_names_another_image_is_refused_before_anything_is_pushed(
    fake: MemoryRegistry, keypair: KeyPair, tmp_path: Path
) -> None:
    fake.put_image("team/app", "5", [tar_layer("etc/one", b"one " * 300)])
    other = fake.put_image("team/other", "1", [tar_layer("etc/two", b"two " * 300)])
    _pack("team/app:5", tmp_path / "b", keypair)
    _pack("team/other:1", tmp_path / "o", keypair)
    theirs = json.loads((tmp_path / "o" / "manifest.json").read_bytes())

    def swap(data: dict[str, Any]) -> None:  # image 0 keeps the other image's manifest, carried with its parts
        data["images"][0]["manifest"] = theirs["images"][0]["manifest"]
        data["blobs"] += [b for b in theirs["blobs"] if b["digest"] == other]
        data["parts"] += [p for p in theirs["parts"] if p["blob"] == other]

    _resign(tmp_path / "b", keypair, swap)
    for part in json.loads((tmp_path / "o" / "manifest.json").read_bytes())["parts"]:
        if part["blob"] == other:
            (tmp_path / "b" / part["path"]).write_bytes((tmp_path / "o" / part["path"]).read_bytes())
    puts_before = len(fake.seen("PUT"))
    with pytest.raises(FormatError, match="does not describe it") as caught:
        _install(tmp_path / "b", keypair, f"registry://{HOST}/mirror")
    assert caught.value.exit_code == ExitCode.FORMAT
    assert len(fake.seen("PUT")) == puts_before and "mirror/team/app" not in fake.repos


def test_manifest_listing_a_kept_index_whose_blob_is_not_carried_is_refused(keypair: KeyPair) -> None:
    digest = "sha256:" + "ab" * 32
    with pytest.raises(FormatError, match="index blob"):
        Manifest.from_dict({
            "schema_version": 1, "media_type": "application/vnd.airgap.bundle.manifest.v1+json", "name": "x",
            "sequence": 1, "created": "2026-01-01T00:00:00Z", "expires": None, "base": None,
            "tool": {"name": "airgap", "version": "1"}, "part_size": 1 << 20,
            "compression": {"algorithm": "zstd", "level": 3},
            "images": [{"ref_names": ["a/b:1"], "config": {"digest": digest, "size": 1, "media_type": MT_OCI_CONFIG},
                        "layers": [], "diff_ids": [], "platform": {"os": "linux", "architecture": "amd64"},
                        "manifest": {"digest": digest, "size": 1, "media_type": MT_OCI_MANIFEST}}],
            "blobs": [{"digest": digest, "size": 1}],
            "parts": [{"path": f"parts/{'ab' * 32}.00000.zst", "size": 10, "sha256": "cd" * 32, "blob": digest,
                       "index": 0, "offset": 0, "length": 1}],
            "indexes": [{"ref_names": ["a/b:1"], "index": {"digest": "sha256:" + "ef" * 32, "size": 5, "media_type": MT_OCI_INDEX}, "extras": []}],
        })  # fmt: skip


def test_oci_archive_of_a_docker_schema_image_gets_an_oci_manifest_built_for_it_not_the_kept_one(
    fake: MemoryRegistry, keypair: KeyPair, tmp_path: Path
) -> None:
    source = fake.put_image("team/app", "7", [tar_layer("etc/seven", b"seven " * 300)])  # Docker schema 2
    result = _pack("team/app:7", tmp_path / "b", keypair)
    assert result.manifest.images[0].manifest is not None
    _install(tmp_path / "b", keypair, f"oci-archive:{tmp_path / 'out.tar'}")
    with tarfile.open(tmp_path / "out.tar") as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        (entry,) = json.load(member)["manifests"]
    assert entry["mediaType"] == MT_OCI_MANIFEST and entry["digest"] != source  # OCI readers (umoci) need OCI types


def test_index_listing_a_manifest_without_a_platform_is_not_kept_so_no_platform_pulls_an_unreported_image(
    fake: MemoryRegistry, keypair: KeyPair, tmp_path: Path
) -> None:
    amd = fake.put_image("team/app", None, [tar_layer("etc/amd", b"amd64 " * 500)], architecture="amd64")
    stray, _ = _attestation(fake, "team/app", amd)  # an image manifest listed with no platform: containerd takes it anywhere
    entries = []
    for digest, platform in ((amd, {"architecture": "amd64", "os": "linux"}), (stray, None)):
        data, media_type = fake.repo("team/app").manifests[digest]
        entries.append(
            {"mediaType": media_type, "digest": digest, "size": len(data), **({"platform": platform} if platform else {})}
        )
    fake.put_manifest(
        "team/app", _compact({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": entries}), MT_OCI_INDEX, "8"
    )
    recorder = Recorder()
    result = _pack("team/app:8", tmp_path / "b", keypair, platform="linux/amd64", reporter=recorder)
    assert result.manifest.indexes == ()
    assert any("no platform" in n for n in recorder.notes), recorder.notes
    _install(tmp_path / "b", keypair, f"registry://{HOST}/mirror")
    assert fake.repo("mirror/team/app").tags["8"] == amd and stray not in fake.repo("mirror/team/app").manifests


def test_index_listing_more_attestations_than_kept_is_not_kept(
    fake: MemoryRegistry, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airgap._internal.sources import registry as source

    monkeypatch.setattr(source, "MAX_EXTRAS", 1)
    found = _multi(fake, "team/app", "9")  # two attestations
    recorder = Recorder()
    result = _pack("team/app:9", tmp_path / "b", keypair, platform="all", reporter=recorder)
    assert result.manifest.indexes == () and any("at most 1 are kept" in n for n in recorder.notes)
    pushed = _install(tmp_path / "b", keypair, f"registry://{HOST}/mirror")
    assert {i.manifest_digest for i in pushed.images} != {found["index"]}
