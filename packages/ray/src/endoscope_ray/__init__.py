"""Run endoscope traces over a whole dataset on a Ray cluster, activations streamed to disk.

``map_traces(factory, step, dataset, out=...)`` starts replicas (Ray actors, each
loading the model once with ``factory``), spreads the dataset's batches over them, runs
``step(model, batch)`` (any trace code) on each and writes the returned tensors row by
row, in dataset order, as endoscope-cache shards under one index. ``open_store(out)``
reopens a run; ``store[key][row]`` reads one row, and ``store[key]`` is a
``torch.utils.data.Dataset``.
"""

from ._errors import BatchError, FactoryError, RunMismatchError, StepOutputError
from ._run import map_traces
from ._store import Column, Store, open_store
from ._version import __version__

__all__ = [
    "BatchError",
    "Column",
    "FactoryError",
    "RunMismatchError",
    "StepOutputError",
    "Store",
    "__version__",
    "map_traces",
    "open_store",
]
