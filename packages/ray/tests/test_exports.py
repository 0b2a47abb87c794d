"""The public names: sorted, all present, nothing private leaking."""

from __future__ import annotations

import endoscope_ray


def test_all_is_sorted_and_complete() -> None:
    assert endoscope_ray.__all__ == sorted(endoscope_ray.__all__)
    for name in endoscope_ray.__all__:
        assert getattr(endoscope_ray, name) is not None
    public = {n for n in vars(endoscope_ray) if not n.startswith("_")}
    assert public == set(endoscope_ray.__all__) - {"__version__"}
