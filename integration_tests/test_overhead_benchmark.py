"""The overhead benchmark keeps running: ``benchmarks/overhead.py --quick`` end to end.

This proves the benchmark still works against the current packages (it checks
every scenario's result against plain torch hooks before timing, the invokes'
saved rows against one padded batch and the generated ids against a hooked
``generate``); it asserts nothing about time. Without transformers the benchmark
runs the MLP part only and says GPT-2 was skipped.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    # nnsight, transformers and matplotlib are pinned test dependencies: every part runs.
    result, report = _run("--plot", str(picture), "--compare", "nnsight")
    # 0: no endoscope variant gave a wrong result and no core, invoke or generate one raised.
    assert result.returncode == 0, report
    assert "| scenario | endoscope us |" in result.stdout, report
    assert "endo machinery us" in result.stdout, report
    assert "### MLP" in result.stdout, report
    assert "| per extra read |" in result.stdout, report
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
    assert "machinery endo/nnsight" in result.stdout, report
    assert "## Verdict" in result.stdout, report
    assert "measured targets" in result.stdout, report
    assert f"picture written to {picture}" in result.stdout, report
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", report


def test_each_variant_runs_with_its_own_librarys_tensor_backward() -> None:
    # Both libraries replace Tensor.backward at import; in one process the
    # benchmark puts back the one a variant's library installs alone (torch's own
    # for plain variants), so neither pays for the other's patch.
    import importlib.util

    import torch

    before = torch.Tensor.__dict__["backward"]
    spec = importlib.util.spec_from_file_location("overhead_under_test", BENCHMARK)
    assert spec is not None and spec.loader is not None
    overhead = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = overhead  # dataclasses look their module up
    try:
        spec.loader.exec_module(overhead)

        def torch_own(*args: object, **kwargs: object) -> None: ...

        def other_library(*args: object, **kwargs: object) -> None: ...

        ours = before
        install = overhead._backward_installer(
            {"plain": torch_own, "endoscope": ours, "nnsight": other_library}
        )
        for impl, expected in (
            ("nnsight", other_library),
            ("hooks", torch_own),
            ("floor", torch_own),
            ("endoscope", ours),
            ("plain", torch_own),
        ):
            install(impl)
            assert torch.Tensor.__dict__["backward"] is expected, impl
        overhead._backward_installer(None)("nnsight")  # no mapping: left alone
        assert torch.Tensor.__dict__["backward"] is torch_own
    finally:
        del sys.modules[spec.name]
        torch.Tensor.backward = before  # type: ignore[method-assign]
