"""Shared fixtures: a real Docker engine, sample images built locally, keys, and the CLI in-process."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import sample_image  # noqa: E402

from airgap._cli import main  # noqa: E402
from airgap._internal.clients.docker import engine_answers  # noqa: E402

IN_CI = bool(os.environ.get("CI"))


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI must run every Docker test)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _private_install_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own rollback state file, never the user's."""
    monkeypatch.setenv("AIRGAP_STATE", str(tmp_path / "airgap-state" / "installed.json"))


@contextmanager
def _private_engine(prefix: str) -> Iterator[str]:
    """Start a private dockerd (own data root and socket) for the block; yields its DOCKER_HOST."""
    if not shutil.which("dockerd") or os.geteuid() != 0:
        _unavailable("no Docker engine answers and a private dockerd cannot be started here")
    engine_dir = Path(tempfile.mkdtemp(prefix=prefix))
    script = ROOT / "scripts" / "private-dockerd"
    started = subprocess.run([str(script), "start", str(engine_dir)], capture_output=True, text=True, check=False)
    if started.returncode != 0:
        _unavailable(f"private dockerd did not start: {started.stderr.strip()[-500:]}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([str(script), "stop", str(engine_dir)], check=False)
        shutil.rmtree(engine_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """DOCKER_HOST of a real engine: the one configured, or a private one started for the session."""
    if os.environ.get("DOCKER_HOST") and engine_answers():
        yield os.environ["DOCKER_HOST"]
        return
    with _private_engine("airgap-test-dockerd.") as host:
        old = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = host
        try:
            yield host
        finally:
            if old is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = old


@pytest.fixture(scope="session")
def docker_client(docker_host: str) -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=600)
    yield client
    client.close()


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run airgap in-process; return exit code, stdout and stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(["--quiet", *args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, sample_image.Sample]:
    """Small seed-shaped images: two docker-archives sharing base layers, and an oci-archive."""
    d = tmp_path_factory.mktemp("samples")
    return {
        "docker": sample_image.build(
            d / "agent.tar", tag="airgap-test/agent:1.0", model_size=3 << 20, app_size=1 << 20, seed="one"
        ),
        "docker2": sample_image.build(
            d / "agent2.tar", tag="airgap-test/agent:2.0", model_size=3 << 20, app_size=1 << 20, seed="two"
        ),
        "oci": sample_image.build(
            d / "agent-oci.tar", tag="airgap-test/agent-oci:1.0", model_size=2 << 20, app_size=1 << 20, seed="oci", fmt="oci"
        ),
    }


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from airgap.trust import keys

    d = tmp_path_factory.mktemp("keys")
    key, pub, _ = keys.generate(d / "signer", None)
    return key, pub


@pytest.fixture(scope="session")
def other_keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from airgap.trust import keys

    d = tmp_path_factory.mktemp("otherkeys")
    key, pub, _ = keys.generate(d / "stranger", None)
    return key, pub


@pytest.fixture
def bundle(cli, samples, keypair, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """The small sample image packed with 1 MiB parts (its model layer spans several parts)."""
    out = tmp_path / "b"
    r = cli("pack", f"docker-archive:{samples['docker'].path}", "-o", str(out), "--key", str(keypair[0]), "--part-size", "1MiB")
    assert r.code == 0, r.err
    return out


def openssl_verifies(public_key: Path, signed_file: Path, signature: Path) -> bool:
    """The auditor's check of a raw Ed25519 signature, with openssl alone."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is not installed (.ci/run installs it)")
    cmd = [
        "openssl",
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(public_key),
        "-rawin",
        "-in",
        str(signed_file),
        "-sigfile",
        str(signature),
    ]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


@dataclass(frozen=True)
class PrivateRegistry:
    host: str  # 127.0.0.1:PORT
    log: Path  # its access log: one line per request

    def requests_seen(self, method: str, path_part: str) -> int:
        return sum(1 for line in self.log.read_text().splitlines() if f'"{method} ' in line and path_part in line)


def _start_registry(tmp: Path, htpasswd: Path | None = None) -> Iterator[PrivateRegistry]:
    if not shutil.which("docker-registry"):
        _unavailable("docker-registry is not installed (.ci/run installs it)")
    script = ROOT / "scripts" / "private-registry"
    args = [str(script), "start", str(tmp)] + ([str(htpasswd)] if htpasswd else [])
    started = subprocess.run(args, capture_output=True, text=True, check=False)
    if started.returncode != 0:
        _unavailable(f"private registry did not start: {started.stderr.strip()[-500:]}")
    try:
        yield PrivateRegistry(started.stdout.strip(), tmp / "registry.log")
    finally:
        subprocess.run([str(script), "stop", str(tmp)], check=False)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRegistry]:
    """Debian's distribution registry on 127.0.0.1, plain HTTP, no auth."""
    yield from _start_registry(tmp_path_factory.mktemp("registry"))


REGISTRY_USER, REGISTRY_PASSWORD = "field-engineer", "correct horse battery staple"


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRegistry]:
    """The same registry with basic auth (htpasswd, bcrypt) for REGISTRY_USER."""
    import bcrypt

    d = tmp_path_factory.mktemp("auth-registry")
    htpasswd = d / "htpasswd"
    hashed = bcrypt.hashpw(REGISTRY_PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
    htpasswd.write_text(f"{REGISTRY_USER}:{hashed}\n")
    yield from _start_registry(d / "srv", htpasswd)


@pytest.fixture(scope="session")
def second_engine(docker_host: str) -> Iterator[str]:
    """DOCKER_HOST of a second private Docker engine (another site's host), for pulls from a registry."""
    with _private_engine("airgap-test-dockerd2.") as host:
        yield host


def two_platform_pack(cli, keypair, tmp_path: Path, tag: str) -> tuple[Path, sample_image.Sample, sample_image.Sample]:  # type: ignore[no-untyped-def]
    """One tag built for linux/amd64 and linux/arm64 (shared base layers), packed into one bundle."""
    seed = tag.replace("/", "-")
    amd = sample_image.build(tmp_path / f"{seed}-amd64.tar", tag=tag, model_size=1 << 18, app_size=1 << 16, seed=seed)
    arm = sample_image.build(
        tmp_path / f"{seed}-arm64.tar", tag=tag, model_size=1 << 18, app_size=1 << 16, seed=seed, arch="arm64"
    )
    out = tmp_path / f"{seed}-bundle"
    r = cli("pack", f"docker-archive:{amd.path}", f"docker-archive:{arm.path}", "-o", str(out), "--key", str(keypair[0]))
    assert r.code == 0, r.err
    return out, amd, arm


def evict_images_sharing_layers(client: docker.DockerClient, diff_ids: tuple[str, ...]) -> None:
    """Remove every image that holds one of these layers: install reads no layer the engine already has,
    so a test that damages a part must start from an engine without that layer."""
    wanted = set(diff_ids)
    for image in client.images.list(all=True):
        if wanted & set((image.attrs.get("RootFS") or {}).get("Layers") or []):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)


class TokenServer:
    """A token service as Harbor, Quay or Docker Hub run one: answers Basic credentials with a signed JWT
    (ES256, its certificate in the x5c header) that Debian's distribution registry checks against a root
    certificate bundle.  Only what the registry's token auth needs."""

    ISSUER, SERVICE = "airgap-test-issuer", "airgap-test-registry"

    def __init__(self, directory: Path) -> None:
        import base64
        import datetime
        import http.server
        import json as _json
        import secrets
        import threading
        import time as _time
        from urllib.parse import parse_qs, urlparse

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airgap test token issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.cert_path = directory / "token-root.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.issued: list[str] = []
        server = self

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                expected = "Basic " + base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                query = parse_qs(urlparse(self.path).query)
                access = []
                for scope in query.get("scope", []):
                    kind, repo, actions = scope.split(":", 2)
                    access.append({"type": kind, "name": repo, "actions": actions.split(",")})
                t = int(_time.time())
                claims = {"iss": server.ISSUER, "sub": REGISTRY_USER, "aud": server.SERVICE, "exp": t + 600, "nbf": t - 60,
                          "iat": t, "jti": secrets.token_hex(8), "access": access}  # fmt: skip
                header = {"typ": "JWT", "alg": "ES256", "x5c": [x5c]}
                signing_input = f"{b64(_json.dumps(header).encode())}.{b64(_json.dumps(claims).encode())}"
                r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
                token = f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
                server.issued.append(",".join(query.get("scope", [])))
                body = _json.dumps({"token": token}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateRegistry, TokenServer]]:
    """The distribution registry with token (Bearer) authentication, and its token service."""
    d = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(d)
    env = {
        "REGISTRY_AUTH": "token",
        "REGISTRY_AUTH_TOKEN_REALM": tokens.realm,
        "REGISTRY_AUTH_TOKEN_SERVICE": TokenServer.SERVICE,
        "REGISTRY_AUTH_TOKEN_ISSUER": TokenServer.ISSUER,
        "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": str(tokens.cert_path),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        registries = _start_registry(d / "srv")
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
