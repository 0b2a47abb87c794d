"""Time and bytes written to stream many small values, each few committed at once.

Run from the repository root in an environment with torch, safetensors and this
package installed (Linux: bytes are the ``wchar`` of ``/proc/self/io``)::

    python packages/cache/benchmarks/bench_commits.py                  # 20,000 values
    python packages/cache/benchmarks/bench_commits.py --values 2000 --fsync

Each value is 16 float32 (64 bytes); ``--shard-size 192`` makes a shard, so a commit,
every 3 values. Cost per commit should not grow with the values already cached.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402

from endoscope_cache import Cache, load  # noqa: E402


def written() -> int:
    """Bytes this process has passed to write(2) so far."""
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=20_000)
    parser.add_argument("--shard-size", type=int, default=192)
    parser.add_argument("--fsync", action="store_true")
    args = parser.parse_args()
    values = [torch.full((16,), float(i)) for i in range(args.values)]
    with tempfile.TemporaryDirectory() as base:
        directory = Path(base) / "cache"
        before, start = written(), time.perf_counter()
        with Cache(directory=directory, shard_size=args.shard_size, fsync=args.fsync) as cache:
            for i, value in enumerate(values):
                cache.add(f"model.layers.{i % 10}.output.i{i // 10}", value)
        seconds, total = time.perf_counter() - start, written() - before
        start = time.perf_counter()
        loaded = load(directory)
        opened = time.perf_counter() - start
        assert torch.equal(loaded["model.layers.3"][7].output, values[73])
        files = {p.name: p.stat().st_size for p in directory.iterdir() if "shard-" not in p.name}
        report = {
            "values": args.values,
            "shards": sum(1 for p in directory.glob("shard-*")),
            "fsync": args.fsync,
            "write_s": round(seconds, 2),
            "bytes_written": total,
            "load_s": round(opened, 3),
            "files": files,
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
