"""Shared helpers for the endoscope-tracing tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _run_python(
    *args: str,
    source: str | None = None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run this interpreter in a subprocess and return what it printed."""
    command = [sys.executable, *args]
    if source is not None:
        command += ["-c", textwrap.dedent(source)]
    return subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
        check=False,
    )


@pytest.fixture
def write_script(tmp_path: Path):
    """Write a dedented script to a file and return its path."""

    def write(source: str, name: str = "script.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        return path

    return write


@pytest.fixture
def run_python():
    """Run this interpreter in a subprocess: ``run_python(*args, source=..., stdin=..., env=...)``."""
    return _run_python
