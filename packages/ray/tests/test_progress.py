"""The progress bar: shown when asked or interactive, silent otherwise."""

from __future__ import annotations

import io
import sys

import pytest

from endoscope_ray._progress import Progress


def test_bar_shows_rows_tokens_per_second_and_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = Progress(True, total=10, initial=2)
    bar.begin(2)
    bar.update(4, 40, 2)
    bar.update(4, 40, 1)
    bar.close()
    text = stream.getvalue()
    assert "10/10" in text and "replicas=1" in text and "tok/s=" in text


def test_silent_when_not_interactive_or_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", stream)
    for enabled in (None, False):
        bar = Progress(enabled, total=3, initial=0)
        bar.update(3, 0, 1)
        bar.close()
        assert bar.bar is None
    assert stream.getvalue() == ""
