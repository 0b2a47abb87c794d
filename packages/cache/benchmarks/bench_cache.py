"""Cost of ``Cache.add`` in memory, and MB/s streamed to and read from disk.

Run from the repository root in an environment with torch, safetensors and this
package installed::

    python packages/cache/benchmarks/bench_cache.py           # full run, ~15 s
    python packages/cache/benchmarks/bench_cache.py --quick   # smaller, ~3 s

Every figure is the best of several repeats (``time.perf_counter``). The in-memory
baseline is what a hand-written forward hook does: store ``output.detach()`` in a dict.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402

from endoscope_cache import Cache, load  # noqa: E402

LAYERS = 12


def best_of(repeats: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(repeats))


def per_add_us(make_cache: Callable[[], Cache], providers: list[str], value: object) -> float:
    """Microseconds per add over a fresh cache fed every provider once."""

    def run() -> float:
        cache = make_cache()
        add = cache.add
        start = time.perf_counter()
        for provider in providers:
            add(provider, value)
        return (time.perf_counter() - start) / len(providers) * 1e6

    return best_of(5, run)


def baseline_us(providers: list[str], value: torch.Tensor) -> float:
    def run() -> float:
        store: dict[str, torch.Tensor] = {}
        start = time.perf_counter()
        for provider in providers:
            store[provider] = value.detach()
        return (time.perf_counter() - start) / len(providers) * 1e6

    return best_of(5, run)


def memory_rows(steps: int) -> list[tuple[str, float]]:
    hidden = torch.randn(1, 128, 768)
    outputs = [f"model.transformer.h.{i}.output.i{s}" for s in range(steps) for i in range(LAYERS)]
    inputs = [f"model.transformer.h.{i}.input.i{s}" for s in range(steps) for i in range(LAYERS)]
    nested = (hidden, (hidden, hidden), {"attention_mask": None, "position": 3})
    args_kwargs = ((hidden,), {"attention_mask": torch.ones(1, 128), "use_cache": False})
    return [
        ("plain hook baseline: dict[key] = t.detach()", baseline_us(outputs, hidden)),
        ("add: tensor output", per_add_us(Cache, outputs, hidden)),
        (
            "add: tensor output, dtype=float16",
            per_add_us(lambda: Cache(dtype=torch.float16), outputs, hidden),
        ),
        ("add: nested tuple/dict output (3 tensors)", per_add_us(Cache, outputs, nested)),
        (
            "add: inputs (args, kwargs)",
            per_add_us(lambda: Cache(include_inputs=True), inputs, args_kwargs),
        ),
        (
            "add: filtered out by modules=",
            per_add_us(lambda: Cache(modules=["model.lm_head"]), outputs, hidden),
        ),
        ("add: input with include_inputs=False", per_add_us(Cache, inputs, args_kwargs)),
    ]


def disk_rows(total_mb: int, directory: Path) -> list[tuple[str, float]]:
    rows = []
    for label, shape in (("4 MiB tensors", (1024, 1024)), ("96 KiB tensors", (32, 768))):
        value = torch.randn(*shape)
        size = value.numel() * value.element_size()
        count = max(1, total_mb * 2**20 // size)

        def write(value: torch.Tensor = value, count: int = count) -> float:
            shutil.rmtree(directory, ignore_errors=True)
            start = time.perf_counter()
            with Cache(directory=directory) as cache:
                for i in range(count):
                    cache.add(f"model.layers.{i % LAYERS}.output.i{i // LAYERS}", value)
            return time.perf_counter() - start

        seconds = best_of(3, write)
        rows.append((f"stream to disk, {label} (add + write)", count * size / 2**20 / seconds))

        for suffix, verify in (("", True), (", verify=False", False)):

            def read(verify: bool = verify) -> float:
                start = time.perf_counter()
                cache = load(directory, verify=verify)
                for key in cache:
                    value = cache[key]
                    for entry in value if isinstance(value, list) else [value]:
                        entry.output  # noqa: B018 - reading is the point
                return time.perf_counter() - start

            seconds = best_of(3, read)
            rows.append((f"load(){suffix} and read back, {label}", count * size / 2**20 / seconds))

        def write_unsynced(value: torch.Tensor = value, count: int = count) -> float:
            shutil.rmtree(directory, ignore_errors=True)
            start = time.perf_counter()
            with Cache(directory=directory, fsync=False) as cache:
                for i in range(count):
                    cache.add(f"model.layers.{i % LAYERS}.output.i{i // LAYERS}", value)
            return time.perf_counter() - start

        seconds = best_of(3, write_unsynced)
        rows.append((f"stream to disk, {label}, fsync=False", count * size / 2**20 / seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer adds, 64 MB to disk")
    args = parser.parse_args()
    steps = 50 if args.quick else 400
    total_mb = 64 if args.quick else 512
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; hidden state float32[1, 128, 768]\n")
    print("| in memory | us per add |")
    print("| --- | ---: |")
    for label, value in memory_rows(steps):
        print(f"| {label} | {value:.2f} |")
    with tempfile.TemporaryDirectory() as tmp:
        rows = disk_rows(total_mb, Path(tmp) / "cache")
    print(f"\n| to disk ({total_mb} MB, 32 MiB shards) | MB/s |")
    print("| --- | ---: |")
    for label, value in rows:
        print(f"| {label} | {value:.0f} |")


if __name__ == "__main__":
    main()
