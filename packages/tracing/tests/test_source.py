"""Capture from every place Python runs code: files, -c, consoles, IPython, exec, stdin."""

from __future__ import annotations

import code
import io
import linecache
import re
import textwrap
from contextlib import redirect_stderr, redirect_stdout

import pytest

from endoscope_tracing import Tracer, UnsavedName, WithBlockNotFoundError, save

SNIPPET = """\
from endoscope_tracing import Tracer, save
base = 20
with Tracer():
    answer = save(base + 22)
    hidden = 1
print("answer", answer)
try:
    print(hidden)
except NameError as error:
    print("unsaved:", error)
"""


def unsaved_hint(filename: str, line: int = 5, name: str = "hidden") -> str:
    """What reading SNIPPET's unsaved variable says, in a script named ``filename``."""
    return (
        f"unsaved: name {name!r} was assigned inside the traced block ({filename}:{line}) but "
        "not saved, so it does not exist after the block: call .save() on it inside the block"
    )


def test_script_file(write_script, run_python) -> None:
    path = write_script(SNIPPET)
    result = run_python(str(path))
    assert result.returncode == 0, result.stderr
    assert "answer 42" in result.stdout
    assert unsaved_hint(str(path)) in result.stdout


def test_python_dash_c(run_python) -> None:
    result = run_python(source=SNIPPET)
    assert result.returncode == 0, result.stderr
    assert "answer 42" in result.stdout
    assert unsaved_hint("<string>") in result.stdout


@pytest.mark.parametrize(
    "options",
    [
        ("-W", "ignore"),
        ("-Wignore",),
        ("-X", "dev", "-W", "error::DeprecationWarning"),
        ("-B", "-q"),
        ("--check-hash-based-pycs", "default"),
    ],
)
def test_python_dash_c_after_other_options(run_python, options) -> None:
    result = run_python(*options, source=SNIPPET)
    assert result.returncode == 0, result.stderr
    assert "answer 42" in result.stdout


@pytest.mark.parametrize("flags", ["-Bc", "-qBc"])
def test_python_dash_c_combined_with_flags(run_python, flags) -> None:
    result = run_python(flags, textwrap.dedent(SNIPPET))
    assert result.returncode == 0, result.stderr
    assert "answer 42" in result.stdout


def test_python_dash_c_glued_to_its_code(run_python) -> None:
    result = run_python("-c" + textwrap.dedent(SNIPPET))
    assert result.returncode == 0, result.stderr
    assert "answer 42" in result.stdout


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
    assert "answer 42" in result.stdout
    assert unsaved_hint("<stdin>") in result.stdout


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
    assert isinstance(console.locals["scratch"], UnsavedName)
    err = io.StringIO()
    with redirect_stderr(err):
        console.push("print(scratch)")
    assert unsaved_hint("<console>", line=3, name="scratch")[len("unsaved: ") :] in err.getvalue()


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
        import warnings
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        cells = [
            "from endoscope_tracing import Tracer, save\\nbase = 3",
            "with Tracer():\\n    tripled = save(base * 3)\\n    hidden = 1\\n    base = 4",
            "for i in range(2):\\n    with Tracer():\\n        last = save(i)",
            "print('ipython', tripled, last, base)",
            "try:\\n    print(hidden)\\nexcept NameError as error:\\n    print('unsaved:', error)",
        ]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for cell in cells:
                shell.run_cell(cell).raise_error()
        for warning in caught:
            print("warned:", warning.category.__name__, warning.filename, warning.lineno)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "ipython 9 1 3" in result.stdout  # `base` was reassigned unsaved: still 3
    cell = re.search(
        r"unsaved: name 'hidden' was assigned .*\((<ipython-input-[^>]+>):3\)", result.stdout
    )
    assert cell is not None, result.stdout
    assert "call .save() on it inside the block" in result.stdout
    # One warning, for `base`, at its line in the cell.
    assert re.findall("warned: .*", result.stdout) == [f"warned: UnsavedValueWarning {cell[1]} 4"]


def test_console_output_is_not_swallowed() -> None:
    console = code.InteractiveConsole({"Tracer": Tracer, "save": save})
    out = io.StringIO()
    with redirect_stdout(out):
        for line in ["with Tracer():", "    print('inside')", ""]:
            console.push(line)
    assert out.getvalue() == "inside\n"
