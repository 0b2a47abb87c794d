"""Every ```python block of every README runs as written.

The root README and each package's README are read; each ```python block is written
to its own file in a fresh directory (the working directory while it runs, so what a
block writes lands there) and executed in a fresh namespace. A block is a complete
example: it imports what it uses and defines what it needs. Blocks that only show a
signature or a shape are tagged ```text, not ```python. The root README's "Ten common
tasks" are run as written, and their values checked, by test_readme_tasks.py; they are
not run twice.
"""

from __future__ import annotations

import re
import textwrap
import traceback
from pathlib import Path

import pytest
from test_readme_tasks import BLOCKS as TASK_BLOCKS
from test_readme_tasks import SECTION

ROOT = Path(__file__).resolve().parent.parent
READMES = [ROOT / "README.md", *sorted(ROOT.glob("packages/*/README.md"))]
# A fence may be indented (a block inside a list item); its body is dedented.
FENCE = re.compile(r"^([ \t]*)```python[ \t]*\n(.*?)^\1```", re.S | re.M)


def python_blocks(readme: Path) -> list[tuple[int, str]]:
    """``(line, source)`` of each ```python block of ``readme``, in order."""
    text = readme.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start()) + 2, textwrap.dedent(m[2])) for m in FENCE.finditer(text)
    ]


def _tasks_section() -> range:
    """The root README's lines that test_readme_tasks.py runs."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + 1)
    return range(text.count("\n", 0, start) + 1, text.count("\n", 0, end) + 1)


BLOCKS = [
    pytest.param(readme, line, source, id=f"{readme.relative_to(ROOT).as_posix()}:{line}")
    for readme in READMES
    for line, source in python_blocks(readme)
    if not (readme == READMES[0] and line in _tasks_section())
]


def test_every_readme_is_searched_and_has_examples() -> None:
    packages = {p.parent.name for p in READMES[1:]}
    assert {"tracing", "interleaver", "source", "cache", "envoy", "endoscope"} <= packages
    assert len(BLOCKS) + len(TASK_BLOCKS) >= 20
    assert len(TASK_BLOCKS) == len(python_blocks(READMES[0])) - sum(
        1 for param in BLOCKS if param.values[0] == READMES[0]
    )


@pytest.mark.parametrize(("readme", "line", "source"), BLOCKS)
def test_block_runs_as_written(
    readme: Path, line: int, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name = f"{readme.parent.name}_readme_line_{line}"
    # Line numbers in a failure's traceback match the README's.
    path = tmp_path / f"{name}.py"
    path.write_text("\n" * (line - 1) + source, encoding="utf-8")
    namespace = {"__name__": name, "__file__": str(path)}
    try:
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    except Exception as error:
        details = "".join(traceback.format_exception(error))
        pytest.fail(f"{readme.name} block at line {line} failed:\n{details}", pytrace=False)
