"""FunctionCallWrapper: call sites, positions, and the shape of the rewritten AST."""

from __future__ import annotations

import ast
import textwrap

from endoscope_source import FunctionCallWrapper


def _wrapper(source: str) -> tuple[FunctionCallWrapper, str]:
    text = textwrap.dedent(source)
    node = ast.parse(text).body[0]
    assert isinstance(node, ast.FunctionDef)

    def segment(n: ast.AST) -> str:
        return ast.get_source_segment(text, n) or ""

    return FunctionCallWrapper(node, placeholder=lambda i: f"OP{i}", segment=segment), text


def test_sites_record_names_positions_and_text() -> None:
    wrapper, _ = _wrapper(
        """
        def forward(self, x):
            h = self.ln(x)
            return self.proj(
                self.act(h),
            )
        """
    )
    wrapper.rewrite()
    sites = {site.name: site for site in wrapper.sites}
    assert list(sites) == ["self_ln_0", "self_act_0", "self_proj_0"]
    ln, act, proj = sites.values()
    assert (ln.line, ln.lineno, ln.col_offset) == (3, 3, 8)
    assert ln.text == "self.ln(x)" and ln.callee == "self.ln"
    assert proj.lineno == 4 and proj.end_lineno == 6
    assert proj.text.startswith("self.proj(") and proj.text.endswith(")")
    assert act.line == 5
    assert [s.index for s in wrapper.sites] == [0, 1, 2]
    assert (ln.nested, act.nested, proj.nested) == (False, False, True)


def test_chained_call_is_shown_where_its_callee_ends() -> None:
    wrapper, _ = _wrapper(
        """
        def fn(x):
            return (x.strip()
                     .split(","))
        """
    )
    wrapper.rewrite()
    strip, split = wrapper.sites
    assert (strip.name, strip.line) == ("x_strip_0", 3)
    assert (split.name, split.line, split.lineno, split.nested) == ("split_0", 4, 3, True)


def test_rewrite_does_not_touch_the_input() -> None:
    wrapper, _ = _wrapper(
        """
        def fn(x):
            return abs(max(x, 1))
        """
    )
    before = ast.dump(wrapper.node, include_attributes=True)
    new = wrapper.rewrite()
    assert ast.dump(wrapper.node, include_attributes=True) == before
    assert new is not wrapper.node


def test_rewritten_form_tests_detour_then_calls_directly() -> None:
    wrapper, _ = _wrapper(
        """
        def fn(x):
            return abs(x)
        """
    )
    new = wrapper.rewrite()
    assert isinstance(new, ast.FunctionDef)
    ret = new.body[0]
    assert isinstance(ret, ast.Return)
    assert ast.unparse(ret) == "return abs(x) if 'OP0'._detour is None else 'OP0'._call(abs, x)"


def test_nested_sites_use_the_compact_form_in_slow_branches() -> None:
    wrapper, _ = _wrapper(
        """
        def fn(x):
            return f(g(x), k=h(x))
        """
    )
    new = wrapper.rewrite()
    text = ast.unparse(new.body[0])
    # Fast branch: each site tests before calling directly.
    assert "f(g(x) if 'OP0'._detour is None else 'OP0'._call(g, x), k=" in text
    # Slow branch: nested sites go straight to _call, no test, no duplication.
    assert "'OP2'._call(f, 'OP0'._call(g, x), k='OP1'._call(h, x))" in text


def test_generated_code_does_not_double_per_nesting_level() -> None:
    depth = 40
    nested = "x"
    for _ in range(depth):
        nested = f"f({nested})"
    chain = "x" + ".m()" * depth
    for expression in (nested, chain):
        wrapper, _ = _wrapper(f"def fn(x):\n    return {expression}\n")
        new = wrapper.rewrite()
        assert len(wrapper.sites) == depth
        size = sum(1 for _ in ast.walk(new))
        original = sum(1 for _ in ast.walk(wrapper.node))
        # Quadratic in depth at most, far from the 2**depth of naive duplication.
        assert size < 2 * original * depth
        compile(ast.fix_missing_locations(ast.Module(body=[new], type_ignores=[])), "<t>", "exec")


def test_positions_of_generated_nodes_are_the_calls() -> None:
    wrapper, _ = _wrapper(
        """
        def fn(x):
            y = 1
            return abs(x)
        """
    )
    new = wrapper.rewrite()
    call = wrapper.sites[0]
    for node in ast.walk(new.body[1]):
        if isinstance(node, ast.expr):
            assert node.lineno == call.lineno
            assert node.col_offset >= call.col_offset
