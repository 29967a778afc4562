"""The installer's state: the newest bundle sequence installed per bundle name (rollback protection)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from airgap._internal.fsutil import atomic_write, io_error
from airgap.errors import FormatError
from airgap.trust import Installed


def default_path() -> Path:
    if os.environ.get("AIRGAP_STATE"):
        return Path(os.environ["AIRGAP_STATE"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "airgap" / "installed.json"


def cache_path(state_path: Path) -> Path:
    """The verified-parts cache (see _internal/cache.py) lives beside the install state."""
    return state_path.with_name("verified.jsonl")


class InstallState:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise io_error(e, str(self.path)) from e
        except ValueError as e:
            raise FormatError(
                f"install state {self.path} is not valid JSON", hint="restore it from a backup, or move it away to start afresh"
            ) from e
        if not isinstance(data, dict) or not isinstance(data.get("bundles"), dict):
            raise FormatError(f"install state {self.path} is not an airgap state file")
        bundles: dict[str, dict[str, object]] = data["bundles"]
        return bundles

    def get(self, name: str) -> Installed | None:
        entry = self._load().get(name)
        if entry is None:
            return None
        seq, digest = entry.get("sequence"), entry.get("manifest_sha256")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(digest, str):
            raise FormatError(f"install state {self.path} has a malformed entry for {name}")
        return Installed(seq, digest)

    def record(self, name: str, sequence: int, manifest_sha256: str, when: str) -> None:
        bundles = self._load()
        current = bundles.get(name)
        if isinstance(current, dict) and isinstance(current.get("sequence"), int) and current["sequence"] > sequence:  # type: ignore[operator]
            return  # a forced downgrade does not lower the mark
        bundles[name] = {"sequence": sequence, "manifest_sha256": manifest_sha256, "installed": when}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise io_error(e, str(self.path.parent)) from e
        atomic_write(self.path, (json.dumps({"bundles": bundles}, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
