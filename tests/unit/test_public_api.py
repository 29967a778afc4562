"""The public API: every name ``airgap.__all__`` promises resolves, is documented, exposes no private type in
its signature, and importing ``airgap`` alone loads none of it.  The module docstring's example runs."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import shutil
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import airgap

PUBLIC = sorted(airgap.__all__)
COMMANDS = [name for name in PUBLIC if isinstance(getattr(airgap, name), types.ModuleType)]
DOCUMENTED = [name for name in PUBLIC if name != "__version__"]
# every public callable: the names in __all__, and each command module's function of its name
CALLABLES = [name for name in DOCUMENTED if name not in COMMANDS] + [f"{name}.{name}" for name in COMMANDS]
# public types whose signature still names a private one: remove an entry once the core no longer does
LEAKS = {
    "Inspection": "Inspection.bundle is the internal LoadedBundle",
    "install.install": "install(connect=...) names the internal docker client Engine",
    "pack.pack": "pack(connect=...) names the internal docker client Engine",
}


def _public(dotted: str) -> Any:
    value: Any = airgap
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _own_doc(obj: object) -> str:
    """The object's own docstring: not inherited, not the signature dataclasses write when there is none."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return ""
    if isinstance(obj, type) and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""
    return doc.strip()


def _hints(obj: Any) -> dict[str, Any]:
    """The resolved annotations of a function, or of a class with its public methods and properties."""
    if not isinstance(obj, type):
        return typing.get_type_hints(obj)
    hints = dict(typing.get_type_hints(obj))
    for attr, member in vars(obj).items():
        if attr.startswith("_") and attr != "__init__":
            continue
        function = member.fget if isinstance(member, property) else member
        if isinstance(function, (classmethod, staticmethod)):
            function = function.__func__
        if inspect.isfunction(function):
            hints.update({f"{attr}.{k}": v for k, v in typing.get_type_hints(function).items()})
    return hints


def _types_in(annotation: Any) -> Iterator[type]:
    """Every class an annotation names, through unions, generics and callables."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        yield annotation
    origin = typing.get_origin(annotation)
    if isinstance(origin, type) and origin is not types.UnionType:
        yield origin
    for arg in typing.get_args(annotation):
        yield from _types_in(arg)


def _private(cls: type) -> bool:
    """An airgap type from a private module (``airgap._internal``...) that ``__all__`` does not export."""
    module = cls.__module__
    exported = any(getattr(airgap, name, None) is cls for name in PUBLIC)
    return module.startswith("airgap.") and any(part.startswith("_") for part in module.split(".")) and not exported


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_resolves_to_its_module(name: str) -> None:
    value = getattr(airgap, name)
    assert name in dir(airgap)
    if isinstance(value, types.ModuleType):
        assert value is importlib.import_module(f"airgap.{name}")
        assert callable(getattr(value, name)), f"airgap.{name} holds no function {name}"
    elif name != "__version__":
        home = importlib.import_module(value.__module__)
        assert getattr(home, name) is value


def test_all_lists_each_name_once_and_no_private_one() -> None:
    assert len(set(airgap.__all__)) == len(airgap.__all__)
    assert [n for n in airgap.__all__ if n.startswith("_") and n != "__version__"] == []


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'LoadedBundle'"):
        airgap.LoadedBundle  # type: ignore[attr-defined]  # noqa: B018


@pytest.mark.parametrize("name", DOCUMENTED + [f"{c}.{c}" for c in COMMANDS])
def test_every_public_name_has_a_docstring(name: str) -> None:
    assert _own_doc(_public(name)), f"airgap.{name} has no docstring of its own"


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.xfail(reason=LEAKS[n], strict=True)) if n in LEAKS else n for n in CALLABLES]
)
def test_no_private_type_in_a_public_signature(name: str) -> None:
    obj = _public(name)
    if not callable(obj):
        return
    leaked = [
        f"{where}: {cls.__module__}.{cls.__qualname__}"
        for where, hint in _hints(obj).items()
        for cls in _types_in(hint)
        if _private(cls)
    ]
    assert leaked == []
    inspect.signature(obj)  # every public callable has a signature a caller can read


def test_private_type_in_a_signature_is_caught() -> None:
    from airgap._internal.format.reader import LoadedBundle

    def leaky(bundle: object) -> None:
        """A public-looking function taking an internal type."""

    leaky.__annotations__ = {"bundle": tuple[LoadedBundle, ...] | None, "return": None}
    assert LoadedBundle in set(_types_in(_hints(leaky)["bundle"]))
    assert _private(LoadedBundle)
    assert not _private(Path) and not _private(airgap.VerifyReport)


def test_importing_airgap_loads_none_of_the_api() -> None:
    code = "import sys, airgap; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
    code += "('airgap', 'click', 'cryptography', 'docker', 'requests', 'zstandard', 'tqdm'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == ["airgap", "airgap._version"]


def test_a_command_is_its_module_whatever_was_imported_first(monkeypatch: pytest.MonkeyPatch) -> None:
    code = (
        "import airgap\n"
        "first = airgap.install\n"
        "import airgap.install, airgap.pack\n"
        "from airgap.pack import PackOptions\n"
        "assert airgap.install is first is sys.modules['airgap.install'], airgap.install\n"
        "assert callable(airgap.pack.pack) and airgap.PackOptions is PackOptions\n"
    )
    subprocess.run([sys.executable, "-c", "import sys\n" + code], check=True)
    # so a dotted path through a command module reaches the module's attribute (mock.patch, monkeypatch)
    monkeypatch.setattr("airgap.install.default_state_path", lambda: Path("/nonexistent/state.json"))
    assert importlib.import_module("airgap.install").default_state_path() == Path("/nonexistent/state.json")


def test_docstring_example_runs(
    bundle: Path, keypair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = re.search(r"::\n\n((?:    .*\n|\n)+)", airgap.__doc__ or "")
    assert block is not None
    example = "\n".join(line[4:] for line in block.group(1).splitlines())
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(bundle, work / "bundle")
    shutil.copy(keypair[1], work / "release.pub")
    monkeypatch.chdir(work)
    printed: list[str] = []
    namespace = {"print": lambda *a: printed.append(" ".join(map(str, a)))}
    exec(compile(example, "airgap.__doc__", "exec"), namespace)  # noqa: S102  # our own docstring
    assert printed and "airgap-test/agent:1.0" in printed[0]
    assert (work / "app.tar").stat().st_size > 0
