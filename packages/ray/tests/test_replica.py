"""What a replica does with a step's result (no Ray): checks, padding cut per row."""

from __future__ import annotations

import pytest
import torch

from endoscope_ray import StepOutputError
from endoscope_ray._replica import Replica, pack


def step(model: object, batch: object) -> None: ...


def test_mask_cuts_left_padding_per_row_and_counts_tokens() -> None:
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    hidden = torch.randn(3, 4, 5)
    logits = torch.randn(3, 7)  # not per-token: second dimension is not the mask's
    packed = pack({"h": hidden, "last": logits, "m": mask}, 10, 13, step, "m", None, None)
    assert packed["tokens"] == 7
    assert set(packed["values"]) == {"h", "last"}
    expected = [hidden[0, 2:], hidden[1], hidden[2, 3:]]
    for got, want in zip(packed["values"]["h"], expected):
        assert torch.equal(got, want)
        assert got.untyped_storage().nbytes() == want.numel() * 4  # own storage, not a view
    assert all(torch.equal(a, b) for a, b in zip(packed["values"]["last"], logits))


def test_lengths_keep_the_last_positions_and_per_token_names_keys() -> None:
    values = torch.arange(2 * 3 * 3).reshape(2, 3, 3).float()
    packed = pack(
        {"v": values, "w": values, "n": torch.tensor([1, 3])}, 0, 2, step, None, "n", ["v"]
    )
    assert torch.equal(packed["values"]["v"][0], values[0, 2:])
    assert torch.equal(packed["values"]["v"][1], values[1])
    assert torch.equal(packed["values"]["w"][0], values[0])  # not named: kept whole
    assert packed["tokens"] == 4


def test_a_lone_tensor_is_stored_under_output() -> None:
    x = torch.randn(2, 3)
    assert torch.equal(pack(x, 0, 2, step, None, None, None)["values"]["output"][1], x[1])


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ([torch.zeros(2)], r"returned list: return a tensor or a dict of tensors"),
        ({"h": 3.0}, r"returned float under 'h': every value must be a tensor"),
        ({"h": torch.zeros(3, 2)}, r"'h' of shape \[3, 2\]: its first dimension must be .* 2 rows"),
        ({"h": torch.zeros(2, 2)}, r"returned no 'm', which mask='m' names"),
    ],
)
def test_results_that_cannot_be_rows_name_the_step_and_rows(result: object, message: str) -> None:
    with pytest.raises(
        StepOutputError, match=r"the step step \(.*test_replica.py:\d+\) on rows 4-5"
    ):
        pack(result, 4, 6, step, "m" if "mask" in message else None, None, None)
    with pytest.raises(StepOutputError, match=message):
        pack(result, 4, 6, step, "m" if "mask" in message else None, None, None)


def test_replica_loads_once_and_runs_the_step_on_one_thread() -> None:
    loads = []

    def factory() -> torch.nn.Module:
        loads.append(1)
        return torch.nn.Linear(2, 2)

    replica = Replica(factory, lambda model, x: {"y": model(x).detach()}, None, None, None)
    threads = torch.get_num_threads()
    try:
        replica.setup(1)
        assert torch.get_num_threads() == 1
        x = torch.randn(3, 2)
        out = replica.run(0, 3, x)
        out = replica.run(3, 6, x)
    finally:
        torch.set_num_threads(threads)
    assert loads == [1]
    assert torch.equal(torch.stack(out["values"]["y"]), replica.model(x).detach())
