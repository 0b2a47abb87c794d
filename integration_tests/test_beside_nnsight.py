"""endoscope and nnsight 0.8.1 in one process (a user comparing or migrating).

Both replace ``Tensor.backward`` so that ``with loss.backward():`` opens a block;
in either import order, each library's backward blocks must keep working in its
own traces, and a plain ``backward()`` must stay torch's. Each order runs in a
fresh interpreter: import order is the point.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

_SCRIPT = """
import sys
import torch

if sys.argv[1] == "nnsight":
    import nnsight
    import endoscope
else:
    import endoscope
    import nnsight

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
x = torch.randn(2, 3)
hidden = net[0](x)
hidden.retain_grad()
net[2](net[1](hidden)).sum().backward()
expected = hidden.grad
net.zero_grad(set_to_none=True)

for library in (endoscope, nnsight, endoscope, nnsight):
    model = library.NNsight(net)
    with model.trace(x):
        inner = model[0].output
        loss = model.output.sum()
        with loss.backward():
            grad = library.save(inner.grad)
    net.zero_grad(set_to_none=True)
    assert torch.equal(grad, expected), (library.__name__, grad, expected)
    leaf = torch.ones(2, requires_grad=True)
    (leaf * 3).sum().backward()
    assert leaf.grad.tolist() == [3.0, 3.0]
print("ok")
"""


@pytest.mark.parametrize("first", ["nnsight", "endoscope"])
def test_backward_blocks_of_both_libraries_in_either_import_order(first: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, first], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
