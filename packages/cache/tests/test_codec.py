from __future__ import annotations

import dataclasses
import json
import math
from collections import OrderedDict, namedtuple
from typing import Any

import pytest
import torch

from endoscope_cache import OpaqueValue
from endoscope_cache._codec import decode, describe_node, dtype_from_name, encode
from endoscope_cache._nested import describe

Pair = namedtuple("Pair", ["left", "right"])


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    past: tuple | None = None
    step: int = 0
    cached: Any = dataclasses.field(default=None, init=False)


class Store:
    """Keeps tensors in a list; nodes name them by position."""

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []

    def put(self, tensor: torch.Tensor) -> dict[str, Any]:
        self.tensors.append(tensor.clone())
        return {
            "type": "tensor",
            "shard": 0,
            "key": str(len(self.tensors) - 1),
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape),
        }

    def get(self, node: dict[str, Any]) -> torch.Tensor:
        return self.tensors[int(node["key"])]


def roundtrip(value: Any) -> Any:
    store = Store()
    node = json.loads(json.dumps(encode(value, store.put)))  # nodes are plain JSON
    return decode(node, store.get)


def test_structures_and_leaves_round_trip_exactly(same) -> None:
    t = torch.arange(6.0).reshape(2, 3)
    out = Out(logits=t, past=((t, t + 1),), step=3)
    out.cached = [None, 2]
    value = (
        t,
        [None, 7, -(2**70), True, "text", b"\x00\xff", 1.5 + 2j],
        {"a": t, 3: (None,), None: [t]},
        Pair(t, "right"),
        out,
        OrderedDict(first=1, second=t),
        torch.Size([2, 3]),
        torch.float16,
        torch.device("cpu"),
        slice(1, None, 2),
        Ellipsis,
        (),
    )
    back = roundtrip(value)
    assert type(back) is tuple and len(back) == len(value)
    same(back[0], t)
    same(back[1], value[1])
    assert set(back[2]) == {"a", 3, None}
    same(back[2]["a"], t)
    same(back[2][None][0], t)
    assert type(back[3]) is Pair
    same(back[3].left, t)
    assert type(back[4]) is Out and back[4].step == 3 and back[4].cached == [None, 2]
    same(back[4].past, out.past)
    assert type(back[5]) is OrderedDict and list(back[5]) == ["first", "second"]
    assert back[6] == torch.Size([2, 3]) and type(back[6]) is torch.Size
    assert back[7] is torch.float16 and back[8] == torch.device("cpu")
    assert back[9] == slice(1, None, 2) and back[10] is Ellipsis and back[11] == ()


def test_floats_are_exact() -> None:
    values = [0.1, -0.0, math.inf, -math.inf, 1e-310, 2.0**-1074]
    back = roundtrip(values)
    assert [v.hex() for v in back] == [v.hex() for v in values]
    assert math.isnan(roundtrip(math.nan))


def test_unknown_objects_become_opaque_values() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "Thing(x)" * 50

    back = roundtrip([Thing(), torch.ones(1)])
    opaque = back[0]
    assert isinstance(opaque, OpaqueValue)
    assert opaque.type_name.endswith("Thing") and ":" in opaque.type_name
    assert opaque.text.startswith("Thing(x)") and len(opaque.text) == 200
    assert "OpaqueValue(" in repr(opaque)
    assert opaque == OpaqueValue(opaque.type_name, opaque.text) and len({opaque, opaque}) == 1


def test_classes_that_cannot_be_found_fall_back_to_plain_containers() -> None:
    @dataclasses.dataclass
    class Local:
        x: int

    Local2 = namedtuple("Local2", ["a"])
    node = encode((Local(3), Local2(4)), Store().put)
    node["items"][1]["class"] = "no_such_module_xyz:Local2"
    back = decode(node, Store().get)
    assert back == ({"x": 3}, (4,))


def test_describe_node_matches_describe_of_the_live_value() -> None:
    t = torch.zeros(2, 3, dtype=torch.bfloat16)
    for value in [
        t,
        (t, None),
        (t,),
        [t, 1, "s"],
        {"k": t, 2: None},
        Pair(t, 3),
        Out(logits=t),
        torch.Size([1, 2]),
        tuple(range(9)),
        1.5,
    ]:
        assert describe_node(encode(value, Store().put)) == describe(value)


def test_bad_manifest_content_is_reported() -> None:
    with pytest.raises(ValueError, match="unknown torch dtype"):
        dtype_from_name("float99")
    with pytest.raises(ValueError, match="unknown node type"):
        decode({"type": "martian"}, Store().get)


@dataclasses.dataclass
class DictOut(OrderedDict):
    """Shaped like transformers' ModelOutput: a dataclass whose set fields are also keys."""

    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                self[field.name] = value


def test_model_output_like_values_round_trip() -> None:
    t = torch.arange(3.0)
    back = roundtrip(DictOut(logits=t))
    assert type(back) is DictOut and list(back) == ["logits"] and back.hidden is None
    assert torch.equal(back.logits, t) and back["logits"] is back.logits
