"""Semantics corpus: functions whose injected version must behave exactly like the original.

Kept out of test modules on purpose: pytest rewrites ``assert`` statements in
test files, which changes their bytecode (the accessors would rightly refuse
them). Nothing here may use ``assert``.

Each :class:`Case` builds a *fresh* function (and fresh state) on every call of
``make``, so the original and the injected version can be run side by side
without sharing side effects; ``run`` turns a call into a comparable result
(consuming generators, running coroutines).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.machinery
import importlib.util
import math
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCALE = 3
REGISTRY: dict[str, Callable[..., Any]] = {}
COUNTER = [0]


def _plain(call: Callable[[], Any]) -> Any:
    return call()


def _generator(call: Callable[[], Any]) -> Any:
    return list(call())


def _coroutine(call: Callable[[], Any]) -> Any:
    return asyncio.run(call())


def _async_generator(call: Callable[[], Any]) -> Any:
    async def collect() -> list[Any]:
        return [item async for item in call()]

    return asyncio.run(collect())


@dataclass
class Case:
    """A corpus entry.

    Attributes:
        name: Test id.
        make: Returns ``(callable, args, kwargs)``; the callable is what the
            accessor is built from (function, bound method, decorated function).
        run: Runs a zero-argument call of it and returns a comparable result.
    """

    name: str
    make: Callable[[], tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]
    run: Callable[[Callable[[], Any]], Any] = field(default=_plain)


CASES: list[Case] = []


def case(name: str, run: Callable[[Callable[[], Any]], Any] = _plain) -> Callable[..., Any]:
    def register(make: Callable[..., Any]) -> Callable[..., Any]:
        CASES.append(Case(name, make, run))
        return make

    return register


# -- closures and scopes --------------------------------------------------------


@case("closure_reads_free_variables")
def _() -> Any:
    base, scale = 10, 2

    def fn(x):
        return abs(x - base) * scale + len(str(base))

    return fn, (3,), {}


@case("closure_nonlocal_writes")
def _() -> Any:
    def make():
        total = 0

        def add(x):
            nonlocal total
            total += abs(x)
            return total, max(total, 5)

        return add

    add = make()

    def fn():
        return [add(v) for v in (1, -2, 3)]

    return fn, (), {}


@case("nested_function_nonlocal_inside_target")
def _() -> Any:
    def fn(values):
        seen = []

        def note(v):
            nonlocal seen
            seen = [*seen, str(v)]
            return len(seen)

        counts = [note(v) for v in values]
        return counts, ",".join(seen)

    return fn, ([1, 2, 3],), {}


@case("closure_over_loop_variables")
def _() -> Any:
    def fn(n):
        funcs = [lambda i=i: i * i for i in range(n)]
        late = [lambda: i for i in range(n)]  # noqa: B023 - late binding on purpose
        return [f() for f in funcs], [f() for f in late]

    return fn, (4,), {}


@case("lambda_made_in_a_comprehension")
def _() -> Any:
    makers = [lambda x: abs(x) + i for i in range(3)]  # noqa: B023
    return makers[2], (-5,), {}


@case("nonlocal_from_a_grandparent")
def _() -> Any:
    def grand():
        v = 10

        def parent():
            def child(x):
                nonlocal v
                v += abs(x)
                return v, str(v)

            return child

        return parent()

    return grand(), (-3,), {}


@case("global_reads_and_writes")
def _() -> Any:
    def fn(x):
        global COUNTER
        COUNTER = [COUNTER[0] + 1]
        return math.floor(x * SCALE), REGISTRY.get("missing", abs)(-x), COUNTER[0] > 0

    return fn, (2.5,), {}


# -- signatures ---------------------------------------------------------------------


@case("defaults_and_keyword_only")
def _() -> Any:
    def fn(a, b=2, *, c=max(1, 3), d=None):  # noqa: B008 - a call in a default
        return pow(a, b) + c + (d or 0)

    return fn, (3,), {"d": 1}


@case("mutable_default_is_shared")
def _() -> Any:
    def fn(x, acc=[]):  # noqa: B006 - the shared default is what is tested
        acc.append(x)
        return list(acc), len(acc)

    fn(0)
    return fn, (1,), {}


@case("star_args_and_kwargs")
def _() -> Any:
    def fn(*args, **kwargs):
        return sum(args), sorted(kwargs.items()), max(*args, key=abs)

    return fn, (1, -5, 3), {"z": 1, "a": 2}


@case("positional_only")
def _() -> Any:
    def fn(a, b, /, c=1):
        return divmod(a, b), c

    return fn, (17, 5), {"c": 4}


@case("lambda_target")
def _() -> Any:
    fn = lambda x, y=2: (abs(x) + max(x, y), str(x))  # noqa: E731 - a lambda is the point
    return fn, (-7,), {}


@case("two_lambdas_on_one_line_second")
def _() -> Any:
    _first, second = (lambda v: str(v) + "a"), (lambda v: str(v * 2) + "b")
    return second, (21,), {}


# -- generators and coroutines -----------------------------------------------------


@case("generator", run=_generator)
def _() -> Any:
    def fn(n):
        for i in range(n):
            yield abs(i - 2), str(i)
        yield from map(str, range(2))
        return len(str(n))

    return fn, (4,), {}


@case("generator_send_and_return")
def _() -> Any:
    def gen(limit):
        total = 0
        while total < limit:
            value = yield total
            total += abs(value or 1)
        return str(total)

    def fn(limit):
        g = gen(limit)
        out = [next(g)]
        try:
            while True:
                out.append(g.send(len(out) * -2))
        except StopIteration as stop:
            out.append(stop.value)
        return out

    return fn, (10,), {}


@case("async_function", run=_coroutine)
def _() -> Any:
    async def helper(x):
        await asyncio.sleep(0)
        return abs(x)

    async def fn(values):
        results = [await helper(v) for v in values]
        more = await asyncio.gather(helper(-1), helper(2))
        return results, list(more), max(results)

    return fn, ([-3, 4],), {}


@case("async_comprehension", run=_coroutine)
def _() -> Any:
    async def fn(n):
        async def numbers():
            for i in range(n):
                await asyncio.sleep(0)
                yield i - 1

        return [abs(x) async for x in numbers() if str(x)]

    return fn, (3,), {}


@case("generator_closed_early")
def _() -> Any:
    log = []

    def numbers():
        try:
            yield abs(-1)
            yield 2
        finally:
            log.append(len("closed"))

    def fn():
        gen = numbers()
        first = next(gen)
        gen.close()
        return first, list(log)

    return fn, (), {}


@case("async_generator", run=_async_generator)
def _() -> Any:
    async def fn(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield str(i) * abs(i - 1)

    return fn, (3,), {}


# -- classes --------------------------------------------------------------------


class Base:
    def __init__(self, scale):
        self.scale = scale

    def forward(self, x):
        return x * self.scale

    def describe(self):
        return f"{type(self).__name__}({self.scale})"


class Child(Base):
    def __init__(self, scale):
        super().__init__(scale)
        self.__secret = scale + 1

    def forward(self, x):
        base = super().forward(x)
        return base + self.__hidden(x), super().describe(), __class__.__name__

    def __hidden(self, x):
        return self.__secret * abs(x)

    @staticmethod
    def static(x):
        return str(x).zfill(4)

    @classmethod
    def build(cls, scale):
        return cls(scale).forward(1)

    def explicit_super(self, x):
        return super(Child, self).forward(x)  # noqa: UP008 - the explicit form is tested


@case("method_unbound_with_super_and_mangling")
def _() -> Any:
    return Child.forward, (Child(2), -3), {}


@case("method_bound")
def _() -> Any:
    return Child(3).forward, (4,), {}


@case("method_private_mangled")
def _() -> Any:
    obj = Child(5)
    return obj._Child__hidden, (-2,), {}


@case("staticmethod_descriptor")
def _() -> Any:
    return Child.__dict__["static"], (42,), {}


@case("classmethod_bound")
def _() -> Any:
    return Child.build, (7,), {}


@case("dunder_class_in_a_nested_function")
def _() -> Any:
    class Holder:
        def method(self):
            def inner():
                return __class__.__name__, str(type(self).__name__)

            return inner()

    return Holder.method, (Holder(),), {}


@case("explicit_super")
def _() -> Any:
    return Child.explicit_super, (Child(2), 5), {}


@case("class_defined_inside")
def _() -> Any:
    def fn(n):
        class Local(Base):
            def forward(self, x):
                return [super().forward(x), abs(x)]

        return Local(n).forward(-n), Local.__qualname__.split(".")[-1]

    return fn, (3,), {}


# -- decorators -------------------------------------------------------------------


def register(fn):
    REGISTRY[fn.__name__] = fn
    return fn


def doubled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return [fn(*args, **kwargs), fn(*args, **kwargs)]

    return wrapper


@case("decorator_returning_the_function")
def _() -> Any:
    @register
    def fn(x):
        return str(x).upper(), abs(x)

    return fn, (-3,), {}


@case("functools_wraps_decorator_is_kept")
def _() -> Any:
    calls = []

    @doubled
    def fn(x):
        calls.append(x)
        return abs(x), len(calls)

    return fn, (-4,), {}


# -- expressions ------------------------------------------------------------------


@case("f_strings")
def _() -> Any:
    def fn(x, name):
        return f"{name.upper()!r}: {abs(x):>8.3f} {str(x)[::-1]} {len(name)=}"

    return fn, (-3.14159, "pi"), {}


@case("nested_f_strings")
def _() -> Any:
    def fn(x):
        return f"{f'{abs(x)!r:>{len(str(x))}}'}" + f"{x=}"

    return fn, (-42,), {}


@case("comprehensions")
def _() -> Any:
    def fn(words):
        return (
            [w.upper() for w in words if len(w) > 2],
            {w: len(w) for w in sorted(words)},
            {w[0] for w in words},
            sum(len(w) for w in words if w.isalpha()),
        )

    return fn, (["ab", "abc", "xyz1", "q"],), {}


@case("walrus_in_comprehension")
def _() -> Any:
    def fn(values):
        kept = [y for v in values if (y := abs(v)) > 1]
        return kept, y

    return fn, ([1, -3, 2, 0],), {}


@case("chained_method_calls")
def _() -> Any:
    def fn(text):
        return " ".join(text.strip().split()).title().replace(" ", "-").split("-")

    return fn, ("  hello   wide  world ",), {}


@case("conditional_and_short_circuit")
def _() -> Any:
    def fn(x):
        log = []

        def hit(tag, value):
            log.append(tag)
            return value

        a = hit("a", 0) or hit("b", x) or hit("c", 3)
        b = hit("d", None) and hit("e", 1)
        c = hit("f", 1) if hit("g", x > 0) else hit("h", 2)
        return a, b, c, log

    return fn, (0,), {}


@case("keyword_and_starred_arguments")
def _() -> Any:
    def fn(values, options):
        return sorted(*[values], key=abs, reverse=bool(len(options))), dict(
            **options, extra=max(values)
        )

    return fn, ([3, -1, 2], {"k": 1}), {}


@case("subscript_and_anonymous_callees")
def _() -> Any:
    def fn(x):
        table = [abs, str, lambda v: v * 2]
        make = lambda k: lambda v: v + k  # noqa: E731
        return table[0](x), table[1](x), table[2](x), make(10)(x), (lambda: "anon")()

    return fn, (-5,), {}


@case("evaluation_order_is_preserved")
def _() -> Any:
    def fn():
        log = []

        def step(tag, value=None):
            log.append(tag)
            return value if value is not None else tag

        data = {step("k1"): step("v1"), step("k2"): step("v2")}
        items = [step("x")]
        items[step("i", 0)] += step("y")
        step("outer", step("inner1", 1) + step("inner2", 2))
        first, *rest = step("seq", [1, 2, 3])
        return log, data, items, first, rest

    return fn, (), {}


@case("operator_functions_and_dunders")
def _() -> Any:
    def fn(a, b):
        return operator.add(a, b), a.__add__(b), (a).__mul__(b), getattr(a, "real")  # noqa: B009

    return fn, (3, 4), {}


@case("calls_in_annotations_are_not_run_twice")
def _() -> Any:
    def fn(x):
        y: int = abs(x)
        z: list[str] = [str(y)]
        return y, z

    return fn, (-9,), {}


# -- control flow -----------------------------------------------------------------


@case("try_except_finally")
def _() -> Any:
    def fn(values):
        out = []
        for v in values:
            try:
                out.append(int(v))
            except ValueError as exc:
                out.append(type(exc).__name__)
                continue
            else:
                out.append(str(v).zfill(2))
            finally:
                out.append(len(out))
        return out

    return fn, (["1", "x", "3"],), {}


@case("raises_same_exception")
def _() -> Any:
    def fn(x):
        values = {"a": 1}
        return values[str(x)] + int("not a number")

    return fn, ("a",), {}


@case("exception_groups_and_context")
def _() -> Any:
    def fn():
        try:
            try:
                raise KeyError(str(1))
            except KeyError as inner:
                raise ValueError(repr(inner)) from inner
        except ValueError as outer:
            return str(outer), type(outer.__cause__).__name__

    return fn, (), {}


@case("with_statement")
def _() -> Any:
    class Manager:
        def __init__(self, log):
            self.log = log

        def __enter__(self):
            self.log.append("enter")
            return len(self.log)

        def __exit__(self, *exc):
            self.log.append(str(exc[0]))
            return True

    def fn():
        log = []
        with Manager(log) as n:
            log.append(n)
            raise RuntimeError(str(n))
        return log

    return fn, (), {}


@case("while_break_continue")
def _() -> Any:
    def fn(limit):
        i, out = 0, []
        while True:
            i += 1
            if i % 2 == 0:
                continue
            if len(out) >= limit:
                break
            out.append(pow(i, 2))
        return out

    return fn, (4,), {}


@case("match_statement")
def _() -> Any:
    def fn(values):
        out = []
        for v in values:
            match v:
                case int(n) if abs(n) > 2:
                    out.append(str(n) + "!")
                case [a, *rest]:
                    out.append(len(rest) + abs(a))
                case {"k": val}:
                    out.append(str(val).upper())
                case _:
                    out.append(repr(v))
        return out

    return fn, ([5, 1, [-2, 3, 4], {"k": "v"}],), {}


@case("recursion_calls_the_original")
def _() -> Any:
    return factorial, (6,), {}


def factorial(n):
    return 1 if n <= 1 else n * factorial(n - 1)


# -- frame-sensitive calls -----------------------------------------------------


@case("locals_vars_and_eval")
def _() -> Any:
    def fn(x, y=2):
        z = abs(x)
        snapshot = sorted(locals())
        return snapshot, eval("x + y + z"), sorted(vars()), len(dir())

    return fn, (-4,), {}


@case("docstring_and_attributes")
def _() -> Any:
    def fn(x):
        """Doubles x."""
        return fn.__doc__, x * 2

    return fn, (4,), {}


def _load_newer_syntax(name: str, filename: str) -> list[Case]:
    """Load cases written in syntax newer than Python 3.10 (kept out of .py files
    so linters targeting 3.10 do not read them)."""
    path = str(Path(__file__).with_name(filename))
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    loader.exec_module(module)
    return list(module.CASES)


if sys.version_info >= (3, 11):
    CASES.extend(_load_newer_syntax("source_corpus_py311", "corpus_py311.pysrc"))
if sys.version_info >= (3, 12):
    CASES.extend(_load_newer_syntax("source_corpus_py312", "corpus_py312.pysrc"))
