"""The examples each command's ``--help`` ends with (its click epilog), and the man pages' EXAMPLES.

Each example is a comment and one command line.  The tests parse every ``airgap ...`` invocation here with
the command's own option parser, so an example cannot name an option that no longer exists.
"""

from __future__ import annotations

Example = tuple[str, str]  # (what it does, the command line)

EXAMPLES: dict[str, tuple[Example, ...]] = {
    "airgap": (
        (
            "security team: pack and sign, parts no larger than a FAT32 file",
            "airgap pack coding-agent:1.0 -o bundle/ --key security-team.key --part-size fat32",
        ),
        ("auditor: check the signature and every part, install nothing", "airgap verify bundle/ --trust security-team.pub"),
        ("field engineer, offline: verify and load into Docker", "airgap install bundle/ --trust security-team.pub"),
        ("what this host installed", "airgap list"),
    ),
    "keygen": (
        (
            "a key pair encrypted with the passphrase in $AIRGAP_PASS: security-team.key and security-team.pub",
            "airgap keygen --out security-team --passphrase-env AIRGAP_PASS",
        ),
        (
            "the key pair on a PKCS#11 token; only security-team.pub is written",
            "airgap keygen --pkcs11 'pkcs11:token=security-team;object=release-2027' --pin-env TOKEN_PIN --out security-team",
        ),
    ),
    "pack": (
        (
            "from the Docker engine, 4 GiB parts, valid for 90 days",
            "airgap pack coding-agent:1.0 -o bundle/ --key security-team.key --passphrase-env AIRGAP_PASS --part-size 4GiB --expires 90d",
        ),
        (
            "straight from a registry, both platforms in one bundle",
            "airgap pack oci://registry.corp:5000/agents/coding-agent:1.0 --platform linux/amd64,linux/arm64 -o bundle/ --key security-team.key",
        ),
        (
            "one vol-NN folder per DVD",
            "airgap pack coding-agent:1.0 -o discs/ --key security-team.key --part-size 1GiB --media-dir-size dvd",
        ),
        (
            "a delta: only the layers bundle-1.0/ does not have",
            "airgap pack coding-agent:1.1 --since bundle-1.0/ -o delta-1.1/ --key security-team.key",
        ),
    ),
    "sign": (
        (
            "a second signature, after checking the first against the security team's key",
            "airgap sign bundle/ --key release-manager.key --trust security-team.pub",
        ),
    ),
    "verify": (
        ("two signatures from the keys in trusted-keys/ required", "airgap verify bundle/ --trust trusted-keys/ --threshold 2"),
        (
            "keep signed evidence of the check",
            "airgap verify bundle/ --trust security-team.pub --receipt receipt.json --receipt-key auditor.key",
        ),
        ("a bundle split over discs, all mounted", "airgap verify /media/vol-01 --from /media/vol-02 --trust security-team.pub"),
    ),
    "inspect": (
        ("what a bundle holds, without checking anything", "airgap inspect bundle/"),
        ("the manifest and signers, for a script", "airgap inspect bundle/ --json"),
    ),
    "install": (
        ("verify, then load into the Docker engine at DOCKER_HOST", "airgap install bundle/ --trust security-team.pub"),
        (
            "push into the site's offline registry",
            "airgap install bundle/ --trust trusted-keys/ --threshold 2 --to registry://registry.site:5000/mirror",
        ),
        ("import into containerd for the kubelet", "airgap install bundle/ --trust security-team.pub --to containerd://"),
        (
            "a delta on a host that lacks its base's layers",
            "airgap install delta-1.1/ --trust security-team.pub --base bundle-1.0/",
        ),
    ),
    "publish": (
        ("carry a bundle through a transfer registry", "airgap publish bundle/ oci://transfer.corp/bundles/coding-agent:1.0"),
    ),
    "pull": (
        (
            "fetch it on the other side (run again to resume), then verify it",
            "airgap pull oci://transfer.corp/bundles/coding-agent:1.0 -o bundle/",
        ),
    ),
    "diff": (("which images, layers and bytes changed between two releases", "airgap diff bundle-1.0/ bundle-1.1/"),),
    "list": (
        ("what this host installed, from which bundle and sequence, signed by whom", "airgap list"),
        ("another install state, as JSON", "airgap list --state /var/lib/airgap/installed.json --json"),
    ),
    "completion": (
        ("bash: add to ~/.bashrc", 'eval "$(airgap completion bash)"'),
        ("zsh: add to ~/.zshrc", 'eval "$(airgap completion zsh)"'),
        ("fish", "airgap completion fish > ~/.config/fish/completions/airgap.fish"),
    ),
}


def epilog(command: str) -> str | None:
    """The ``Examples:`` block ending COMMAND's help (``airgap`` for the group); ``\\b`` keeps click from
    rewrapping it."""
    examples = EXAMPLES.get(command)
    if not examples:
        return None
    lines = ["Examples:", "", "\b"]
    for comment, line in examples:
        lines += [f"  # {comment}", f"  {line}"]
    return "\n".join(lines)
