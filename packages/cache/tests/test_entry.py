from __future__ import annotations

from typing import Any

import pytest
import torch

from endoscope_cache import Cache, Entry, EntryList
from endoscope_cache._entry import Deferred


class CountingDeferred(Deferred):
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value
        self.loads = 0

    def load(self) -> Any:
        self.loads += 1
        return self.value.clone()

    def describe(self) -> str:
        return "on-disk"


def test_fields_and_first_input() -> None:
    x, y = torch.ones(2), torch.zeros(3)
    entry = Entry(output=x, inputs=((x, y), {"scale": 2}), iteration=4)
    assert entry.output is x
    assert entry.inputs[0][1] is y and entry.inputs[1] == {"scale": 2}
    assert entry.input is x
    assert entry.iteration == 4
    assert Cache.Entry is Entry


def test_input_falls_back_to_first_keyword_then_none() -> None:
    x = torch.ones(1)
    assert Entry(inputs=((), {"hidden": x, "mask": None})).input is x
    assert Entry(inputs=((), {})).input is None


def test_missing_parts_raise_with_what_to_do() -> None:
    entry = Entry(output=torch.ones(1), iteration=0)
    with pytest.raises(AttributeError, match="include_inputs=True"):
        _ = entry.inputs
    with pytest.raises(AttributeError, match="include_inputs=True"):
        _ = entry.input
    with pytest.raises(AttributeError, match=r"iteration 0.*include_output=True"):
        _ = Entry(inputs=((), {}), iteration=0).output


def test_a_cached_none_output_is_kept() -> None:
    entry = Entry._empty(0)
    entry._set("output", None)
    assert entry._has("output")
    assert entry.output is None
    assert "output=None" in repr(entry)


def test_setters_mark_parts_present() -> None:
    entry = Entry()
    entry.output = 5
    entry.inputs = ((1,), {})
    assert entry.output == 5 and entry.input == 1


def test_deferred_values_are_loaded_on_every_read() -> None:
    stored = CountingDeferred(torch.arange(3))
    entry = Entry._empty(0)
    entry._set("output", stored)
    first, second = entry.output, entry.output
    assert torch.equal(first, torch.arange(3)) and torch.equal(second, first)
    assert first is not second and stored.loads == 2
    assert repr(entry) == "Entry(i0 output=on-disk)"
    assert stored.loads == 2  # describing reads nothing


def test_entry_list_reads_every_call() -> None:
    calls = EntryList(
        [
            Entry(output=torch.zeros(1), inputs=((torch.ones(1),), {}), iteration=0),
            Entry(output=torch.ones(1), inputs=((torch.zeros(1),), {}), iteration=1),
        ]
    )
    assert isinstance(calls, list)
    assert [t.item() for t in calls.output] == [0.0, 1.0]
    assert [t.item() for t in calls.input] == [1.0, 0.0]
    assert [args[0].item() for args, _ in calls.inputs] == [1.0, 0.0]
    assert repr(calls).startswith("EntryList([Entry(i0 output=float32[1]")


def test_repr_describes_shapes_not_values() -> None:
    entry = Entry(output=(torch.zeros(2, 3), None), inputs=((torch.ones(2, 4),), {}), iteration=1)
    assert repr(entry) == "Entry(i1 output=(float32[2, 3], None) inputs=((float32[2, 4],), {}))"
    assert repr(Entry()) == "Entry((empty))"


def test_entry_list_index_out_of_range_names_the_cached_calls() -> None:
    calls = EntryList([Entry(output=torch.ones(1), iteration=i) for i in range(3)])
    assert calls[-1] is list.__getitem__(calls, 2) and calls[1:] == [calls[1], calls[2]]
    with pytest.raises(
        IndexError,
        match=r"call 3 is out of range: this module has 3 cached calls \(0-2, or -3 to -1\)\.$",
    ):
        calls[3]
    calls._note = " This cache is incomplete."  # what load() sets on an incomplete cache
    with pytest.raises(
        IndexError, match=r"cached calls \(0-2, or -3 to -1\)\. This cache is incomplete\.$"
    ):
        calls[-4]
