"""The overhead benchmark keeps running: ``benchmarks/overhead.py --quick`` end to end.

This proves the benchmark still works against the current packages (it checks
every scenario's result against plain torch hooks before timing); it asserts
nothing about time. Without transformers the benchmark runs the MLP part only and
says GPT-2 was skipped.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARK = ROOT / "benchmarks" / "overhead.py"


def test_overhead_benchmark_quick_run() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, report
    assert "| scenario | endoscope us |" in result.stdout, report
    assert "### MLP" in result.stdout, report
    if importlib.util.find_spec("transformers") is None:
        assert "GPT-2 skipped" in result.stdout, report
    else:
        assert "### tiny GPT-2" in result.stdout, report
