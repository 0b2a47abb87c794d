"""The README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs(capsys) -> None:
    text = README.read_text(encoding="utf-8")
    example = re.search(r"## Example\n\n```python\n(.*?)```", text, re.DOTALL)
    assert example is not None
    exec(compile(example.group(1), str(README), "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert printed.startswith("CacheDict(6 modules, in memory)")
    assert "model.2.1  output=float32[3, 2] inputs=((float32[3, 8],), {})" in printed
