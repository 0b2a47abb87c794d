"""The README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from endoscope_interleaver import ThreadScheduler

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert namespace["result"] == 21
    assert namespace["saved"] == {"h0": 1, "h1": 20}


def test_readme_example_with_threads() -> None:
    source = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)[0]
    source = source.replace("Interleaver()", "Interleaver(scheduler=ThreadScheduler())")
    namespace: dict[str, object] = {
        "__name__": "readme_example",
        "ThreadScheduler": ThreadScheduler,
    }
    exec(compile(source, str(README), "exec"), namespace)
    assert namespace["result"] == 21
