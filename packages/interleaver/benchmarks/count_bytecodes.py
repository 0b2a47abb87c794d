"""Count the Python bytecodes one value read costs: exact where timings are noisy.

Run from the repository root with the package and greenlet installed::

    python packages/interleaver/benchmarks/count_bytecodes.py [--reads N] [--per-function]

Traces every opcode executed (``sys.settrace`` with ``f_trace_opcodes``; the
trace is re-installed on every greenlet switch) for one run of an interleaver
with one mediator that requests ``N`` providers, each served by a
``handle(path, value, iterate=True)`` call, and for the same run with a
mediator that requests nothing. The difference divided by ``N`` is the cost of
one read. Only frames of endoscope_interleaver's modules are counted.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from types import FrameType
from typing import Any

import greenlet

from endoscope_interleaver import GreenletScheduler, Interleaver, Mediator

PACKAGE = "endoscope_interleaver"


def count_run(reads: int, layers: int, partner: bool = False) -> Counter[str]:
    """Opcodes per function for one run with ``reads`` requests over ``layers`` providers.

    With ``partner``, a second mediator waits for the last provider all along, so
    values are served by the general loop for several mediators.
    """
    counts: Counter[str] = Counter()
    paths = [f"model.layer{i}.output" for i in range(layers)]
    wanted = [f"{path}.i0" for path in paths[:reads]]

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            counts[f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_qualname}"] += 1
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if PACKAGE not in frame.f_code.co_filename:
            return None
        frame.f_trace_opcodes = True
        return local

    def on_switch(event: str, args: Any) -> None:
        sys.settrace(tracer)

    interleaver = Interleaver(scheduler=GreenletScheduler())

    def intervention() -> None:
        mediator = interleaver.current
        assert mediator is not None
        request = mediator.request
        for name in wanted:
            request(name)

    def waits_for_the_end() -> None:
        mediator = interleaver.current
        assert mediator is not None
        mediator.request(f"{paths[-1]}.i0")

    mediators = [Mediator(intervention)]
    if partner:
        mediators.append(Mediator(waits_for_the_end))
    interleaver.initialize(mediators)
    previous = greenlet.settrace(on_switch)
    sys.settrace(tracer)
    try:
        with interleaver:
            handle = interleaver.handle
            for i, path in enumerate(paths):
                handle(path, i, True)
    finally:
        sys.settrace(None)
        greenlet.settrace(previous)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=12)
    parser.add_argument("--per-function", action="store_true")
    parser.add_argument(
        "--partner", action="store_true", help="a second live mediator (the general way)"
    )
    args = parser.parse_args()
    count_run(args.reads, args.reads, args.partner)  # warm: pooled greenlets, memos
    with_reads = count_run(args.reads, args.reads, args.partner)
    without = count_run(0, args.reads, args.partner)
    total = sum(with_reads.values()) - sum(without.values())
    print(f"bytecodes per read: {total / args.reads:.1f}")
    if args.per_function:
        diff = Counter(with_reads)
        diff.subtract(without)
        for name, n in sorted(diff.items(), key=lambda item: -item[1]):
            if n:
                print(f"{n / args.reads:8.1f}  {name}")


if __name__ == "__main__":
    main()
