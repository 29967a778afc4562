"""airgap: signed, chunked, streamed container image bundles for air-gapped networks.

The names in ``__all__`` are the supported Python API; everything else (``airgap._internal``, ``airgap._cli``)
may change without notice.  Each command of the CLI is a module holding one function of its name, which
takes a frozen options object and returns a frozen result (``airgap.install.install``, ``airgap.pack.pack``)::

    from pathlib import Path
    import airgap

    trusted = tuple(airgap.load_trusted([Path("release.pub")]))
    try:
        report = airgap.verify.verify(airgap.VerifyOptions(Path("bundle"), trusted))
    except airgap.Error as e:  # airgap.PartsFailed, airgap.TrustError, ...: e.exit_code says which kind
        raise SystemExit(f"{e.message} ({e.hint or e.default_hint})") from e
    result = airgap.install.install(airgap.InstallOptions(Path("bundle"), trusted, target="oci-archive:app.tar"))
    print([image.ref_names for image in result.images], report.trust.valid)

Progress goes to an optional :class:`Reporter`; nothing is printed.  Importing ``airgap`` is cheap: each
name is loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from airgap._version import __version__

if TYPE_CHECKING:
    from airgap import diff, inspect, install, pack, publish, sign, verify
    from airgap.diff import BundleDiff, ImageChange
    from airgap.discs import Changer, DiscRequest, VolumeCheck
    from airgap.errors import (
        ConflictError,
        DiskSpaceError,
        DockerError,
        EnvironmentProblem,
        Error,
        ExitCode,
        FormatError,
        IntegrityError,
        InternalError,
        RegistryError,
        TrustError,
        UsageError,
    )
    from airgap.inspect import Inspection
    from airgap.install import InstalledImage, InstallOptions, InstallResult
    from airgap.pack import PackOptions, PackResult, Source, parse_source
    from airgap.progress import Reporter
    from airgap.publish import TransferResult, pull
    from airgap.sign import SignOptions, SignResult
    from airgap.trust.keys import PublicKey, load_private, load_trusted
    from airgap.trust.policy import TrustResult
    from airgap.verify import PartResult, PartsFailed, VerifyOptions, VerifyReport, VolumesChecked, verify_with_receipt

# where each public name lives; loaded on first access (PEP 562)
_MODULES: dict[str, tuple[str, ...]] = {
    "airgap.pack": ("PackOptions", "PackResult", "Source", "parse_source"),
    "airgap.install": ("InstallOptions", "InstallResult", "InstalledImage"),
    "airgap.verify": ("verify_with_receipt", "VerifyOptions", "VerifyReport", "VolumesChecked", "PartResult", "PartsFailed"),
    "airgap.discs": ("Changer", "DiscRequest", "VolumeCheck"),
    "airgap.sign": ("SignOptions", "SignResult"),
    "airgap.inspect": ("Inspection",),
    "airgap.diff": ("BundleDiff", "ImageChange"),
    "airgap.publish": ("pull", "TransferResult"),
    "airgap.trust.keys": ("PublicKey", "load_trusted", "load_private"),
    "airgap.trust.policy": ("TrustResult",),
    "airgap.progress": ("Reporter",),
    "airgap.errors": (
        "Error",
        "ExitCode",
        "UsageError",
        "FormatError",
        "IntegrityError",
        "TrustError",
        "EnvironmentProblem",
        "DockerError",
        "DiskSpaceError",
        "RegistryError",
        "ConflictError",
        "InternalError",
    ),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}
# one module per command, each holding the function of its name: airgap.install.install(options)
_COMMANDS = ("diff", "inspect", "install", "pack", "publish", "sign", "verify")

__all__ = [
    "BundleDiff",
    "Changer",
    "ConflictError",
    "DiscRequest",
    "DiskSpaceError",
    "DockerError",
    "EnvironmentProblem",
    "Error",
    "ExitCode",
    "FormatError",
    "ImageChange",
    "Inspection",
    "InstallOptions",
    "InstallResult",
    "InstalledImage",
    "IntegrityError",
    "InternalError",
    "PackOptions",
    "PackResult",
    "PartResult",
    "PartsFailed",
    "PublicKey",
    "RegistryError",
    "Reporter",
    "SignOptions",
    "SignResult",
    "Source",
    "TransferResult",
    "TrustError",
    "TrustResult",
    "UsageError",
    "VerifyOptions",
    "VerifyReport",
    "VolumeCheck",
    "VolumesChecked",
    "__version__",
    "diff",
    "inspect",
    "install",
    "load_private",
    "load_trusted",
    "pack",
    "parse_source",
    "publish",
    "pull",
    "sign",
    "verify",
    "verify_with_receipt",
]

if not TYPE_CHECKING:  # mypy sees the imports above; at run time each name loads on first use

    def __getattr__(name: str) -> Any:
        """Load a public name from its module on first access (PEP 562)."""
        if name in _COMMANDS:
            return importlib.import_module(f"{__name__}.{name}")
        home = _HOME.get(name)
        if home is None:
            raise AttributeError(f"module 'airgap' has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        """The public names besides the module's own."""
        return sorted(set(globals()) | set(__all__))
