"""The checkout the tests run from, and the one way tests import a module from ``scripts/``.

``scripts/`` holds programs (``demo.py``, ``bench``) and the sample image builder they share; it is not a
package and the tests do not put it on ``sys.path``.  :func:`load_script` imports one file by its path
under its own name, so ``scripts/`` stays as it is and nothing else in it becomes importable.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/NAME.py`` as the module ``NAME``, imported once per process."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    path = SCRIPTS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}", path=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before it runs: its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
