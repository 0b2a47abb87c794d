"""The overhead benchmark keeps running: ``benchmarks/overhead.py --quick`` end to end.

This proves the benchmark still works against the current packages (it checks
every scenario's result against plain torch hooks before timing, the invokes'
saved rows against one padded batch and the generated ids against a hooked
``generate``); it asserts nothing about time. Without transformers the benchmark
runs the MLP part only and says GPT-2 was skipped.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARK = ROOT / "benchmarks" / "overhead.py"


def _run(*options: str) -> tuple[subprocess.CompletedProcess[str], str]:
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", *options],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    return result, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def test_overhead_benchmark_quick_run(tmp_path: Path) -> None:
    picture = tmp_path / "overhead.png"
    compare = importlib.util.find_spec("nnsight") is not None
    result, report = _run("--plot", str(picture), *(("--compare", "nnsight") if compare else ()))
    # 0: no endoscope variant gave a wrong result and no core, invoke or generate one raised.
    assert result.returncode == 0, report
    assert "| scenario | endoscope us |" in result.stdout, report
    assert "endo machinery us" in result.stdout, report
    assert "### MLP" in result.stdout, report
    assert "| per extra read |" in result.stdout, report
    if importlib.util.find_spec("transformers") is None:
        assert "GPT-2 skipped" in result.stdout, report
        assert "invokes and generation skipped" in result.stdout, report
    else:
        assert "### tiny GPT-2 (n_layer=2, n_embd=32, n_head=2, vocab 100)" in result.stdout, report
        for row in (
            "| 1 invoke, one save each |",
            "| 8 invokes, one save each |",
            "| 32 invokes, one save each |",
            "| generate 8 tokens, an edit per step |",
            "| generate 64 tokens, an edit per step |",
            "| per extra invoke |",
            "| per extra generated step |",
        ):
            assert row in result.stdout, report
    if compare:
        assert "machinery endo/nnsight" in result.stdout, report
        assert "## Verdict" in result.stdout, report
        assert "measured targets" in result.stdout, report
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not importable: the picture is not drawn")
    assert f"picture written to {picture}" in result.stdout, report
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", report
