"""Enforce DESIGN.md's import arrows between the endoscope packages.

Every ``import`` statement in every package's sources (at any depth, including
imports inside functions and ``TYPE_CHECKING`` blocks) is read with ``ast`` and
checked against the table below. The stdlib-only packages are also imported in a
subprocess where importing torch fails, to prove they never need it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ROOT / "packages"

ENDOSCOPE_PACKAGES = {
    "tracing": "endoscope_tracing",
    "interleaver": "endoscope_interleaver",
    "source": "endoscope_source",
    "cache": "endoscope_cache",
    "envoy": "endoscope_envoy",
    "endoscope": "endoscope",
    "ray": "endoscope_ray",
}

# Which endoscope packages each package may import (DESIGN.md's arrows).
ALLOWED_SIBLINGS: dict[str, set[str]] = {
    "tracing": set(),
    "interleaver": set(),
    "source": set(),
    "cache": set(),
    "envoy": {"endoscope_tracing", "endoscope_interleaver", "endoscope_source", "endoscope_cache"},
    "endoscope": {"endoscope_envoy"},
    # The cache's public API writes and reads the chunks (the format is the cache's).
    "ray": {"endoscope", "endoscope_cache"},
}

# Third-party imports allowed in the stdlib-only packages.
STDLIB_ONLY_EXTRA: dict[str, set[str]] = {
    "tracing": set(),
    "interleaver": {"greenlet"},
    "source": set(),
}


def _present() -> list[str]:
    return [name for name in ENDOSCOPE_PACKAGES if (PACKAGES / name / "src").is_dir()]


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _imports_of(package: str) -> dict[str, set[str]]:
    src = PACKAGES / package / "src"
    return {
        str(path.relative_to(ROOT)): _imported_roots(path) for path in sorted(src.rglob("*.py"))
    }


@pytest.mark.parametrize("package", _present())
def test_only_allowed_sibling_imports(package: str) -> None:
    own = ENDOSCOPE_PACKAGES[package]
    allowed = ALLOWED_SIBLINGS[package] | {own}
    siblings = set(ENDOSCOPE_PACKAGES.values())
    bad = {
        file: sorted(roots & siblings - allowed)
        for file, roots in _imports_of(package).items()
        if roots & siblings - allowed
    }
    assert not bad, f"{package} imports packages DESIGN.md does not allow: {bad}"


@pytest.mark.parametrize("package", [p for p in _present() if p in STDLIB_ONLY_EXTRA])
def test_stdlib_only_packages_import_no_third_party(package: str) -> None:
    own = ENDOSCOPE_PACKAGES[package]
    allowed = set(sys.stdlib_module_names) | {own, "__future__"} | STDLIB_ONLY_EXTRA[package]
    bad = {
        file: sorted(roots - allowed)
        for file, roots in _imports_of(package).items()
        if roots - allowed
    }
    assert not bad, f"{package} must stay stdlib-only but imports: {bad}"


_BLOCK_TORCH = """
import importlib, pkgutil, sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "numpy", "transformers", "accelerate"}:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, _NoTorch())
package = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(info.name)
assert "torch" not in sys.modules
print("ok", package.__name__)
"""


@pytest.mark.parametrize("package", [p for p in _present() if p in STDLIB_ONLY_EXTRA])
def test_stdlib_only_packages_import_without_torch(package: str) -> None:
    module = ENDOSCOPE_PACKAGES[package]
    result = subprocess.run(
        [sys.executable, "-c", _BLOCK_TORCH, module],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PACKAGES / package / "src")},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"ok {module}" in result.stdout
