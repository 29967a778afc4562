"""sign: add a signature to an existing bundle (a second signer, later, offline).

A signer vouches for what the bundle holds, not only for the manifest's text, and never for what it did not
check: the existing signatures are checked against ``--trust`` first (a trusted key's signature that does not
verify stops the signing: the manifest was changed after it was signed), then every part and file is hashed
against the manifest, and only then is the signature written.

A part that ``airgap verify`` hashed whole on this host (the verified-parts cache: the same file, unchanged) is
not hashed again.  A split bundle is signed from its folders, from media mounted at once (``--from``), or from
one drive (``--one-drive``), its discs coming in any order; the signature goes beside manifest.json, on the
first volume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from airgap._internal.format import discs
from airgap._internal.format.cache import KnownBundles, VerifiedCache, known_dir
from airgap._internal.format.check import PartResult, PartsFailed
from airgap._internal.format.reader import LoadedBundle, Unexpected, find_unexpected, load_trusted_bundle
from airgap._internal.util import fsutil
from airgap.discs import Changer
from airgap.errors import EnvironmentProblem, IntegrityError, UsageError
from airgap.model.manifest import SIGNATURES_DIR, Manifest
from airgap.progress import NullReporter, Reporter
from airgap.trust import keys
from airgap.trust import policy as trust
from airgap.trust.keys import PublicKey, SigningKey
from airgap.trust.policy import TrustResult
from airgap.trust.rollback import cache_path
from airgap.trust.rollback import default_path as default_state_path


@dataclass(frozen=True)
class SignOptions:
    """What to sign: the bundle, the signing key, and the trusted keys its present signatures must meet."""

    bundle: Path
    key: SigningKey | Path  # a key file (a bare Path: unencrypted) or a key on a token; keys.open_signer opens either
    trusted: tuple[PublicKey, ...]
    threshold: int = 1
    jobs: int = os.cpu_count() or 1
    allow_expired: bool = False
    search: tuple[Path, ...] = ()  # more directories holding parts (--from: other volumes)
    changer: Changer | None = None  # --one-drive: ``bundle`` is a drive's directory, its discs come one after another


@dataclass(frozen=True)
class SignResult:
    """A signed bundle: the new signature's fingerprint, every signer it now has, and how its parts were checked."""

    bundle: Path
    fingerprint: str
    signers: tuple[str, ...]
    trust: TrustResult
    parts_hashed: int = 0
    parts_cached: int = 0  # hashed whole by 'airgap verify' on this host, unchanged since: not hashed again

    def to_dict(self) -> dict[str, object]:
        """The JSON report: the signer, every signature, the trust check, and the parts hashed or known."""
        return {
            "bundle": str(self.bundle),
            "fingerprint": self.fingerprint,
            "signers": list(self.signers),
            "signatures": self.trust.to_dict(),
            "parts_hashed": self.parts_hashed,
            "parts_cached": self.parts_cached,
        }


def summary(manifest: Manifest, result: TrustResult) -> list[str]:
    """What the signer is about to vouch for, one line each."""
    lines = [
        f"signing bundle {manifest.name} sequence {manifest.sequence}, created {manifest.created}, "
        + (f"expires {manifest.expires}" if manifest.expires else "no expiry date")
    ]
    for image in manifest.images:
        lines.append(f"  image {', '.join(image.ref_names) or '(untagged)'}  {image.image_id}  {image.platform}")
    if manifest.base:
        lines.append(f"  a delta of the bundle whose manifest is {manifest.base}")
    lines.append(f"  already signed by {', '.join(result.valid)} (trusted)")
    if result.unknown:
        lines.append(f"  and by {len(result.unknown)} key(s) not trusted here: {', '.join(fp[:16] for fp in result.unknown)}")
    return lines


def sign(options: SignOptions, reporter: Reporter | None = None) -> SignResult:
    """Add a signature by ``options.key``, after checking the present signatures and hashing every part.  The
    key opens first (a wrong passphrase or PIN fails before any part is read); a key on a token stays logged in
    until the signature is made."""
    with keys.open_signer(options.key) as signer:
        return _sign(options, signer, reporter or NullReporter())


