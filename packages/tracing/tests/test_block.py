"""CapturedBlock: finding the with statement, statements a block cannot hold."""

from __future__ import annotations

import linecache
import textwrap

import pytest

from endoscope_tracing import Tracer, UnsupportedBlockError, WithBlockNotFoundError, save
from endoscope_tracing._block import find_with_node


def run_registered(source: str, name: str) -> dict:
    source = textwrap.dedent(source)
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace: dict = {"Tracer": Tracer, "save": save}
    exec(compile(source, name, "exec"), namespace)
    return namespace


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ("def f():\n    with Tracer():\n        return 1\nf()", "`return`"),
        ("def f():\n    with Tracer():\n        yield 1\nlist(f())", "`yield`"),
        ("for i in range(2):\n    with Tracer():\n        break", "`break`"),
        ("for i in range(2):\n    with Tracer():\n        continue", "`continue`"),
        (
            "class A:\n    def m(self):\n        with Tracer():\n            super().m()\nA().m()",
            "super()",
        ),
    ],
)
def test_unsupported_statements_fail_at_their_line(body: str, what: str) -> None:
    with pytest.raises(UnsupportedBlockError) as caught:
        run_registered(body, f"<unsupported {what}>")
    error = caught.value
    assert what in str(error)
    assert error.filename == f"<unsupported {what}>"
    lines = body.splitlines()
    assert error.lineno is not None
    assert what.strip("`").split("(")[0] in lines[error.lineno - 1]


def test_loops_and_functions_inside_the_block_may_use_those_statements() -> None:
    namespace = run_registered(
        """
        with Tracer():
            def first_even(items):
                for item in items:
                    if item % 2:
                        continue
                    return item
            found = save(first_even([1, 3, 4, 5]))
            while True:
                break
        """,
        "<allowed statements>",
    )
    assert namespace["found"] == 4


def test_find_with_node_picks_the_innermost_statement() -> None:
    source = textwrap.dedent(
        """
        with a:
            with b(
                1,
            ) as c:
                pass
        """
    ).splitlines(True)
    assert find_with_node(source, 2, "<x>").lineno == 2
    assert find_with_node(source, 3, "<x>").lineno == 3
    assert find_with_node(source, 4, "<x>").lineno == 3


def test_find_with_node_without_a_with_statement() -> None:
    with pytest.raises(WithBlockNotFoundError, match="no `with` statement"):
        find_with_node(["x = 1\n"], 1, "<x>")


def test_unparsable_source_is_explained() -> None:
    with pytest.raises(WithBlockNotFoundError, match="could not parse"):
        find_with_node(["with (:\n"], 1, "<x>")


def test_multiline_header_and_tuple_target() -> None:
    namespace = run_registered(
        """
        holder = type("Holder", (), {})()
        with Tracer(
            # a comment inside the header
        ) as holder.tracer:
            same = save(holder.tracer)
        """,
        "<multiline header>",
    )
    assert namespace["same"] is namespace["holder"].tracer


def test_future_annotations_of_the_caller_apply() -> None:
    namespace = run_registered(
        """
        from __future__ import annotations
        with Tracer():
            def f(x: DoesNotExist) -> AlsoMissing:
                return x
            annotations_seen = save(f.__annotations__)
        """,
        "<future annotations>",
    )
    assert namespace["annotations_seen"] == {"x": "DoesNotExist", "return": "AlsoMissing"}
