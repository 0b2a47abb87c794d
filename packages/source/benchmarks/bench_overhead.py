"""Overhead of the injected function when nothing is hooked.

Runs call-dense functions in their original and injected forms and prints
injected/original time (best of several repeats, so noise from other
processes only ever makes the ratio look worse). Three workloads:

- ``c_builtins``: a loop of very cheap C calls (``math.sqrt``, ``abs``, ``max``,
  a float method). The worst case: each call costs ~20-40 ns, so the
  per-site check is the largest possible fraction of the work.
- ``python_calls``: a loop of calls to small Python functions and methods,
  closer to real code.
- ``forward_like``: a method calling a dozen attribute callables on ``self``,
  shaped like a module's forward.

A last line shows what one hooked site costs (slow path with a post-hook).

Usage: ``python benchmarks/bench_overhead.py [--repeat N] [--number N]``
"""

from __future__ import annotations

import argparse
import math
import platform
import timeit

from endoscope_source import SourceAccessor


def c_builtins(xs):
    total = 0.0
    for x in xs:
        total += math.sqrt(abs(x)) + max(x, 1.0) + x.__abs__() + min(x, 0.5)
    return total


def _square(v):
    return v * v


def _shift(v, by=1.0):
    return v + by


class _Point:
    def __init__(self, x):
        self.x = x

    def norm(self):
        return abs(self.x)


def python_calls(xs):
    total = 0.0
    for x in xs:
        p = _Point(x)
        total += _square(_shift(x)) + p.norm() + _shift(x, by=2.0)
    return total


class _Layer:
    def __init__(self):
        self.scale = 1.5

    def __call__(self, v):
        return v * self.scale


class _Block:
    def __init__(self):
        self.ln = _Layer()
        self.q = _Layer()
        self.k = _Layer()
        self.v = _Layer()
        self.out = _Layer()
        self.act = _Layer()

    def forward(self, x):
        h = self.ln(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        a = max(q * k, 0.0) * v
        return self.out(self.act(a)) + abs(x)


def _ratio(original, injected, arg, number, repeat):
    """Best time of each, measured alternately so a burst of noise hits both."""
    original(arg)
    injected(arg)
    base = new = float("inf")
    for _ in range(repeat):
        base = min(base, timeit.timeit(lambda: original(arg), number=number))
        new = min(new, timeit.timeit(lambda: injected(arg), number=number))
    return base, new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--number", type=int, default=100)
    options = parser.parse_args()
    xs = [float(i) - 500.0 for i in range(1000)]
    block = _Block()
    block_accessor = SourceAccessor(_Block.forward)

    def block_original(values):
        return [block.forward(v) for v in values]

    def block_injected(values):
        run = block_accessor.injected
        return [run(block, v) for v in values]

    rows = [
        ("c_builtins", c_builtins, SourceAccessor(c_builtins).injected, xs),
        ("python_calls", python_calls, SourceAccessor(python_calls).injected, xs),
        ("forward_like", block_original, block_injected, xs),
    ]
    hooked = SourceAccessor(c_builtins)
    hooked.operations["math_sqrt_0"].post_hooks.append(lambda value: None)
    rows.append(("c_builtins, 1 site hooked", c_builtins, hooked.injected, xs))

    print(f"Python {platform.python_version()} ({platform.python_implementation()})")
    print(f"{'workload':<28} {'original':>12} {'injected':>12} {'ratio':>7}")
    for name, original, injected, arg in rows:
        base, new = _ratio(original, injected, arg, options.number, options.repeat)
        per_call = 1e6 / options.number
        print(
            f"{name:<28} {base * per_call:>9.1f} us {new * per_call:>9.1f} us {new / base:>6.2f}x"
        )


if __name__ == "__main__":
    main()
