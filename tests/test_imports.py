"""Imports flow one way: ``datamodules/`` and ``callbacks/`` stand alone; only ``lit_cv/`` composes them.

Checked twice: statically (every ``import`` statement of every file, also those inside functions) and at run time
(importing every module in a fresh interpreter must leave ``lit_cv`` out of ``sys.modules``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

STANDALONE = ("datamodules", "callbacks")
FORBIDDEN = "lit_cv"

# In a fresh interpreter: import every module given in argv; report whether lit_cv got loaded, and by whom (the
# innermost frame of this repository's standalone packages that asked for it first).
_IMPORT_ALL = """
import importlib, json, os, sys, traceback
loader = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == FORBIDDEN and not loader:
            frames = [f for f in traceback.extract_stack() if any(f"/{p}/" in f.filename for p in STANDALONE)]
            loader.append(f"{os.path.relpath(frames[-1].filename)}:{frames[-1].lineno}" if frames else "?")
        return None
sys.meta_path.insert(0, Watch())
for module in sys.argv[1:]:
    importlib.import_module(module)
print(json.dumps({"loaded": FORBIDDEN in sys.modules, "by": loader[0] if loader else None}))
"""


def _modules(package: str) -> list[str]:
    root = REPO_ROOT / package
    return [
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in sorted(root.rglob("*.py"))
    ]


def _imported_names(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import statement in ``path``, absolute names (``from . import x`` resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(REPO_ROOT).parent.parts)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names.append((node.lineno, module))
    return sorted(names)


@pytest.mark.parametrize("package", STANDALONE)
def test_no_file_imports_lit_cv(package: str) -> None:
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {name}"
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        for line, name in _imported_names(path)
        if name.split(".")[0] == FORBIDDEN
    ]
    assert not offenders, (
        f"{package}/ must not import {FORBIDDEN} (imports flow one way: {FORBIDDEN} composes {package}):\n"
        + "\n".join(offenders)
        + "\nMove what is needed into the package, or read it from the module through a documented attribute."
    )


@pytest.mark.parametrize("package", STANDALONE)
def test_importing_every_module_leaves_lit_cv_unloaded(package: str) -> None:
    modules = _modules(package)
    assert modules, f"no modules found under {package}/"
    script = f"FORBIDDEN = {FORBIDDEN!r}\nSTANDALONE = {STANDALONE!r}\n" + _IMPORT_ALL
    result = subprocess.run(
        [sys.executable, "-c", script, *modules], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"importing the modules of {package}/ failed:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["loaded"], f"importing the modules of {package}/ loads {FORBIDDEN}, first at {report['by']}"
