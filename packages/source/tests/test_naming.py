"""Operation names: dotted callees, counters, anonymous callees, excluded calls."""

from __future__ import annotations

import ast
import math
from types import SimpleNamespace

import pytest

from endoscope_source import SourceAccessor, callee_name
from endoscope_source._naming import NameCounter, reads_caller_frame

# Stand-ins for torch and torch.nn.functional: names matter, not behaviour.
torch = SimpleNamespace(matmul=lambda a, b: a * b, relu=lambda v: max(v, 0))
F = SimpleNamespace(linear=lambda x, w: x * w)


def names(fn) -> list[str]:
    return list(SourceAccessor(fn).operations)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("abs(x)", "abs"),
        ("math.sqrt(x)", "math_sqrt"),
        ("self.c_attn(x)", "self_c_attn"),
        ("torch.nn.functional.relu(x)", "torch_nn_functional_relu"),
        ("x.view(s).transpose(1, 2)", "transpose"),
        ("(a + b).sum()", "sum"),
        ("'-'.join(parts)", "join"),
        ("self.layers[0].forward(x)", "forward"),
        ("x.y(z).a.b()", "a_b"),
        ("fns[0](x)", "fns"),
        ("self.layers[i](h)", "self_layers"),
        ("grid[i][j](h)", "grid"),
        ("make(cfg)(x)", "call"),
        ("(lambda: 1)()", "call"),
        ("(f or g)(x)", "call"),
        ("get()[0](x)", "call"),
    ],
)
def test_callee_names(expression: str, expected: str) -> None:
    call = ast.parse(expression, mode="eval").body
    assert isinstance(call, ast.Call)
    assert callee_name(call.func) == expected


def test_counter_per_name() -> None:
    counter = NameCounter()
    assert [counter.take(n) for n in ("abs", "abs", "max", "abs")] == [
        "abs_0",
        "abs_1",
        "max_0",
        "abs_2",
    ]


def test_nnsight_examples() -> None:
    class Block:
        def forward(self, x, w):
            h = self.c_attn(x)
            y = F.linear(h, w)
            z = torch.matmul(y, w)
            return torch.matmul(z, math.sqrt(abs(w))), abs(z)

    assert names(Block.forward) == [
        "self_c_attn_0",
        "F_linear_0",
        "torch_matmul_0",
        "abs_0",
        "math_sqrt_0",
        "torch_matmul_1",
        "abs_1",
    ]


def test_inner_calls_are_numbered_before_the_call_containing_them() -> None:
    def fn(x, s):
        return x.view(s).transpose(1, 2).contiguous()

    assert names(fn) == ["x_view_0", "transpose_0", "contiguous_0"]


def test_every_expression_position_is_covered() -> None:
    def fn(xs, opts):
        a = [abs(v) for v in xs if bool(v)]
        b = {str(k): len(str(k)) for k in xs}
        c = max(xs) if any(xs) else min(xs)
        d = sorted(xs, key=abs, reverse=bool(len(opts)))
        e = print(*map(str, xs), **dict(sep=repr(","), end=""))  # noqa: C408
        g = (h for h in range(len(xs)))
        f = f"{round(1.5)}"
        return a, b, c, d, e, list(g), f, (y := hash(1)), y, [*map(abs, xs)]

    assert names(fn) == [
        "abs_0",
        "bool_0",
        "str_0",
        "str_1",
        "len_0",
        "any_0",
        "max_0",
        "min_0",
        "len_1",
        "bool_1",
        "sorted_0",
        "map_0",
        "repr_0",
        "dict_0",
        "print_0",
        "len_2",
        "range_0",
        "round_0",
        "list_0",
        "hash_0",
        "map_1",
    ]


def test_nested_functions_lambdas_and_classes_share_counters() -> None:
    def fn(x):
        def helper(v):
            return abs(v)

        class Local:
            size = len(str(x))

        return helper(x), (lambda v: abs(v))(x), Local.size

    assert names(fn) == ["abs_0", "str_0", "len_0", "helper_0", "abs_1", "call_0"]


def test_frame_reading_calls_are_not_operations() -> None:
    class Base:
        def value(self):
            return 1

    class Child(Base):
        def value(self):
            here = sorted(locals())
            return super().value(), eval("1 + 1"), vars(), here, dir(), globals() is not None

    assert names(Child.value) == ["sorted_0", "value_0"]


def test_reads_caller_frame() -> None:
    def check(expression: str) -> bool:
        call = ast.parse(expression, mode="eval").body
        assert isinstance(call, ast.Call)
        return reads_caller_frame(call)

    assert check("super()")
    assert not check("super(C, self)")
    assert check("vars()")
    assert not check("vars(obj)")
    assert check("locals()")
    assert check("sys._getframe(1)")
    assert check("inspect.currentframe()")
    assert not check("abs(x)")


def test_annotations_and_signature_calls_are_not_operations() -> None:
    def fn(x: list[str] = sorted([1])) -> dict[str, int]:  # noqa: B008
        y: list[str] = list(x)

        def inner(z: max(1, 2) = 3) -> str:
            return str(z)

        return inner(y)

    assert names(fn) == ["list_0", "str_0", "inner_0"]
