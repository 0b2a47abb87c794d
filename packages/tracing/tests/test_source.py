"""Capture from every place Python runs code: files, -c, consoles, IPython, exec, stdin."""

from __future__ import annotations

import code
import io
import linecache
import textwrap
from contextlib import redirect_stdout

import pytest

from endoscope_tracing import Tracer, WithBlockNotFoundError, save

SNIPPET = """\
from endoscope_tracing import Tracer, save
base = 20
with Tracer():
    answer = save(base + 22)
    hidden = 1
print("answer", answer, "hidden" in dir())
"""


def test_script_file(write_script, run_python) -> None:
    result = run_python(str(write_script(SNIPPET)))
    assert result.returncode == 0, result.stderr
    assert "answer 42 False" in result.stdout


def test_python_dash_c(run_python) -> None:
    result = run_python(source=SNIPPET)
    assert result.returncode == 0, result.stderr
    assert "answer 42 False" in result.stdout


def test_python_dash_c_in_a_function(run_python) -> None:
    result = run_python(
        source="""
        from endoscope_tracing import Tracer, save
        def f(k):
            for i in range(3):
                with Tracer():
                    v = save(i * k)
            return v
        print("value", f(5))
        """
    )
    assert result.returncode == 0, result.stderr
    assert "value 10" in result.stdout


def test_stdin_redirected_from_a_file(write_script) -> None:
    path = write_script(SNIPPET)
    import subprocess
    import sys

    with path.open() as stdin:
        result = subprocess.run(
            [sys.executable, "-"], stdin=stdin, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 0, result.stderr
    assert "answer 42 False" in result.stdout


def test_stdin_pipe_explains_what_to_do(run_python) -> None:
    result = run_python("-", stdin=SNIPPET)
    assert result.returncode != 0
    assert "WithBlockNotFoundError" in result.stderr
    assert "<stdin>" in result.stderr
    assert "Save the code to a file" in result.stderr


def test_exec_of_registered_source() -> None:
    source = textwrap.dedent(
        """
        with Tracer():
            out = save(value * 2)
        """
    )
    name = "<registered cell 1>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace = {"Tracer": Tracer, "save": save, "value": 21}
    exec(compile(source, name, "exec"), namespace)
    assert namespace["out"] == 42


def test_exec_with_separate_locals() -> None:
    source = "with Tracer():\n    out = save(value * 2)\n"
    name = "<registered cell 2>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    global_ns = {"Tracer": Tracer, "save": save}
    local_ns = {"value": 5}
    exec(compile(source, name, "exec"), global_ns, local_ns)
    assert local_ns["out"] == 10
    assert "out" not in global_ns


def test_exec_of_unregistered_string_explains_linecache() -> None:
    namespace = {"Tracer": Tracer, "save": save}
    with pytest.raises(WithBlockNotFoundError, match="linecache"):
        exec("with Tracer():\n    out = save(1)\n", namespace)


def test_interactive_console_in_process() -> None:
    console = code.InteractiveConsole({"Tracer": Tracer, "save": save, "__name__": "__console__"})
    lines = [
        "base = 2",
        "with Tracer():",
        "    doubled = save(base * 2)",
        "    scratch = 1",
        "",
        "for i in range(3):",
        "    with Tracer():",
        "        last = save(i)",
        "",
    ]
    for line in lines:
        console.push(line)
    assert console.locals["doubled"] == 4
    assert console.locals["last"] == 2
    assert "scratch" not in console.locals


def test_code_interact_reading_stdin(run_python) -> None:
    result = run_python(
        "-c",
        "import code; code.interact(banner='', exitmsg='')",
        stdin=(
            "from endoscope_tracing import Tracer, save\n"
            "with Tracer():\n"
            "    x = save(6 * 7)\n"
            "\n"
            "print('console', x)\n"
        ),
    )
    assert result.returncode == 0, result.stderr
    assert "console 42" in result.stdout


def test_ipython_cells(run_python) -> None:
    result = run_python(
        source="""
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        cells = [
            "from endoscope_tracing import Tracer, save\\nbase = 3",
            "with Tracer():\\n    tripled = save(base * 3)\\n    hidden = 1",
            "for i in range(2):\\n    with Tracer():\\n        last = save(i)",
            "print('ipython', tripled, last, 'hidden' in dir())",
        ]
        for cell in cells:
            shell.run_cell(cell).raise_error()
        """
    )
    assert result.returncode == 0, result.stderr
    assert "ipython 9 1 False" in result.stdout


def test_console_output_is_not_swallowed() -> None:
    console = code.InteractiveConsole({"Tracer": Tracer, "save": save})
    out = io.StringIO()
    with redirect_stdout(out):
        for line in ["with Tracer():", "    print('inside')", ""]:
            console.push(line)
    assert out.getvalue() == "inside\n"
