"""Image names: Docker's reference grammar and normalization, in one place, and every reader of names using it.

The tables are Docker's own test cases (distribution/reference ``normalize_test.go`` and ``reference_test.go``);
the properties hold for any name the grammar allows, and any text is either read or refused with
InvalidReference.  Then the readers: the manifest model accepts exactly the names pack signs (an IPv6
registry, ``LocalHost``), registry references reach Docker Hub at registry-1.docker.io with the
credentials ``docker login`` keeps under ``https://index.docker.io/v1/``, loopback is recognised in any
spelling, and a registry push keeps names that differ only in their host apart.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airgap._internal.clients.distribution import USER_ENV, Registry, credentials_for, is_loopback, parse_ref
from airgap._internal.sinks.base import Target
from airgap._internal.sinks.containerd import kubelet_name
from airgap._internal.sinks.registry import RegistrySink, repository_for, split_ref
from airgap.errors import FormatError, UsageError
from airgap.model.manifest import Descriptor, Image, Manifest, Platform, valid_ref
from airgap.model.reference import InvalidReference, Reference, host_as_component, layout_annotations
from airgap.pack import PackOptions, pack, parse_source
from airgap.trust import keys
from tests.helpers.manifests import D1, D2, make_manifest
from tests.helpers.memregistry import MemoryRegistry

DIGEST = "sha256:" + "f" * 64

# --- Docker's own cases ----------------------------------------------------------------------------------------

# normalize_test.go TestValidateReferenceName and TestValidateRemoteName
VALID = [
    "docker/docker",
    "library/debian",
    "debian",
    "docker.io/docker/docker",
    "docker.io/library/debian",
    "docker.io/debian",
    "index.docker.io/docker/docker",
    "index.docker.io/library/debian",
    "index.docker.io/debian",
    "127.0.0.1:5000/docker/docker",
    "127.0.0.1:5000/library/debian",
    "127.0.0.1:5000/debian",
    "192.168.0.1",
    "192.168.0.1:80",
    "192.168.0.1:8/debian",
    "192.168.0.2:25000/debian",
    "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
    "[fc00::1]:5000/docker",
    "[fc00::1]:5000/docker/docker",
    "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
    "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
    "Docker/docker",
    "DOCKER/docker",
    "docker-rules/docker",
    "docker---rules/docker",
    "doc/docker",
    "d/docker",
    "jess/t",
    "dock__er/docker",
    "[2001:db8::1]:5000/repo:tag@" + DIGEST,
    "xn--n3h.com/myimage:xn--n3h.com",
    "b.gcr.io/test.example.com/my-app:test.example.com",
    "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
    "lowercase:Uppercase",
]
INVALID = [
    "https://github.com/docker/docker",
    "docker/Docker",
    "-docker",
    "-docker/docker",
    "-docker.io/docker/docker",
    "docker///docker",
    "docker.io/docker/Docker",
    "docker.io/docker///docker",
    "[fc00::1]",
    "[fc00::1]:5000",
    "fc00::1:5000/debian",
    "[fe80::1%eth0]:5000/debian",
    "[2001:db8:3:4::192.0.2.33]:5000/debian",
    "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
    "docker-/docker",
    "-docker-/docker",
    "____/____",
    "_docker/_docker",
    "dock..er/docker",
    "dock_.er/docker",
    "dock-.er/docker",
    "docker/",
    "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255" * 4 + "/docker",
    "",
    ":justtag",
    "@" + DIGEST,
    "repo@sha256:" + "f" * 34,
    "validname@invaliddigest:" + "f" * 64,
    "Uppercase:tag",
    "test:5000/Uppercase/lowercase:tag",
    "aa/asdf$$^/aa",
    "[2001:db8::1]:tag",
    "[fe80::1%@invalidzone]:5000/repo",
    "repo@sha256:" + "F" * 64,  # go-digest: lower-case hex only
    "busybox:" + "t" * 129,  # a tag is at most 128 characters
]


@pytest.mark.parametrize("text", VALID)
def test_docker_accepts_these_names_and_so_do_we(text: str) -> None:
    Reference.parse(text)


@pytest.mark.parametrize("text", INVALID)
def test_docker_refuses_these_names_and_so_do_we(text: str) -> None:
    with pytest.raises(InvalidReference):
        Reference.parse(text)


# normalize_test.go TestParseRepositoryInfo: (path, familiar name, full name, another spelling, host)
REPOSITORY_INFO = [
    ("fooo/bar", "fooo/bar", "docker.io/fooo/bar", "index.docker.io/fooo/bar", "docker.io"),
    ("library/ubuntu", "ubuntu", "docker.io/library/ubuntu", "library/ubuntu", "docker.io"),
    ("nonlibrary/ubuntu", "nonlibrary/ubuntu", "docker.io/nonlibrary/ubuntu", "", "docker.io"),
    ("other/library", "other/library", "docker.io/other/library", "", "docker.io"),
    ("private/moonbase", "127.0.0.1:8000/private/moonbase", "127.0.0.1:8000/private/moonbase", "", "127.0.0.1:8000"),
    ("privatebase", "127.0.0.1:8000/privatebase", "127.0.0.1:8000/privatebase", "", "127.0.0.1:8000"),
    ("private/moonbase", "example.com/private/moonbase", "example.com/private/moonbase", "", "example.com"),
    ("privatebase", "example.com/privatebase", "example.com/privatebase", "", "example.com"),
    ("private/moonbase", "example.com:8000/private/moonbase", "example.com:8000/private/moonbase", "", "example.com:8000"),
    ("privatebasee", "example.com:8000/privatebasee", "example.com:8000/privatebasee", "", "example.com:8000"),
    (
        "library/ubuntu-12.04-base",
        "ubuntu-12.04-base",
        "docker.io/library/ubuntu-12.04-base",
        "index.docker.io/library/ubuntu-12.04-base",
        "docker.io",
    ),
    ("library/foo", "foo", "docker.io/library/foo", "docker.io/foo", "docker.io"),
    ("library/foo/bar", "library/foo/bar", "docker.io/library/foo/bar", "", "docker.io"),
    ("store/foo/bar", "store/foo/bar", "docker.io/store/foo/bar", "", "docker.io"),
    ("bar", "Foo/bar", "Foo/bar", "", "Foo"),
    ("bar", "FOO/bar", "FOO/bar", "", "FOO"),
]


@pytest.mark.parametrize(("path", "familiar", "full", "other", "host"), REPOSITORY_INFO)
def test_every_spelling_gives_dockers_familiar_and_full_names(path: str, familiar: str, full: str, other: str, host: str) -> None:
    for text in filter(None, (familiar, full, other)):
        ref = Reference.parse(text)
        assert (ref.host, ref.path, ref.familiar_name, ref.name, str(ref)) == (host, path, familiar, full, full)


# normalize_test.go TestNormalizedSplitHostname
@pytest.mark.parametrize(
    ("text", "host", "path"),
    [
        ("test.com/foo", "test.com", "foo"),
        ("test_com/foo", "docker.io", "test_com/foo"),
        ("docker/migrator", "docker.io", "docker/migrator"),
        ("test.com:8080/foo", "test.com:8080", "foo"),
        ("test-com:8080/foo", "test-com:8080", "foo"),
        ("foo", "docker.io", "library/foo"),
        ("xn--n3h.com/foo", "xn--n3h.com", "foo"),
        ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
        ("docker.io/foo", "docker.io", "library/foo"),
        ("docker.io/library/foo", "docker.io", "library/foo"),
        ("docker.io/library/foo/bar", "docker.io", "library/foo/bar"),
        ("localhost/foo", "localhost", "foo"),
        ("localhost:5000/foo", "localhost:5000", "foo"),
        ("LocalHost/foo", "LocalHost", "foo"),  # upper case: a host
        ("[::1]:5000/team/app", "[::1]:5000", "team/app"),
        ("[2001:db8::1]/repo", "[2001:db8::1]", "repo"),
        ("localhost:5000", "docker.io", "library/localhost"),  # one element: a name with the tag 5000
    ],
)
def test_the_registry_host_is_where_docker_finds_it(text: str, host: str, path: str) -> None:
    ref = Reference.parse(text)
    assert (ref.host, ref.path) == (host, path)


@pytest.mark.parametrize(
    ("text", "familiar", "normalized"),
    [
        ("busybox", "busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/busybox:1.36", "busybox:1.36", "docker.io/library/busybox:1.36"),
        ("team/app:1", "team/app:1", "docker.io/team/app:1"),
        ("reg.example:5000/team/app", "reg.example:5000/team/app", "reg.example:5000/team/app:latest"),
        ("[::1]:5000/app:1", "[::1]:5000/app:1", "[::1]:5000/app:1"),
        # TestParseReferenceWithTagAndDigest, and ParseDockerRef: a digest wins over a tag
        (f"busybox:latest@{DIGEST}", f"busybox:latest@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"redis@{DIGEST}", f"redis@{DIGEST}", f"docker.io/library/redis@{DIGEST}"),
        ("dbcc1", "dbcc1", "docker.io/library/dbcc1:latest"),
    ],
)
def test_familiar_is_what_docker_shows_normalized_what_containerd_stores(text: str, familiar: str, normalized: str) -> None:
    ref = Reference.parse(text)
    assert (ref.familiar(), ref.normalized()) == (familiar, normalized)


def test_a_name_is_at_most_255_characters_with_its_host() -> None:
    path = "/".join(["a"] * 122)  # 243 characters: with docker.io/ and /b, 255
    assert Reference.parse(path + "/b:1").name == f"docker.io/{path}/b"
    with pytest.raises(InvalidReference, match="255"):
        Reference.parse(path + "/bb:1")
    with pytest.raises(InvalidReference, match="255"):
        Reference.parse("a/" * 127 + "a:tag-puts-this-over-max")  # 255 without docker.io/, as Docker 20.10 counts


# --- properties over the whole grammar ------------------------------------------------------------------------

_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_component = st.builds(
    lambda first, rest: first + "".join(sep + word for sep, word in rest),
    _alnum,
    st.lists(st.tuples(st.sampled_from([".", "_", "__", "-", "--"]), _alnum), max_size=2),
)
_path = st.lists(_component, min_size=1, max_size=3).map("/".join)
_label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,4}[a-zA-Z0-9])?", fullmatch=True)
_dns = st.lists(_label, min_size=1, max_size=3).map(".".join)
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a.compressed}]").filter(lambda a: "." not in a)
_port = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
_host = st.one_of(
    st.builds(lambda h, p: h + p, _dns, _port).filter(lambda h: "." in h or ":" in h or h.lower() != h),
    st.builds(lambda h, p: h + p, _ipv6, _port),
    st.just("localhost"),
    st.just("docker.io"),
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_digest = st.sampled_from(["sha256:" + "0123456789abcdef" * 4, "sha512:" + "0f" * 64])
_first = re.compile(r"[^/]*")


def _reads_as_docker_does(name: str) -> bool:
    """Leave out names whose first element looks like a host but is none (``a.b_c/x``): Docker reads them as names
    without a registry, airgap refuses them (tested below)."""
    first = _first.match(name)
    return first is None or "/" not in name or "." not in first.group() or bool(re.fullmatch(r"[A-Za-z0-9.-]+", first.group()))


_names = st.builds(
    lambda host, path, tag, digest: (
        (f"{host}/" if host else "") + path + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ),
    st.one_of(st.none(), _host),
    _path,
    st.one_of(st.none(), _tag),
    st.one_of(st.none(), _digest),
).filter(_reads_as_docker_does)


@settings(max_examples=400, deadline=None)
@given(_names)
def test_any_name_of_the_grammar_reads_and_its_spellings_read_back_the_same(text: str) -> None:
    ref = Reference.parse(text)
    assert Reference.parse(ref.familiar()) == ref
    assert Reference.parse(str(ref)) == ref
    normalized = Reference.parse(ref.normalized())
    assert normalized.normalized() == ref.normalized() and normalized.key == ref.key
    assert ref.key == f"{ref.host.lower()}/{ref.normalized().partition('/')[2]}"


@settings(max_examples=400, deadline=None)
@given(st.text(st.characters(codec="ascii"), max_size=80) | st.text(max_size=40) | _names.map(lambda n: n.upper()))
def test_any_text_is_read_or_refused_with_invalid_reference(text: str) -> None:
    try:
        ref = Reference.parse(text)
    except InvalidReference:
        return
    assert ref.path == ref.path.lower() and re.fullmatch(r"[a-z0-9._/-]+", ref.path)


@settings(max_examples=200, deadline=None)
@given(_names, _names)
def test_two_names_share_a_key_only_when_docker_normalizes_them_alike(a: str, b: str) -> None:
    ra, rb = Reference.parse(a), Reference.parse(b)
    same = ra.host.lower() == rb.host.lower() and ra.normalized().partition("/")[2] == rb.normalized().partition("/")[2]
    assert (ra.key == rb.key) == same


@settings(max_examples=200, deadline=None)
@given(_host, _host)
def test_a_host_kept_in_the_path_is_one_component_that_tells_hosts_apart(a: str, b: str) -> None:
    ca, cb = host_as_component(a), host_as_component(b)
    assert Reference.parse(f"reg.test/{ca}/app:1").path == f"{ca}/app"
    if ca == cb:
        assert Reference.parse(f"{a}/x").host.lower() == Reference.parse(f"{b}/x").host.lower()


def test_a_first_element_that_looks_like_a_host_but_is_none_is_refused() -> None:
    with pytest.raises(InvalidReference, match="looks like a registry host"):
        Reference.parse("a.b_c/app:1")  # Docker reads it as a name without registry; no registry serves it
    assert Reference.parse("docker.io/a.b/app:1").familiar() == "docker.io/a.b/app:1"  # not a.b/app:1: registry a.b


def test_overlong_text_is_refused_at_once() -> None:
    with pytest.raises(InvalidReference):
        Reference.parse("a" * 5000 + "!")
    with pytest.raises(InvalidReference):
        Reference.parse("a-" * 600 + "!")


# --- the manifest model accepts exactly the names pack signs ------------------------------------------------


def image(*names: str) -> Image:
    return Image(names, Descriptor(D1, 10, "application/vnd.oci.image.config.v1+json"), (), (), Platform("linux", "arm64", "v8"))


@pytest.mark.parametrize(
    "name", ["[::1]:5000/team/app:1", "LocalHost:5000/app:1", "docker.io/library/busybox:1", "busybox:1", "Registry/app:v1"]
)
def test_model_accepts_every_tagged_docker_name(name: str) -> None:
    m = make_manifest(images=(image(name),), blobs=make_manifest().blobs[:1], parts=make_manifest().parts[:1])
    assert Manifest.from_bytes(m.to_bytes()) == m


@pytest.mark.parametrize("name", ["busybox", f"busybox@{DIGEST}", f"busybox:1@{DIGEST}", "Busybox:1", "[::1]/:1"])
def test_model_refuses_names_without_a_tag_or_with_a_digest(name: str) -> None:
    assert not valid_ref(name)
    with pytest.raises(FormatError, match="not a valid Docker reference"):
        image(name)


def test_two_spellings_of_one_name_on_two_images_are_refused() -> None:
    a = image("busybox:1")
    b = Image(("docker.io/library/busybox:1",), Descriptor(D2, 10, a.config.media_type), (), (), a.platform)
    with pytest.raises(FormatError, match="given to two"):
        make_manifest(images=(a, b))


# --- registry references, Docker Hub, credentials, loopback -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "repository", "reference"),
    [
        ("oci://docker.io/busybox:1", "docker.io", "library/busybox", "1"),
        ("oci://busybox:1", "docker.io", "library/busybox", "1"),
        ("oci://index.docker.io/team/app:1", "docker.io", "team/app", "1"),
        ("oci://[::1]:5000/team/app:1", "[::1]:5000", "team/app", "1"),
        ("oci://LocalHost:5000/app:1", "LocalHost:5000", "app", "1"),
        (f"oci://reg.example/app:1@{DIGEST}", "reg.example", "app", DIGEST),
    ],
)
def test_registry_references_follow_docker(text: str, host: str, repository: str, reference: str) -> None:
    ref = parse_ref(text, "oci")
    assert (ref.host, ref.repository, ref.reference) == (host, repository, reference)


@pytest.mark.parametrize("text", ["oci://[::1]:5000/Team/app:1", "oci://reg/app@sha512:" + "0" * 128, "oci://[::1]/:1"])
def test_unreadable_registry_reference_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_ref(text, "oci")


def test_docker_hub_is_dialled_at_registry_1() -> None:
    assert Registry("docker.io").base == "https://registry-1.docker.io"
    assert Registry("index.docker.io").base == "https://registry-1.docker.io"
    assert Registry("reg.example:5000").base == "https://reg.example:5000"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost:5000", True),
        ("LocalHost:5000", True),
        ("LOCALHOST", True),
        ("127.0.0.1:5000", True),
        ("127.3.2.1", True),
        ("[::1]:5000", True),
        ("[0:0:0:0:0:0:0:1]", True),
        ("localhost.example:5000", False),
        ("10.0.0.1:5000", False),
        ("[fc00::1]:5000", False),
        ("registry-1.docker.io", False),
    ],
)
def test_loopback_in_every_spelling(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert Registry(host).base.startswith("http://" if loopback else "https://")


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv(USER_ENV, raising=False)
    return tmp_path / "config.json"


def _auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_docker_login_credentials_for_docker_hub_are_found(docker_config: Path, host: str) -> None:
    docker_config.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": _auth("hubuser", "hubpw")}}))
    creds = credentials_for(host)
    assert creds is not None and (creds.username, creds.password) == ("hubuser", "hubpw")
    assert credentials_for("reg.example:5000") is None


def test_registry_credentials_are_looked_up_without_regard_to_case(docker_config: Path) -> None:
    docker_config.write_text(
        json.dumps({"auths": {"localhost:5000": _auth("u", "p"), "https://index.docker.io/v1/": _auth("h", "h")}})
    )
    creds = credentials_for("LocalHost:5000")
    assert creds is not None and creds.username == "u"
    assert credentials_for("localhost:5001") is None


def test_pack_from_docker_hub_name_reaches_registry_1_with_docker_login(
    docker_config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docker_config.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": _auth("hubuser", "hubpw")}}))
    hub = MemoryRegistry("registry-1.docker.io", auth="basic", login=("hubuser", "hubpw"))
    hub.install(monkeypatch)
    hub.put_image("library/busybox", "1.36", [b"layer"])
    key, _, _ = keys.generate(tmp_path / "signer", None)
    result = pack(PackOptions((parse_source("oci://docker.io/busybox:1.36"),), tmp_path / "b", key))
    ((name,),) = [i.ref_names for i in result.manifest.images]
    assert Reference.parse(name).key == "docker.io/library/busybox:1.36"
    assert {r.netloc for r in hub.requests} == {"registry-1.docker.io"}
    assert any(r.headers.get("Authorization", "").startswith("Basic ") for r in hub.requests)


# --- names where images go: kubelet, registry push, OCI layout annotations -----------------------------------


def test_kubelet_names_are_the_normalized_names() -> None:
    assert kubelet_name("busybox:1") == "docker.io/library/busybox:1"
    assert kubelet_name("[::1]:5000/team/app:1") == "[::1]:5000/team/app:1"
    assert kubelet_name("LocalHost/app:1") == "LocalHost/app:1"


def test_a_push_goes_to_the_repository_path_docker_gives_the_name() -> None:
    assert split_ref("reg.example:5000/team/agent:1.0") == ("team/agent", "1.0")
    assert split_ref("busybox:1") == ("library/busybox", "1")  # what a registry mirror of docker.io serves
    assert split_ref("[::1]:5000/team/app:1") == ("team/app", "1")
    assert repository_for("reg1.example:5000/team/app:1", "site", False) == ("site/team/app", "1")
    assert repository_for("reg1.example:5000/team/app:1", "site", True) == ("site/reg1.example_5000/team/app", "1")
    assert repository_for("busybox:1", "", True) == ("docker.io/library/busybox", "1")
    assert repository_for("LocalHost:5000/app:1", "m", True) == repository_for("localhost:5000/app:1", "m", True)


def test_oci_layout_names_follow_containerd_and_podman() -> None:
    one = layout_annotations(["team/app:1", "team/app:2"])
    assert one["team/app:1"] == {"io.containerd.image.name": "docker.io/team/app:1", "org.opencontainers.image.ref.name": "1"}
    shared = layout_annotations(["team/app:1", "team/web:1", "busybox:1"])  # one tag, three images: full names
    assert shared["team/web:1"]["org.opencontainers.image.ref.name"] == "docker.io/team/web:1"
    assert shared["busybox:1"] == {
        "io.containerd.image.name": "docker.io/library/busybox:1",
        "org.opencontainers.image.ref.name": "docker.io/library/busybox:1",
    }
    spelled_twice = layout_annotations(["busybox:1", "docker.io/library/busybox:1"])  # one name, two spellings
    assert spelled_twice["busybox:1"] == spelled_twice["docker.io/library/busybox:1"]
    assert spelled_twice["busybox:1"]["org.opencontainers.image.ref.name"] == "1"


def _pushed(*images: Image, keep_host: bool = False) -> None:
    sink = RegistrySink(Target("registry", "reg.test/site"), lambda _: None, keep_host=keep_host)
    assert sink.prepare(list(images)) is None


def test_names_differing_only_in_host_are_refused_for_one_prefix_unless_kept_apart() -> None:
    one = image("reg1.example:5000/team/app:1")
    two = Image(("reg2.example:5000/team/app:1",), Descriptor(D2, 10, one.config.media_type), (), (), one.platform)
    with pytest.raises(
        UsageError, match=r"reg1.example:5000/team/app:1 and reg2.example:5000/team/app:1 .* reg.test/site/team/app:1"
    ):
        _pushed(one, two)
    _pushed(one, two, keep_host=True)
    _pushed(image("reg1.example:5000/team/app:1", "reg2.example:5000/team/app:1"))  # one image under both: no doubt
    _pushed(image("busybox:1", "docker.io/library/busybox:1"))  # one name spelled twice


@pytest.mark.parametrize("target", ["bad_host/site", "reg.test/Site", "reg.test/site//x"])
def test_unreadable_registry_target_is_a_usage_error(target: str) -> None:
    with pytest.raises(UsageError):
        RegistrySink(Target("registry", target), lambda _: None)
