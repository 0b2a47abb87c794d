from __future__ import annotations

import dataclasses
from collections import OrderedDict, defaultdict, namedtuple

import torch

from endoscope_cache._nested import describe, describe_tensor, map_tensors

Pair = namedtuple("Pair", ["left", "right"])


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    extra: object = None
    derived: torch.Tensor | None = dataclasses.field(default=None, init=False)


@dataclasses.dataclass(frozen=True)
class Frozen:
    value: torch.Tensor


def double(t: torch.Tensor) -> torch.Tensor:
    return t * 2


def test_tensor_is_mapped_directly() -> None:
    t = torch.arange(4)
    assert torch.equal(map_tensors(t, double), t * 2)


def test_every_container_kind_is_rebuilt_around_mapped_tensors() -> None:
    a, b = torch.ones(2), torch.arange(3.0)
    out = Out(logits=a, extra=[b, 3])
    out.derived = b
    value = (
        a,
        [b, None, 7],
        {"x": a, 2: (b,)},
        Pair(a, "s"),
        out,
        OrderedDict(k=b),
        torch.Size([2, 3]),
    )
    mapped = map_tensors(value, double)
    assert type(mapped) is tuple and len(mapped) == len(value)
    assert torch.equal(mapped[0], a * 2)
    assert torch.equal(mapped[1][0], b * 2) and mapped[1][1:] == [None, 7]
    assert torch.equal(mapped[2]["x"], a * 2) and torch.equal(mapped[2][2][0], b * 2)
    assert type(mapped[3]) is Pair and torch.equal(mapped[3].left, a * 2)
    assert mapped[3].right == "s"
    assert type(mapped[4]) is Out
    assert torch.equal(mapped[4].logits, a * 2)
    assert torch.equal(mapped[4].extra[0], b * 2) and mapped[4].extra[1] == 3
    assert torch.equal(mapped[4].derived, b * 2)  # a non-init field is mapped too
    assert type(mapped[5]) is OrderedDict and torch.equal(mapped[5]["k"], b * 2)
    assert mapped[6] == torch.Size([2, 3])
    # The input is untouched.
    assert torch.equal(value[0], a) and torch.equal(out.logits, a)


def test_frozen_dataclass_defaultdict_and_return_types() -> None:
    t = torch.tensor([[1.0, 5.0], [7.0, 2.0]])
    frozen = map_tensors(Frozen(t), double)
    assert type(frozen) is Frozen and torch.equal(frozen.value, t * 2)

    factory = defaultdict(list, {"a": t})
    mapped = map_tensors(factory, double)
    assert type(mapped) is defaultdict and mapped.default_factory is list
    assert torch.equal(mapped["a"], t * 2)

    result = torch.max(t, dim=1)
    mapped_result = map_tensors(result, double)
    assert type(mapped_result) is type(result)
    assert torch.equal(mapped_result.values, result.values * 2)
    assert torch.equal(mapped_result.indices, result.indices * 2)


def test_containers_without_tensors_are_returned_as_is() -> None:
    value = {"a": [1, 2, (None, "x")], "b": Pair(1, 2)}
    assert map_tensors(value, double) is value
    same = lambda t: t  # noqa: E731
    nested = (torch.ones(1), [torch.zeros(2)])
    assert map_tensors(nested, same) is nested


def test_describe_spells_dtypes_and_shapes() -> None:
    assert describe_tensor(torch.float32, (2, 8)) == "float32[2, 8]"
    assert describe(torch.zeros(2, 3, dtype=torch.int64)) == "int64[2, 3]"
    assert describe(torch.tensor(1.0)) == "float32[]"
    assert describe((torch.zeros(1), None)) == "(float32[1], None)"
    assert describe((torch.zeros(1),)) == "(float32[1],)"
    assert describe([1, "s"]) == "[1, 's']"
    assert describe({"k": torch.zeros(2)}) == "{'k': float32[2]}"
    assert describe(Pair(torch.zeros(1), 3)) == "Pair(left=float32[1], right=3)"
    assert describe(Out(torch.zeros(2))) == "Out(logits=float32[2], extra=None, derived=None)"
    assert describe(object()) == "object"
    long = describe(tuple(range(10)))
    assert long.startswith("(0, 1, 2, 3, 4, 5, ... 4 more")


@dataclasses.dataclass
class DictOut(OrderedDict):
    """Shaped like transformers' ModelOutput: a dataclass whose set fields are also keys."""

    logits: torch.Tensor | None = None
    past: tuple | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                self[field.name] = value


def test_model_output_like_values_keep_keys_and_attributes_in_step() -> None:
    t = torch.ones(2)
    mapped = map_tensors(DictOut(logits=t, past=((t,),)), double)
    assert type(mapped) is DictOut and list(mapped) == ["logits", "past"]
    assert torch.equal(mapped.logits, t * 2) and mapped["logits"] is mapped.logits
    assert torch.equal(mapped["past"][0][0], t * 2)
