"""What the tests share, one concern a module; ``conftest.py`` files only wrap these in fixtures.

- ``paths``: the checkout, and the one loader of ``scripts/*.py`` (scripts/ is not a package).
- ``samples``: seed-shaped sample images (``scripts/sample_image.py``) and the releases delta tests use.
- ``bundles``: bundles packed from samples through the CLI.
- ``keys``: signing key pairs and key-file assets.
- ``cli``: airgap run in-process, its exit code and output.
- ``manifests``: a valid manifest to mutate, and the published JSON Schema.
- ``fake_engine``: an in-memory Docker engine, behind the product's ``EngineClient`` protocol.
- ``memregistry``: an in-memory OCI distribution registry behind the registry client's transport.
- ``engine``: a private dockerd per test session, and image clean-up in it.
- ``podman``, ``containerd``: private Podman and containerd services, install targets besides Docker.
- ``registries``: Debian's distribution registry as a private process, plain, with Basic or token auth.
- ``tokens``: a token service as Harbor or Quay run one (signed JWTs).
- ``registry_proxy``: a loopback proxy in front of a real registry that misbehaves as field registries do.
- ``softhsm``: a private SoftHSM2 token directory, for signing keys held in PKCS#11 tokens.
- ``tools``: the peers auditors and hosts use instead of airgap: openssl, dash running ``install.sh``.
"""
