"""One local Ray cluster for the whole session, and the test models' module.

Ray takes about 15 s to start on the project's 2-core machine, so every test that
needs it shares ``ray_cluster`` (2 CPUs, no dashboard); it is shut down, with every
worker process it started, when the session ends. The factories and steps live in
``_models.py``, which Ray pickles by value: its worker processes cannot import the
test directory.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import _models


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(_models)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
