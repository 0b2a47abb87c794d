"""Dataset kinds, batching, chunking and input hashes (no Ray)."""

from __future__ import annotations

import pytest
import torch

from endoscope_ray._dataset import chunks, collate, dataset_rows


def test_lists_generators_tensors_and_hf_datasets() -> None:
    import datasets

    rows, length = dataset_rows(["a", "b"], None)
    assert (list(rows), length) == (["a", "b"], 2)
    rows, length = dataset_rows((t for t in "xyz"), None)
    assert (list(rows), length) == (list("xyz"), None)
    tensor = torch.arange(6).reshape(3, 2)
    rows, length = dataset_rows(tensor, None)
    assert length == 3 and torch.equal(torch.stack(list(rows)), tensor)
    table = datasets.Dataset.from_dict({"text": ["p", "q"], "n": [1, 2]})
    rows, length = dataset_rows(table, "text")
    assert (list(rows), length) == (["p", "q"], 2)
    rows, _ = dataset_rows(table["n"], None)
    assert list(rows) == [1, 2]
    with pytest.raises(ValueError, match=r"has columns \['text', 'n'\]: pass column="):
        dataset_rows(table, None)
    with pytest.raises(TypeError, match="a single string: pass a list of prompts"):
        dataset_rows("one prompt", None)
    with pytest.raises(TypeError, match="must be an iterable of prompts or tensors"):
        dataset_rows(3, None)


def test_chunks_hold_whole_batches_and_hash_their_inputs() -> None:
    found = list(chunks(iter([f"p{i}" for i in range(11)]), batch_size=3, chunk_batches=2))
    assert [(c.start, c.stop) for c in found] == [(0, 6), (6, 11)]
    assert [(b.start, b.stop) for b in found[1].batches] == [(6, 9), (9, 11)]
    assert found[1].batches[1].data == ["p9", "p10"]
    again = list(chunks(iter([f"p{i}" for i in range(11)]), 3, 2))
    other = list(chunks(iter([f"p{i}" for i in range(10)] + ["changed"]), 3, 2))
    assert [c.digest for c in again] == [c.digest for c in found]
    assert other[0].digest == found[0].digest and other[1].digest != found[1].digest


def test_collate_stacks_tensors_of_one_shape_only() -> None:
    a, b = torch.zeros(2), torch.ones(2)
    assert torch.equal(collate([a, b]), torch.stack([a, b]))
    assert collate([a, torch.ones(3)])[1].shape == (3,)
    assert collate(["x", "y"]) == ["x", "y"]
