"""CapturedBlock: finding the with statement, statements a block cannot hold."""

from __future__ import annotations

import linecache
import sys
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


def block_of(body: str):
    """The CapturedBlock of ``with tracer:`` around ``body`` (not run)."""
    source = "tracer = Tracer(backend=lambda tracer: None)\nwith tracer:\n" + textwrap.indent(
        textwrap.dedent(body).strip("\n"), "    "
    )
    return run_registered(source + "\n", f"<block {hash(body)}>")["tracer"].info.block


@pytest.mark.parametrize(
    ("body", "bound"),
    [
        ("h = model.out", {"h"}),
        ("a, (b, *c) = 1, (2, 3)", {"a", "b", "c"}),
        ("n += 1", {"n"}),
        ("for i, x in pairs:\n    pass", {"i", "x"}),
        ("import os.path as p, sys\nfrom json import dumps", {"p", "sys", "dumps"}),
        ("def f(q):\n    r = q\nclass K:\n    s = 1", {"f", "K"}),
        ("def f():\n    global t\n    t = 1\ng = lambda: (u := 2)", {"f", "t", "g", "u"}),
        ("try:\n    pass\nexcept Exception as e:\n    pass", {"e"}),
        ("with open(f) as fh:\n    pass", {"fh"}),
        ("if (w := 3):\n    pass", {"w"}),
        ("del old", {"old"}),
        (
            "match v:\n    case [first, *rest]:\n        pass\n    case {**kw}:\n        pass",
            {"first", "rest", "kw"},
        ),
        ("y = [z for z in range(3)]", {"y"}),
        ("y = {k: v for k, v in d if (last := k)}", {"y", "last"}),
        ("model.layer.output = h", set()),
        ("items.append(model.out)", set()),
    ],
)
def test_assigned_names_of_a_body(body: str, bound: set[str]) -> None:
    block = block_of(body)
    assert block.assigned == bound
    assert not block.introspects


@pytest.mark.parametrize(
    "body",
    [
        "exec('x = 1')",
        "eval('x')",
        "d = globals()",
        "vars()",
        "from os import *",
        "f(locals())",
        "def f():\n    return locals()",
        "y = [eval(z) for z in names]",
    ],
)
def test_a_body_that_introspects_is_marked(body: str) -> None:
    assert block_of(body).introspects


def test_may_share_with() -> None:
    writer = block_of("h = model.layer.output")
    reader = block_of("model.layer.output = h")
    unrelated = block_of("out = model.layer.output")
    declares = block_of("global h\nprint(h)")
    introspecting = block_of("print(eval('h'))")
    assert writer.may_share_with(reader)
    assert not reader.may_share_with(writer)  # it assigns nothing
    assert not writer.may_share_with(unrelated)  # both mention `model`, only reads
    assert not unrelated.may_share_with(writer)
    assert writer.may_share_with(declares)
    assert writer.may_share_with(introspecting)
    assert introspecting.may_share_with(unrelated)


@pytest.mark.parametrize(
    ("body", "first"),
    [
        ("model.layer.output = h", {"model", "h"}),
        ("h = model.out\nmodel.layer.output = h", {"model"}),
        ("h = h + 1", {"h"}),
        ("n += 1", {"n"}),
        ("for i in items:\n    print(i)\nprint(i)", {"items", "print", "i"}),
        ("if c:\n    a = 1\nelse:\n    a = 2\nprint(a)", {"c", "print"}),
        ("if c:\n    a = 1\nprint(a)", {"c", "print", "a"}),
        ("with open(f) as fh:\n    g = fh.read()\nprint(g)", {"open", "f", "print"}),
        ("import os\nos.sep", set()),
        ("def f():\n    return v\nf()", {"v"}),
        ("while w:\n    k = 1\nk", {"w", "k"}),
        ("try:\n    t = 1\nexcept E:\n    pass\nt", {"E", "t"}),
        ("match m:\n    case [x] if x > y:\n        x", {"m", "y"}),
    ],
)
def test_names_a_body_may_read_before_binding_them(body: str, first: set[str]) -> None:
    assert block_of(body).reads_first == first


class Guarding(Tracer):
    """Runs its body at once, guarding reads of ``guard`` and logging them."""

    guard: frozenset[str] = frozenset()
    keep_unsaved = True

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, object]] = []

    def guarded_reads(self) -> frozenset[str]:
        return self.guard

    def before_read(self, name: str) -> None:
        frame = sys._getframe(1)
        self.log.append((name, frame.f_locals.get(name, frame.f_globals.get(name))))


def test_guarded_reads_call_before_read_first_and_other_reads_do_not() -> None:
    source = """
    tracer = Guarding()
    with tracer:
        a = h + 1
        h = 10
        b = h + a
        b += 1
        g = [h for _ in range(2)]
        f = lambda: h
    """
    source = textwrap.dedent(source)
    name = "<guarded reads>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace: dict = {"Guarding": Guarding, "h": 1}
    Guarding.guard = frozenset({"h", "b"})
    try:
        exec(compile(source, name, "exec"), namespace)
    finally:
        Guarding.guard = frozenset()
    log, b, late = namespace["tracer"].log, namespace["b"], namespace["f"]()
    # Every read of a guarded name in the body's scope, in order, each before it
    # happens (the comprehension's too); not the lambda's, which runs later.
    assert [name for name, _ in log] == ["h", "h", "b", "h", "h"]
    assert log[0] == ("h", 1) and log[1] == ("h", 10)
    assert (b, late) == (13, 10)


def test_bodies_are_compiled_once_per_set_of_guarded_names() -> None:
    block = block_of("a = h")
    plain = block.function((), {})
    guarded = block.function((), {}, frozenset({"h"}))
    assert plain.__code__ is block.function((), {}).__code__
    assert guarded.__code__ is block.function((), {}, frozenset({"h"})).__code__
    assert guarded.__code__ is not plain.__code__
    assert "before_read" in guarded.__code__.co_names
    assert "before_read" not in plain.__code__.co_names
    assert block.assignment_line("a") == 3 and block.assignment_line("h") is None
