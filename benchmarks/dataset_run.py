"""Rows per second over a dataset: a plain loop, and endoscope-ray with 1 and 2 replicas.

Run from the repository root with endoscope and endoscope-ray installed::

    python benchmarks/dataset_run.py [--rows N] [--batch-size B]

The work is the SAE-caching step of ``packages/ray/README.md`` on the shipped demo
model (4-layer GPT-2, d_model 128): tokenize a batch of prompts with left padding,
trace it, save layer 2's residual stream and keep each row's real tokens. Three ways:

* ``plain loop``: one process, one torch thread, the same step over the same batches
  in a ``for`` loop, rows kept in a list (the code a user writes by hand);
* ``map_traces, 1 replica``: a local Ray cluster with 2 CPUs, one replica on one
  torch thread, rows streamed to a temporary ``out`` directory;
* ``map_traces, 2 replicas``: the same with two replicas.

For map_traces, ``rows/s`` counts the batches only (from the replicas being loaded
to the last chunk written, ``store.timing["run_seconds"]``); model loading in the
replicas and Ray's start are reported apart. Each figure is one run: the machine is
shared, so expect noise, and nothing here is a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PROMPTS = [
    "The Eiffel Tower is in",
    "Big Ben is in the city of",
    "The Colosseum is in",
    "The capital of Italy is",
    "Berlin is the capital of",
    "The Louvre is in",
    "Madrid is",
    "The Brandenburg Gate is in",
]


def load() -> Any:
    import endoscope

    return endoscope.demo_model()


def step(lm: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    inputs = lm.tokenizer(texts, return_tensors="pt", padding=True)
    with lm.trace(dict(inputs)):
        resid = lm.transformer.h[2].output.save()
    return {"resid": resid, "mask": inputs["attention_mask"]}


def plain_loop(texts: list[str], batch_size: int) -> tuple[float, int]:
    torch.set_num_threads(1)
    lm = load()
    step(lm, texts[:batch_size])  # warm up, as the replicas' first batch is not timed either
    rows: list[torch.Tensor] = []
    began = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        result = step(lm, texts[start : start + batch_size])
        for row, mask in zip(result["resid"], result["mask"].bool()):
            rows.append(row[mask].clone())
    return time.perf_counter() - began, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    texts = [PROMPTS[i % len(PROMPTS)] + f" {i % 7}" * (i % 5) for i in range(args.rows)]

    import ray

    import endoscope_ray

    print(
        f"{args.rows} rows, batch {args.batch_size}, torch {torch.__version__}, ray {ray.__version__}"
    )
    seconds, rows = plain_loop(texts, args.batch_size)
    print(f"{'plain loop (1 thread)':<28} {rows / seconds:8.1f} rows/s")
    began = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"{'ray.init (local, 2 CPUs)':<28} {time.perf_counter() - began:8.1f} s")
    try:
        for replicas in (1, 2):
            with tempfile.TemporaryDirectory() as directory:
                store = endoscope_ray.map_traces(
                    load, step, texts, out=Path(directory) / "acts", batch_size=args.batch_size,
                    replicas=replicas, mask="mask", progress=False,
                )  # fmt: skip
                timing = store.timing
                assert len(store) == args.rows
                print(
                    f"{f'map_traces, {replicas} replica(s)':<28} "
                    f"{args.rows / timing['run_seconds']:8.1f} rows/s "
                    f"(models loaded in {timing['load_seconds']:.1f} s)"
                )
    finally:
        ray.shutdown()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
