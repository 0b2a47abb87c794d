"""Micro-benchmark of endoscope-tracing: what a traced ``with`` block costs.

Prints microseconds per block for

* a first run: a call site never seen before (source lookup, parse, compile);
* a cached run: the same call site again (the case of every loop and repeated trace);
* an empty plain ``with`` on a no-op context manager, for scale;
* after-trace drag: a call-heavy function right after a trace versus without one
  (on 3.12+ toggling ``sys.settrace`` re-instruments code objects).

Run: ``python packages/tracing/benchmarks/capture_bench.py [--repeat N]``.
Not a test: timings on shared machines are noisy; compare figures from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import linecache
import statistics
import sys
import time

from endoscope_tracing import Tracer, save

BLOCK = """\
def run(Tracer, save, x):
    with Tracer():
        y = save(x + 1)
        z = y * 2
    return y
"""


def fresh_site(index: int):
    """A function whose with block is a call site never run before."""
    name = f"<bench site {index}>"
    linecache.cache[name] = (len(BLOCK), None, BLOCK.splitlines(True), name)
    namespace: dict = {}
    exec(compile(BLOCK, name, "exec"), namespace)
    return namespace["run"]


def per_call_us(fn, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number * 1e6


def call_heavy(n: int = 200) -> int:
    total = 0
    for i in range(n):
        total += abs(-i) + len(str(i))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()

    firsts, cached, plain, drag_with, drag_without = [], [], [], [], []
    site = 0
    for _ in range(args.repeat):
        sites = [fresh_site(site + i) for i in range(200)]
        site += 200
        start = time.perf_counter()
        for fn in sites:
            fn(Tracer, save, 1)
        firsts.append((time.perf_counter() - start) / len(sites) * 1e6)

        warm = sites[0]
        cached.append(per_call_us(lambda warm=warm: warm(Tracer, save, 1), args.number))

        def plain_with() -> None:
            with contextlib.nullcontext():
                pass

        plain.append(per_call_us(plain_with, args.number))

        drag_without.append(per_call_us(call_heavy, 300))

        def traced_then_heavy(warm=warm) -> None:
            warm(Tracer, save, 1)
            call_heavy()

        drag_with.append(per_call_us(traced_then_heavy, 300) - cached[-1])

    print(f"endoscope-tracing capture benchmark, Python {sys.version.split()[0]}")
    print(f"  first run of a call site (read+parse+compile): {statistics.median(firsts):8.1f} us")
    print(f"  cached run of the same call site:               {statistics.median(cached):8.1f} us")
    print(f"  plain `with nullcontext()` for scale:           {statistics.median(plain):8.2f} us")
    print(
        "  call-heavy function after a trace / without:    "
        f"{statistics.median(drag_with):8.1f} us / {statistics.median(drag_without):.1f} us"
    )


if __name__ == "__main__":
    main()
