"""The best example endoscope has until the demo model lands: capture a block,
run it later, keep only what was saved, and see an error at the user's own line.

Run: ``nox -s demo`` (or ``python examples/demo.py`` with endoscope-tracing installed).
"""

from __future__ import annotations

import traceback

from endoscope_tracing import Tracer, save


class Deferred:
    """A backend that keeps the compiled body and runs it when asked."""

    def __call__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.fn = tracer.compile()

    def run(self) -> None:
        self.tracer.execute(self.fn)


def main() -> None:
    prompt = "The Eiffel Tower is in"
    print("1. A traced block runs with the caller's variables; only saved values come out.")
    with Tracer():
        words = save(prompt.split())
        scratch = len(words)  # not saved, so it does not leak
    print(f"   words = {words}; 'scratch' leaked: {'scratch' in locals()}")

    print("2. The same call site in a loop is parsed once and reused.")
    lengths = []
    for word in words:
        with Tracer():
            size = save(len(word))
        lengths.append(size)
    print(f"   lengths = {lengths}")

    print("3. A backend decides when the body runs.")
    later = Deferred()
    with Tracer(backend=later):
        print("   ... the body is running now")
    print("   (the with statement has ended)")
    later.run()

    print("4. An error inside a block points at the user's line, not at endoscope.")
    try:
        with Tracer():
            words[len(words)]
    except IndexError:
        frame = traceback.extract_tb(__import__("sys").exc_info()[2])[-1]
        print(f"   IndexError at {frame.filename}:{frame.lineno}: {frame.line}")


if __name__ == "__main__":
    main()