def _sign(options: SignOptions, signer: keys.Signer, reporter: Reporter) -> SignResult:
    state_path = default_state_path()
    known = KnownBundles(known_dir(state_path))
    args = (options.trusted, options.threshold, options.allow_expired)
    if options.changer is not None:
        if options.search:
            raise UsageError("--one-drive reads every volume from BUNDLE, the drive's directory", hint="leave out --from")
        bundle, result = discs.open_drive(options.bundle, options.changer, *args, known, reporter.note)
    else:
        bundle, result = load_trusted_bundle(options.bundle, *args, options.search)
    for line in summary(bundle.manifest, result):
        reporter.note(line)
    cache = VerifiedCache(cache_path(state_path))
    results, cached = _check(bundle, options.jobs, reporter, cache)
    bad = [r for r in results if not r.ok]
    if bad:
        raise PartsFailed(bad)
    if cached:
        reporter.note(f"{cached} part(s) hashed whole by 'airgap verify' on this host and unchanged since: not hashed again")
    fingerprint, signature = trust.sign(bundle.manifest_bytes, signer)
    home = bundle.drive.require(bundle.manifest.volumes[0].name, "manifest.json") if bundle.drive is not None else bundle.path
    sig_dir = home / SIGNATURES_DIR
    try:
        sig_dir.mkdir(mode=0o755, exist_ok=True)
    except OSError as e:
        raise _unwritable(fsutil.io_error(e, str(sig_dir)), bundle) from e
    if sig_dir.is_symlink() or not sig_dir.is_dir():
        raise IntegrityError(f"{sig_dir} is not a directory", hint="bundles hold regular files and directories only")
    try:
        fsutil.atomic_write(sig_dir / f"{fingerprint}.sig", signature)
    except EnvironmentProblem as e:
        raise _unwritable(e, bundle) from e
    except OSError as e:  # its temporary file could not even be made (a read-only medium)
        raise _unwritable(fsutil.io_error(e, str(sig_dir / f"{fingerprint}.sig")), bundle) from e
    signers = tuple(sorted({*bundle.signatures, fingerprint}))
    hashed = sum(1 for r in results if r.kind == "part") - cached
    return SignResult(options.bundle, fingerprint, signers, result, hashed, cached)


def _check(bundle: LoadedBundle, jobs: int, reporter: Reporter, cache: VerifiedCache) -> tuple[list[PartResult], int]:
    """Refuse files that do not belong, then check every part and file (volume by volume for a split bundle, as the
    discs come when read from one drive), taking parts verify hashed from the cache; the results, and how many
    parts came from the cache."""
    m = bundle.manifest
    if bundle.drive is None:
        _refuse(find_unexpected(bundle))
    reporter.start("check parts", sum(i.size for i in discs.items_on(m, None)))
    if bundle.drive is None:
        results, cached = discs.check_items(bundle, discs.items_on(m, None), jobs, reporter.advance, cache, recall=True)
    else:
        results, cached = [], 0
        for done in discs.check_volumes(bundle, [v.name for v in m.volumes], jobs, reporter.advance, cache, recall=True):
            _refuse(list(done.unexpected))
            results += done.results
            cached += done.cached
    reporter.finish()
    return results, cached


def _refuse(unexpected: list[Unexpected]) -> None:
    """A signer vouches for the whole bundle: nothing else may ride along."""
    if unexpected:
        raise IntegrityError(
            f"file {unexpected[0].path} in the bundle {unexpected[0].why}",
            hint="a signer vouches for the whole bundle: remove what does not belong, or copy the bundle again",
        )


def _unwritable(e: EnvironmentProblem, bundle: LoadedBundle) -> EnvironmentProblem:
    """A signature that cannot be written, with where it has to go."""
    if not bundle.manifest.volumes:
        e.with_hint("the signature goes into the bundle's signatures/ folder: it must be writable")
        return e
    first = bundle.manifest.volumes[0].name
    e.with_hint(
        f"the signature goes beside manifest.json on {first}: sign the bundle's folders before they are burned, "
        f"or a writable copy of {first} (the other volumes can stay on their media, --from or --one-drive)"
    )
    return e
