"""testing/constraints.txt pins every test dependency exactly, and this environment
holds nothing else (what `nox` checks after each install, and `nox -s pins` reads)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "testing" / "constraints.txt"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "testing" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # check_pinned imports outdated by name
    spec.loader.exec_module(module)
    return module


outdated = _load("outdated")
check_pinned = _load("check_pinned")


def test_every_line_is_an_exact_pin() -> None:
    lines = [
        line.strip()
        for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(outdated.pins(CONSTRAINTS)) == len(lines) > 90
    names = {check_pinned.canonical(name) for name, _, _ in outdated.pins(CONSTRAINTS)}
    for wanted in ("torch", "transformers", "accelerate", "safetensors", "greenlet", "pytest",
                   "ruff", "mypy", "matplotlib", "ipython", "ray", "nnsight", "hatchling"):  # fmt: skip
        assert wanted in names, wanted
    assert ("torch", "2.13.0", "") in outdated.pins(CONSTRAINTS)


def test_a_marker_pins_one_version_per_python(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(
        '# comment\nipython==8.39.0; python_version < "3.11"  # why\nFoo_Bar==1.0\nnot-a-pin>=2\n'
    )
    assert outdated.pins(path) == [
        ("ipython", "8.39.0", 'python_version < "3.11"'),
        ("Foo_Bar", "1.0", ""),
    ]


def test_this_environment_holds_only_pinned_versions(capsys) -> None:
    assert check_pinned.main(["check_pinned", str(CONSTRAINTS)]) == 0, capsys.readouterr().out


def test_an_unpinned_or_other_version_is_reported(tmp_path: Path, capsys) -> None:
    kept = [
        line
        for line in CONSTRAINTS.read_text().splitlines()
        if not line.startswith(("pytest==", "torch=="))
    ]
    (tmp_path / "c.txt").write_text("\n".join([*kept, "torch==0.0.1"]) + "\n")
    assert check_pinned.main(["check_pinned", str(tmp_path / "c.txt")]) == 1
    out = capsys.readouterr().out
    assert "pytest==" in out and "is installed but not pinned" in out
    assert "is installed but pinned to 0.0.1" in out
