"""Finding the source text of the code a frame runs.

Where Python keeps the text depends on how the code was started:

* files, modules in zips, IPython/Jupyter cells, the 3.13 REPL and ``exec`` of a
  string whose text was registered under its filename: :mod:`linecache`;
* ``python -c CODE``: ``sys.orig_argv``;
* ``code.InteractiveConsole`` (and consoles built on it): the ``source`` argument
  of the ``runsource`` frame above the user's code;
* ``python - < script.py`` with stdin redirected from a regular file: the file
  behind descriptor 0, read again from the start.

Nothing else keeps it (a script piped through a pipe, the classic REPL, ``exec``
of an unregistered string); for those :class:`WithBlockNotFoundError` says why and
what to do.
"""

from __future__ import annotations

import linecache
import os
import stat
import sys
from types import FrameType

from ._errors import WithBlockNotFoundError

__all__ = ["SourceReader", "read_source"]


class SourceReader:
    """Looks up the source lines of a frame's code; one instance serves the process.

    Attributes:
        reads: how many times source text was looked up. The per-call-site cache
            means a ``with`` block run again never reaches here; tests count this.
    """

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self, frame: FrameType) -> list[str]:
        """The source lines (with line endings) of the code running in ``frame``.

        Raises:
            WithBlockNotFoundError: no text can be found; the message says why.
        """
        self.reads += 1
        filename = frame.f_code.co_filename
        lines = linecache.getlines(filename, frame.f_globals)
        if lines:
            return lines
        if filename == "<string>":
            command = _command_line_source()
            if command is not None:
                return command.splitlines(keepends=True)
        console = _console_source(frame)
        if console is not None:
            return console.splitlines(keepends=True)
        if filename == "<stdin>":
            redirected = _redirected_stdin_source()
            if redirected is not None:
                return redirected.splitlines(keepends=True)
        raise WithBlockNotFoundError(_explain_missing(filename, frame.f_lineno))


read_source = SourceReader()


def _command_line_source() -> str | None:
    """The CODE of ``python -c CODE``, if this process was started that way.

    Reads the interpreter's options as CPython does: flags may be combined
    (``-Bc CODE``, ``-cCODE``), ``-W`` and ``-X`` take an argument (``-W ignore``,
    ``-Wignore``), and a script, ``-m`` or ``-`` before any ``-c`` means no -c.
    """
    argv = getattr(sys, "orig_argv", None) or []
    index = 1
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "-" or arg == "--" or not arg.startswith("-"):
            return None  # stdin or a script comes first: no -c
        if arg.startswith("--"):
            if arg in _LONG_OPTIONS_WITH_ARGUMENT:
                index += 1
            continue
        flags = arg[1:]
        for position, flag in enumerate(flags):
            rest = flags[position + 1 :]
            if flag == "c":
                if rest:
                    return rest
                return argv[index] if index < len(argv) else None
            if flag == "m":
                return None
            if flag in _OPTIONS_WITH_ARGUMENT:
                if not rest:
                    index += 1  # the argument is the next word
                break  # the rest of this word is the argument
    return None


# CPython's options that take an argument (the -c and -m forms are handled apart).
_OPTIONS_WITH_ARGUMENT = frozenset("WX")
_LONG_OPTIONS_WITH_ARGUMENT = frozenset({"--check-hash-based-pycs"})


def _console_source(frame: FrameType) -> str | None:
    """The text an interactive console is running, from its ``runsource`` frame."""
    caller = frame.f_back
    for _ in range(8):
        if caller is None:
            return None
        if caller.f_code.co_name == "runsource":
            source = caller.f_locals.get("source")
            if isinstance(source, str):
                return source
        caller = caller.f_back
    return None


def _redirected_stdin_source() -> str | None:
    """The script behind stdin when stdin is a regular file (``python - < f.py``)."""
    try:
        info = os.fstat(0)
        if not stat.S_ISREG(info.st_mode):
            return None
        data = os.pread(0, info.st_size, 0)
    except OSError:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _explain_missing(filename: str, line: int) -> str:
    where = f"{filename}, line {line}"
    if filename == "<stdin>":
        why = (
            "Python read this code from standard input (a pipe or the classic "
            "interactive prompt), which keeps no copy of the text."
        )
        fix = (
            "Save the code to a file and run `python file.py`, pass it with "
            "`python -c`, redirect a file with `python - < file.py`, or use IPython, "
            "Jupyter or `code.interact()`."
        )
    elif filename.startswith("<"):
        why = (
            "The code was compiled from a string (exec/compile) whose text was not "
            "registered in linecache."
        )
        fix = (
            "Register the text before running it, e.g. "
            "`linecache.cache[name] = (len(src), None, src.splitlines(True), name)` "
            "and compile with that same `name` as filename, or put the code in a file."
        )
    else:
        why = "The file could not be read (moved, deleted, or not Python source)."
        fix = "Run the code from a readable .py file."
    return f"endoscope could not find the source of the traced `with` block at {where}. {why} {fix}"
