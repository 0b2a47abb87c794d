"""Benchmark the schedulers: round trips, whole runs, and the cost of untouched providers.

Run from the repository root with the package (and greenlet) installed::

    python packages/interleaver/benchmarks/bench_schedulers.py [--quick]

Prints a Markdown table. Every figure is the median of several repeats; the
machine is shared, so treat differences under ~10% as noise.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable

from endoscope_interleaver import (
    GreenletScheduler,
    Interleaver,
    Mediator,
    Scheduler,
    ThreadScheduler,
    greenlet_available,
)


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def raw_round_trip(scheduler: Scheduler, n: int) -> float:
    """Microseconds per resume/suspend pair of a bare worker."""

    def once() -> None:
        holder: list = []

        def body() -> None:
            suspend = holder[0].suspend
            for i in range(n):
                suspend(i)

        worker = scheduler.start(body, "endoscope-bench")
        holder.append(worker)
        resume = worker.resume
        for _ in range(n + 1):
            resume(None)

    return median_time(once, 5) / n * 1e6


def request_round_trip(scheduler: Scheduler, n: int) -> float:
    """Microseconds per served request (request, match, respond) in a real run."""
    names = [f"model.layer{i}.output.i0" for i in range(n)]

    def once() -> None:
        interleaver = Interleaver(scheduler=scheduler)

        def intervention() -> None:
            mediator = interleaver.current
            assert mediator is not None
            request = mediator.request
            for name in names:
                request(name)

        interleaver.initialize([Mediator(intervention)])
        with interleaver:
            handle = interleaver.handle
            for i, name in enumerate(names):
                handle(name, i)

    return median_time(once, 5) / n * 1e6


PATHS = [f"model.layer{i}.output" for i in range(1000)]


def model(interleaver: Interleaver | None, layers: int) -> int:
    """A "model" of ``layers`` layers: one provider per layer.

    Provider paths are built once, as a hook holds its module's path.
    """
    x = 0
    if interleaver is None:
        for _ in PATHS[:layers]:
            x = x + 1
        return x
    handle = interleaver.handle
    for path in PATHS[:layers]:
        x = handle(path, x + 1, True)
    return x


def run_with_requests(scheduler: Scheduler, layers: int, requests: int) -> float:
    """Microseconds for one whole run (start, forward, teardown) with ``requests`` reads."""
    wanted = [f"model.layer{i}.output.i0" for i in range(layers)][:requests]

    def once() -> None:
        interleaver = Interleaver(scheduler=scheduler)

        def intervention() -> None:
            mediator = interleaver.current
            assert mediator is not None
            for name in wanted:
                mediator.request(name)

        interleaver.initialize([Mediator(intervention)])
        with interleaver:
            model(interleaver, layers)

    return median_time(once, 21) * 1e6


def untouched_provider_ns(iterate: bool, n: int) -> float:
    """Nanoseconds per handle() call for a provider nobody waits for, mid-run."""
    interleaver = Interleaver(scheduler=ThreadScheduler())
    interleaver.initialize([Mediator(lambda: interleaver.current.request("never"))])  # type: ignore[union-attr]
    names = [f"model.layer{i % 100}.output" for i in range(n)]
    if not iterate:
        names = [f"{name}.i0" for name in names]
    interleaver.__enter__()
    try:
        handle = interleaver.handle

        def loop() -> None:
            for name in names:
                handle(name, 1, iterate)

        elapsed = median_time(loop, 5)
        empty = median_time(lambda: [None for _ in names], 5)
    finally:
        interleaver.cancel()
        interleaver.__exit__(None, None, None)
    return (elapsed - empty) / n * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    n = 2_000 if args.quick else 20_000

    schedulers: dict[str, Scheduler] = {"thread": ThreadScheduler()}
    if greenlet_available():
        schedulers["greenlet"] = GreenletScheduler()
    else:
        print("greenlet is not installed: measuring ThreadScheduler only", file=sys.stderr)

    print(f"Python {platform.python_version()} on {platform.machine()}, {n} round trips\n")
    print("| measure | " + " | ".join(schedulers) + " |")
    print("|---|" + "---:|" * len(schedulers))
    rows: list[tuple[str, Callable[[Scheduler], float], str]] = [
        ("bare worker switch, resume+suspend", lambda s: raw_round_trip(s, n), "µs"),
        ("request/response round trip in a run", lambda s: request_round_trip(s, n), "µs"),
    ]
    layers = 100
    for requests in (0, 1, 100):
        rows.append(
            (
                f"whole run, {layers} providers, {requests} requests",
                lambda s, r=requests: run_with_requests(s, layers, r),
                "µs",
            )
        )
    for label, measure, unit in rows:
        cells = [f"{measure(s):.2f} {unit}" for s in schedulers.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")

    plain = median_time(lambda: model(None, layers), 201) * 1e6
    idle = Interleaver(scheduler=ThreadScheduler())
    not_running = median_time(lambda: model(idle, layers), 201) * 1e6
    print()
    print("| scheduler-independent | time |")
    print("|---|---:|")
    print(f"| plain loop, {layers} layers, no handle() | {plain:.2f} µs |")
    print(f"| same loop calling handle(), no run active | {not_running:.2f} µs |")
    print(
        f"| handle() of an untouched provider, full string | {untouched_provider_ns(False, n * 10):.0f} ns |"
    )
    print(
        f"| handle() of an untouched provider, iterate=True | {untouched_provider_ns(True, n * 10):.0f} ns |"
    )


if __name__ == "__main__":
    main()
