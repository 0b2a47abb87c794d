"""A trace works wherever endoscope-tracing can capture: files, -c, exec, consoles."""

from __future__ import annotations

import code
import linecache
import subprocess
import sys
import textwrap

import torch

from endoscope_envoy import NNsight

SCRIPT = """\
import torch
from endoscope_envoy import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
model = NNsight(net)
x = torch.ones(2, 4)

with model.trace(x):
    top = model[0].output.save()

def in_function(v):
    with model.trace(v):
        out = model.output.save()
    return out

class Runner:
    def run(self, v):
        with model.trace(v):
            out = model[0].output.save()
        return out

looped = []
for i in range(3):
    with model.trace(x * i):
        looped.append(model[0].output.save())

ok = (
    torch.equal(top, net[0](x))
    and torch.equal(in_function(x), net(x))
    and torch.equal(Runner().run(x), net[0](x))
    and all(torch.equal(v, net[0](x * i)) for i, v in enumerate(looped))
)
print("entry-point-ok", ok)
"""


def run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], input=stdin, capture_output=True, text=True, timeout=300
    )


def test_script_file(tmp_path) -> None:
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    result = run([str(path)])
    assert "entry-point-ok True" in result.stdout, result.stderr


def test_python_dash_c() -> None:
    result = run(["-c", SCRIPT])
    assert "entry-point-ok True" in result.stdout, result.stderr


def test_code_interact_console() -> None:
    lines = [
        "import torch",
        "from endoscope_envoy import NNsight",
        "net = torch.nn.Sequential(torch.nn.Linear(4, 4))",
        "model = NNsight(net)",
        "x = torch.ones(1, 4)",
        "with model.trace(x):",
        "    h = model[0].output.save()",
        "",
        "print('console-ok', torch.equal(h, net(x)))",
    ]
    result = run(
        ["-c", "import code; code.interact(banner='', exitmsg='')"], "\n".join(lines) + "\n"
    )
    assert "console-ok True" in result.stdout, result.stderr


def test_exec_of_registered_source(net, x) -> None:
    source = textwrap.dedent(
        """
        with model.trace(x):
            hidden = model.layers[0].output.save()
        """
    )
    name = "<envoy registered cell>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace = {"model": NNsight(net), "x": x}
    exec(compile(source, name, "exec"), namespace)
    assert torch.equal(namespace["hidden"], net.layers[0](net.embed(x)))


def test_in_process_console(net, x) -> None:
    console = code.InteractiveConsole({"model": NNsight(net), "x": x})
    for line in ["with model.trace(x):", "    out = model.output.save()", ""]:
        console.push(line)
    assert torch.equal(console.locals["out"], net(x))
