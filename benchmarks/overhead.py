"""Overhead of endoscope over a plain forward pass, next to plain torch hooks.

Run from the repository root with the endoscope packages (and, for the GPT-2 part,
``transformers``) installed::

    python benchmarks/overhead.py [--quick] [--reps N] [--runs N] [--scheduler greenlet|thread]
                                  [--compare nnsight] [--model all|mlp|gpt2|lm] [--plot PATH]
                                  [--clock wall|cpu]

or ``nox -s bench -- [options]``.

Two models, both on one torch thread with batch 1:

* ``mlp``: 12 blocks, each ``Linear(64, 64)`` then ``ReLU``; the 12 points are the
  12 block outputs.
* ``gpt2``: ``GPT2LMHeadModel`` with random weights from
  ``GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)`` on
  input ids of shape (1, 8). It has only two blocks, so the 12 points are six
  modules per block, in execution order: ``ln_1``, ``attn.c_attn``,
  ``attn.c_proj``, ``ln_2``, ``mlp.c_fc`` and ``mlp``. All of them return a plain
  tensor in every transformers version (block outputs are tuples in some), so every
  scenario does exactly the same work on every point. Skipped, with a note, when
  transformers is not installed.

Scenarios, each done by endoscope inside ``model.trace(x)`` and by plain torch
forward hooks registered before and removed after the forward (a trace registers
its hooks per run too):

* empty trace (the plain-hooks column is the plain forward itself);
* 12 saves: keep each point's output (hooks append the tensor to a list; ``save``
  does not copy either);
* 12 in-place edits: ``output[..., 0] = 0`` at each point;
* 12 replacements: ``output = output * 2`` at each point;
* cache every module: ``tracer.cache()`` with its defaults (outputs, detached, on
  the CPU); hooks on every module store the detached output;
* one ``.source`` op read: the output of the first call site in one module's
  forward (``self.fc(...)`` in the first MLP block, ``self.c_fc(...)`` in the first
  GPT-2 MLP), on a copy of the model of its own (both libraries keep a module
  whose ``.source`` was built on its rewritten forward, which the other scenarios
  must not pay for); hooks read the same value with a forward hook on the called
  module;
* backward with one ``.grad`` read, a session of two traces, an edited model's
  trace; and 1 and 4 saves, which with 12 saves show the cost per extra read.

Growth with invokes and generated steps, on the tiny GPT-2 (room for 64 positions
more) with the demo model's tokenizer, through each library's ``LanguageModel``:

* 1, 8 and 32 invokes of one prompt each (5 to 8 tokens, so the batch is padded),
  each saving ``h[1].mlp``'s output; plain side: one padded batch through
  transformers with a forward hook keeping that output (positions counted from
  each prompt's first token, as both libraries do);
* ``generate`` of 8 and 64 tokens (``min_new_tokens`` so a random model cannot
  stop early) zeroing feature 0 of ``h[0].mlp``'s output at every step; plain
  side: ``generate`` with a forward hook doing the same edit.

Each is also timed without any hook ("plain"), which is what the picture's
overhead is measured from; the cost per extra invoke (1 to 32) and per extra step
(8 to 64) is reported above the hooked plain figure.

Every variant runs once with a correctness check before timing (saved values,
cached values and edited outputs must equal what the plain hooks produce, and edits
must change the output), so the benchmark cannot time broken behaviour. Timing
then runs all variants of a model round-robin in a shuffled order for many rounds,
to spread drift over all of them, timing each call right after an untimed call of
the same variant (so no variant is charged for what another one left behind), and
reports medians; the whole timing is repeated ``--runs`` times (3 by default) and
each figure is the median of the runs' medians. ``overhead`` is a variant's median
minus the plain forward's median; ``endo/hooks`` and ``endo/nnsight`` divide
endoscope's overhead by the other's. ``machinery`` is a variant's median minus the
plain hooks doing the same reads and writes (for the empty trace, minus the plain
forward): what the library itself costs, without the torch work of the user's own
edits, which every library pays.

With ``--compare``, a verdict closes the report: machinery overhead at most 0.5 of
the other library's in every scenario of both models (the empty trace at most 0.4),
and the cost per extra invoke and per extra generated step above plain
transformers at most 0.5 of the other's. A PNG of overhead against the number of
reads, invokes and generated steps (endoscope, the other library, plain hooks) is
written to ``--plot`` (default ``benchmarks/out/overhead.png``) when matplotlib is
importable.

With ``greenlet`` installed, a *floor* is measured too for saves, in-place edits
and replacements: the same reads and writes by a hand-written interleaving (one
reused greenlet runs the intervention, the points' forwards are wrapped for the
call; no with-block capture, no checks, no bookkeeping), i.e. what running user
code beside the forward costs at least. With ``--compare``, the floor table also
shows how much of half the other library's overhead is left above the floor.

``--compare nnsight`` runs the same scenarios with ``nnsight.NNsight`` in the same
process and rounds when nnsight is importable. Both libraries are called with their function form of
save (``endoscope_envoy.save(v)``, ``nnsight.save(v)``), because nnsight mounts a
permanent ``.save`` on every object at import, which would shadow endoscope's
per-trace one; the bound method only calls the function, so the cost is the same.
Each library also replaces ``torch.Tensor.backward`` for good at import (for
``with loss.backward():`` blocks); in one process only the last import's stays, and
the other library would put its own back around each of its traces, a cost it
never pays alone (a class attribute set twice per trace, which also drops the
interpreter's attribute caches of every tensor type). So every variant runs with
the ``Tensor.backward`` its library installs when alone, plain variants with
torch's own, switched before the variant's untimed call.

Exit status: 1 when an endoscope variant gave a wrong result, or when one of the
core scenarios (empty, saves, edits, replacements) raised; caching and ``.source``
are reported as unavailable when they raise (they may not be implemented yet).
This is a benchmark: figures vary with the machine and its load; nothing here
asserts on time.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import endoscope_envoy

# Printed above every results table; the integration test looks for it.
HEADER = "| scenario |"
CORE = ("empty trace", "12 saves", "12 in-place edits", "12 replacements")
SCENARIOS = (
    *CORE,
    "cache every module",
    "one .source op read",
    "backward, one .grad read",
    "session of two traces",
    "edited model's trace",
)
# Fewer saves, for how the cost grows with the number of reads (with "12 saves").
READ_COUNTS = {"1 save": 1, "4 saves": 4}
# What a scenario's overhead is measured against (a plain-torch variant's name).
BASELINES = {
    "backward, one .grad read": "plain forward+backward",
    "session of two traces": "two plain forwards",
}


# --------------------------------------------------------------------- models


class Block(torch.nn.Module):
    """One MLP block: ``Linear(width, width)`` then ``ReLU``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(width, width)
        self.act = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class MLP(torch.nn.Module):
    """``depth`` blocks in a row, addressable as ``layers[i]``."""

    def __init__(self, depth: int = 12, width: int = 64) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(Block(width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


@dataclass
class Subject:
    """A model to benchmark and where its scenarios read and write.

    Attributes:
        name: short name used in the report.
        description: one line describing model and input.
        module: the torch model (its own copy; wrappers get deep copies).
        inputs: the positional inputs of one forward.
        points: dotted paths of the 12 modules read or written, in execution order.
        source: ``(module path, op name, path of the module that op calls)``.
    """

    name: str
    description: str
    module: torch.nn.Module
    inputs: tuple[Any, ...]
    points: list[str]
    source: tuple[str, str, str]


def build_mlp() -> Subject:
    """The 12-block MLP of width 64 on one input row."""
    torch.manual_seed(0)
    module = MLP().eval()
    return Subject(
        name="mlp",
        description="MLP, 12 x (Linear(64, 64) + ReLU), batch 1",
        module=module,
        inputs=(torch.randn(1, 64),),
        points=[f"layers.{i}" for i in range(12)],
        source=("layers.0", "self_fc_0", "layers.0.fc"),
    )


def build_gpt2() -> Subject | str:
    """The tiny random GPT-2, or why it cannot be built."""
    try:
        import transformers
    except ImportError as error:
        return f"transformers is not installed ({error}); pip install transformers to run it"
    import logging

    # The tiny vocabulary makes transformers warn about GPT-2's default token ids.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    torch.manual_seed(0)
    module = transformers.GPT2LMHeadModel(config).eval()
    per_block = ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp")
    return Subject(
        name="gpt2",
        description=(
            "tiny GPT-2 (n_layer=2, n_embd=32, n_head=2, vocab 100), ids (1, 8); "
            "12 points = h[0..1].{" + ", ".join(per_block) + "}"
        ),
        module=module,
        inputs=(torch.randint(0, config.vocab_size, (1, 8)),),
        points=[f"transformer.h.{i}.{name}" for i in range(config.n_layer) for name in per_block],
        source=("transformer.h.0.mlp", "self_c_fc_0", "transformer.h.0.mlp.c_fc"),
    )


# ------------------------------------------------------------- traced bodies
# Module-level functions so that both libraries capture the same source text.
# ``check`` adds one read of the model's output, used only by the correctness run.


def trace_empty(model: Any, x: Any, envoys: list[Any], save: Callable, check: bool) -> Any:
    """An empty trace: the cost of tracing at all."""
    with model.trace(x):
        pass
    return None


def trace_saves(model: Any, x: Any, envoys: list[Any], save: Callable, check: bool) -> Any:
    """Save the output of every point."""
    saved = []
    out = None
    with model.trace(x):
        for envoy in envoys:
            saved.append(save(envoy.output))
        if check:
            out = save(model.output)
    return saved, out


def trace_edits(model: Any, x: Any, envoys: list[Any], save: Callable, check: bool) -> Any:
    """Zero feature 0 of every point's output in place."""
    out = None
    with model.trace(x):
        for envoy in envoys:
            envoy.output[..., 0] = 0
        if check:
            out = save(model.output)
    return out


def trace_replacements(model: Any, x: Any, envoys: list[Any], save: Callable, check: bool) -> Any:
    """Replace every point's output with twice its value."""
    out = None
    with model.trace(x):
        for envoy in envoys:
            envoy.output = envoy.output * 2
        if check:
            out = save(model.output)
    return out


def trace_cache(model: Any, x: Any, envoys: list[Any], save: Callable, check: bool) -> Any:
    """Cache the output of every module."""
    with model.trace(x) as tracer:
        cache = tracer.cache()
    return cache


def trace_source(model: Any, x: Any, where: tuple[Any, str], save: Callable, check: bool) -> Any:
    """Read one operation's output through ``.source``."""
    envoy, op = where
    with model.trace(x):
        value = save(getattr(envoy.source, op).output)
    return value


def trace_backward(model: Any, x: Any, envoys: list[Any], save: Callable, check: bool) -> Any:
    """Backward from the output's sum; read the gradient of one hidden value."""
    with model.trace(x):
        hidden = envoys[6].output
        loss = _main(model.output).sum()
        with loss.backward():
            grad = save(hidden.grad)
    return grad


def trace_session(model: Any, x: Any, envoys: list[Any], save: Callable, check: bool) -> Any:
    """Two traces in a session: the second writes back what the first read."""
    out = None
    with model.session():
        with model.trace(x):
            hidden = save(envoys[6].output)
        with model.trace(x):
            envoys[6].output = hidden
            if check:
                out = save(model.output)
    return out


def make_edited(model: Any, envoys: list[Any]) -> Any:
    """An edited copy of ``model`` that zeroes feature 0 of one point in every trace."""
    with model.edit() as (_, edited):
        envoys[6].output[..., 0] = 0
    return edited


def trace_edited(edited: Any, x: Any, envoys: list[Any], save: Callable, check: bool) -> Any:
    """A trace of an edited model (the edit runs; the trace itself adds nothing)."""
    out = None
    with edited.trace(x):
        if check:
            out = save(edited.output)
    return out


TRACED: dict[str, Callable[..., Any]] = {
    "empty trace": trace_empty,
    "12 saves": trace_saves,
    "12 in-place edits": trace_edits,
    "12 replacements": trace_replacements,
    "cache every module": trace_cache,
    "one .source op read": trace_source,
    "backward, one .grad read": trace_backward,
    "session of two traces": trace_session,
    "edited model's trace": trace_edited,
}


# ---------------------------------------------------------- plain-hook bodies


def _forward_with(module: torch.nn.Module, x: Any, hooks: Sequence[tuple[Any, Any]]) -> Any:
    """Run ``module(x)`` with forward hooks that exist for this call only."""
    handles = [target.register_forward_hook(hook) for target, hook in hooks]
    try:
        return module(*x)
    finally:
        for handle in handles:
            handle.remove()


def _detach(value: Any) -> Any:
    """Detach every tensor in a nested output, as a cache does by default."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if type(value) in (tuple, list):
        return type(value)(_detach(v) for v in value)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def hooks_saves(module: torch.nn.Module, x: Any, targets: list[Any]) -> Any:
    """Keep every target's output; return ``(saved, model output)``."""
    saved: list[Any] = []

    def keep(_m: Any, _a: Any, out: Any) -> None:
        saved.append(out)

    out = _forward_with(module, x, [(t, keep) for t in targets])
    return saved, out


def hooks_edits(module: torch.nn.Module, x: Any, targets: list[Any]) -> Any:
    """Zero feature 0 of every target's output in place; return the model output."""

    def edit(_m: Any, _a: Any, out: Any) -> None:
        out[..., 0] = 0

    return _forward_with(module, x, [(t, edit) for t in targets])


def hooks_replacements(module: torch.nn.Module, x: Any, targets: list[Any]) -> Any:
    """Replace every target's output with twice its value; return the model output."""

    def replace(_m: Any, _a: Any, out: Any) -> Any:
        return out * 2

    return _forward_with(module, x, [(t, replace) for t in targets])


def hooks_cache(module: torch.nn.Module, x: Any, named: list[tuple[str, Any]]) -> Any:
    """Store every module's detached output by path; return that dict."""
    cache: dict[str, Any] = {}
    hooks = []
    for name, target in named:

        def record(_m: Any, _a: Any, out: Any, name: str = name) -> None:
            cache[name] = _detach(out)

        hooks.append((target, record))
    _forward_with(module, x, hooks)
    return cache


def hooks_source(module: torch.nn.Module, x: Any, targets: list[Any]) -> Any:
    """Read the output of the module one source operation calls."""
    return hooks_saves(module, x, targets)[0][0]


# ------------------------------------------------------------------- floor
# What any library that runs the user's code beside the forward must pay at least:
# the same reads and writes done by a hand-written interleaving, with nothing else.
# One greenlet (reused, as endoscope pools them) runs the intervention; each point's
# forward is wrapped for the call (an instance attribute, as endoscope does) and
# switches to it with the output. No with-block capture, no checks, no bookkeeping:
# no usable library is this cheap, which is what makes it a floor.


class Floor:
    """Hand-written interleavings of the point scenarios (see above)."""

    def __init__(self) -> None:
        import greenlet

        self._greenlet = greenlet
        self._worker = greenlet.greenlet(self._serve_jobs)
        self._worker.switch()  # parked, waiting for the first job

    def _serve_jobs(self) -> None:
        job = self._worker.parent.switch()
        while True:
            job = self._worker.parent.switch(job())

    def run(
        self, module: torch.nn.Module, x: Any, targets: list[Any], kind: str
    ) -> tuple[list[Any], Any]:
        """``kind``: ``"saves"``, ``"edits"`` or ``"replacements"``; returns
        ``(saved values, model output)``."""
        main = self._greenlet.getcurrent()
        saved: list[Any] = []

        def intervention() -> tuple[None, Any]:
            reply = None
            for target in targets:
                out = main.switch((target, reply))  # wait for the target's output
                if kind == "saves":
                    saved.append(out)
                    reply = out
                elif kind == "edits":
                    out[..., 0] = 0
                    reply = out
                else:
                    reply = out * 2
            return None, reply

        wanted = [self._worker.switch(intervention)[0]]
        worker = self._worker

        def wrap(target: Any, original: Any) -> Callable[..., Any]:
            def forward(*args: Any, **kwargs: Any) -> Any:
                out = original(*args, **kwargs)
                if wanted[0] is target:
                    wanted[0], out = worker.switch(out)
                return out

            return forward

        for target in targets:
            target.__dict__["forward"] = wrap(target, target.forward)
        try:
            out = module(*x)
        finally:
            for target in targets:
                target.__dict__.pop("forward", None)
        return saved, out


FLOOR_KINDS = {"12 saves": "saves", "12 in-place edits": "edits", "12 replacements": "replacements"}


# ----------------------------------------------------------------- checking


def plain_backward(module: torch.nn.Module, x: Any) -> Any:
    """A forward and a backward from the output's sum, nothing else."""
    out = _main(module(*x)).sum()
    out.backward()
    return out


def hooks_grad(module: torch.nn.Module, x: Any, target: Any) -> Any:
    """The gradient of ``target``'s output, through a hook that retains it."""
    kept: list[torch.Tensor] = []

    def retain(_m: Any, _a: Any, out: Any) -> None:
        out.retain_grad()
        kept.append(out)

    _main(_forward_with(module, x, [(target, retain)])).sum().backward()
    return kept[0].grad


def hooks_session(module: torch.nn.Module, x: Any, target: Any) -> Any:
    """Two forwards: the first keeps a value, the second writes it back."""
    kept: list[torch.Tensor] = []
    _forward_with(module, x, [(target, lambda _m, _a, out: kept.append(out.detach()))])
    return _forward_with(module, x, [(target, lambda _m, _a, _out: kept[0])])


def hooks_edited(module: torch.nn.Module, x: Any, target: Any) -> Any:
    """A forward with one in-place edit (what the edited model does)."""

    def edit(_m: Any, _a: Any, out: Any) -> None:
        out[..., 0] = 0

    return _forward_with(module, x, [(target, edit)])


def _main(out: Any) -> torch.Tensor:
    """The tensor a model's output is judged by (logits for transformers outputs)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)):
        return _main(out[0])
    raise TypeError(f"cannot find the main tensor of a {type(out).__name__}")


def _same(a: Any, b: Any) -> bool:
    """Whether both are tensors with equal shapes and values."""
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)


class CheckFailed(Exception):
    """A variant ran but produced a wrong result."""


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


# ------------------------------------------------------------------ variants


@dataclass
class Library:
    """An NNsight-style library under test."""

    name: str
    wrap: Callable[[torch.nn.Module], Any]
    save: Callable[[Any], Any]
    # ``(model, tokenizer) -> LanguageModel``, or None when not importable.
    language_model: Callable[[torch.nn.Module, Any], Any] | None = None
    # The ``torch.Tensor.backward`` the library installs at import, if any.
    backward: Any = None


@dataclass
class Variant:
    """One timed callable and what became of its check."""

    scenario: str
    impl: str  # "plain", "hooks" or a library name
    run: Callable[[], Any]
    status: str = "ok"  # "ok", "error" (raised) or "wrong" (check failed)
    message: str = ""
    times: list[int] = field(default_factory=list)  # ns per call, this run
    run_medians: list[float] = field(default_factory=list)  # us, one per finished run

    def median_us(self) -> float:
        """The median over runs of each run's median, in microseconds."""
        if not self.run_medians:
            return statistics.median(self.times) / 1e3
        return statistics.median(self.run_medians)


def _resolve(root: Any, path: str) -> Any:
    """Walk a dotted path through an Envoy tree (attribute names and indices)."""
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _error_text(error: BaseException) -> str:
    """The exception's type and the first lines of its message, on one line."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    text = " / ".join(lines[:3]) if lines else ""
    return f"{type(error).__name__}: {text}"


def build_variants(subject: Subject, libraries: list[Library]) -> list[Variant]:
    """Make every variant of ``subject`` and run each library variant's check once.

    Args:
        subject: the model and its points.
        libraries: the tracing libraries to run (endoscope first).

    Returns:
        The plain forward, the plain-hook variants and one variant per library and
        scenario; a library variant that raised or gave a wrong result is marked
        so and is not timed.
    """
    base = subject.module
    x = subject.inputs
    targets = [base.get_submodule(p) for p in subject.points]
    src_path, src_op, src_called = subject.source
    src_target = [base.get_submodule(src_called)]
    named = list(base.named_modules())

    with torch.no_grad():
        plain_out = _main(base(*x)).clone()
    reference: dict[str, Any] = {
        "12 saves": hooks_saves(base, x, targets),
        "12 in-place edits": _main(hooks_edits(base, x, targets)),
        "12 replacements": _main(hooks_replacements(base, x, targets)),
        "cache every module": hooks_cache(base, x, named),
        "one .source op read": hooks_source(base, x, src_target),
        "backward, one .grad read": hooks_grad(base, x, targets[6]),
        "session of two traces": _main(hooks_session(base, x, targets[6])),
        "edited model's trace": _main(hooks_edited(base, x, targets[6])),
    }
    for name, count in READ_COUNTS.items():
        reference[name] = hooks_saves(base, x, targets[:count])
    base.zero_grad(set_to_none=True)
    # The plain hooks must themselves do what the scenarios claim.
    _expect(_same(_main(reference["12 saves"][1]), plain_out), "hooks: saves changed the output")
    _expect(not _same(reference["12 in-place edits"], plain_out), "hooks: edits had no effect")
    _expect(not _same(reference["12 replacements"], plain_out), "hooks: replacement had no effect")

    variants = [
        Variant("plain forward", "plain", lambda: base(*x)),
        Variant("plain forward+backward", "plain", lambda: plain_backward(base, x)),
        Variant("two plain forwards", "plain", lambda: (base(*x), base(*x))),
    ]
    variants += [
        Variant("12 saves", "hooks", lambda: hooks_saves(base, x, targets)),
        Variant("12 in-place edits", "hooks", lambda: hooks_edits(base, x, targets)),
        Variant("12 replacements", "hooks", lambda: hooks_replacements(base, x, targets)),
        Variant("cache every module", "hooks", lambda: hooks_cache(base, x, named)),
        Variant("one .source op read", "hooks", lambda: hooks_source(base, x, src_target)),
        Variant("backward, one .grad read", "hooks", lambda: hooks_grad(base, x, targets[6])),
        Variant("session of two traces", "hooks", lambda: hooks_session(base, x, targets[6])),
        Variant("edited model's trace", "hooks", lambda: hooks_edited(base, x, targets[6])),
    ]
    for name, count in READ_COUNTS.items():
        variants.append(Variant(name, "hooks", _bind_hooks(hooks_saves, base, x, targets[:count])))

    try:
        floor: Floor | None = Floor()
    except ImportError:
        floor = None  # greenlet is not installed: no floor to show
    if floor is not None:
        floor_module = copy.deepcopy(base)
        floor_targets = [floor_module.get_submodule(p) for p in subject.points]
        for scenario, kind in FLOOR_KINDS.items():
            run = _floor_run(floor, floor_module, x, floor_targets, kind)
            saved, out = run()
            if scenario == "12 saves":
                expected = reference[scenario][0]
                ok = all(_same(a, b) for a, b in zip(saved, expected, strict=True))
            else:
                ok = _same(_main(out), reference[scenario])
            _expect(ok, f"floor: {scenario} differs from the hooks' result")
            variants.append(Variant(scenario, "floor", run))

    for library in libraries:
        module = copy.deepcopy(base)
        try:
            model = library.wrap(module)
            envoys = [_resolve(model, p) for p in subject.points]
            # The .source read gets a model of its own: both libraries keep a module
            # whose .source was built on its rewritten forward for good, which the
            # other scenarios, reading that module plainly, must not pay for.
            source_model = library.wrap(copy.deepcopy(base))
            where = (_resolve(source_model, src_path), src_op)
        except Exception as error:
            for scenario in SCENARIOS:
                variants.append(
                    Variant(scenario, library.name, lambda: None, "error", _error_text(error))
                )
            continue
        try:
            edited: Any = make_edited(model, envoys)
        except Exception as error:
            edited = error
        for scenario in (*SCENARIOS, *READ_COUNTS):
            fn = TRACED.get(scenario, trace_saves)
            arg = where if scenario == "one .source op read" else envoys
            if scenario in READ_COUNTS:
                arg = envoys[: READ_COUNTS[scenario]]
            target = source_model if scenario == "one .source op read" else model
            if scenario == "edited model's trace":
                if isinstance(edited, Exception):
                    variants.append(
                        Variant(scenario, library.name, lambda: None, "error", _error_text(edited))
                    )
                    continue
                target = edited
            variant = Variant(scenario, library.name, _bind(fn, target, x[0], arg, library.save))
            try:
                result = fn(target, x[0], arg, library.save, True)
                _check(scenario, result, reference, plain_out, module, x, subject)
            except CheckFailed as error:
                variant.status, variant.message = "wrong", str(error)
            except Exception as error:
                variant.status, variant.message = "error", _error_text(error)
            variants.append(variant)
    return variants


def _floor_run(
    floor: Floor, module: torch.nn.Module, x: Any, targets: list[Any], kind: str
) -> Callable[[], Any]:
    def run() -> Any:
        return floor.run(module, x, targets, kind)

    return run


def _bind_hooks(fn: Callable[..., Any], module: torch.nn.Module, x: Any, arg: Any) -> Callable:
    """The plain-hooks ``fn`` with its arguments fixed, for timing."""

    def run() -> Any:
        return fn(module, x, arg)

    return run


def _bind(fn: Callable[..., Any], model: Any, x: Any, arg: Any, save: Callable) -> Callable:
    """``fn`` with its arguments fixed, for timing (no check)."""

    def run() -> Any:
        return fn(model, x, arg, save, False)

    return run


def _check(
    scenario: str,
    result: Any,
    reference: dict[str, Any],
    plain_out: torch.Tensor,
    module: torch.nn.Module,
    x: tuple[Any, ...],
    subject: Subject,
) -> None:
    """Raise :class:`CheckFailed` unless ``result`` matches the plain-hooks reference."""
    if scenario == "empty trace":
        with torch.no_grad():
            _expect(_same(_main(module(*x)), plain_out), "the model's output changed after a trace")
    elif scenario == "12 saves" or scenario in READ_COUNTS:
        saved, out = result
        expected, _ = reference[scenario]
        _expect(len(saved) == len(expected), f"{len(saved)} values saved, expected {len(expected)}")
        for path, got, want in zip(subject.points, saved, expected):
            _expect(_same(got, want), f"saved output of {path} differs from the hooks' value")
        _expect(_same(_main(out), plain_out), "saving changed the model's output")
    elif scenario in ("12 in-place edits", "12 replacements"):
        _expect(_same(_main(result), reference[scenario]), "output differs from the hooks' result")
    elif scenario == "cache every module":
        expected = reference[scenario]
        for path in subject.points:
            got = result[f"model.{path}"].output
            _expect(_same(got, expected[path]), f"cached output of {path} differs from the hooks'")
    elif scenario == "one .source op read":
        _expect(_same(result, reference[scenario]), "the op's output differs from the hooks' value")
    elif scenario == "backward, one .grad read":
        _expect(_same(result, reference[scenario]), "the gradient differs from the hooks' value")
        module.zero_grad(set_to_none=True)
    elif scenario in ("session of two traces", "edited model's trace"):
        _expect(_same(_main(result), reference[scenario]), "output differs from the hooks' result")


# ------------------------------------------------- invokes and generation
# How the cost grows with the number of invokes in one trace and with the number
# of generated steps, on a language model with a tokenizer (both libraries'
# ``LanguageModel``), each beside plain transformers doing the same work.

INVOKES = (1, 8, 32)
STEPS = (8, 64)


@dataclass
class LanguageSubject:
    """A tiny random GPT-2 with the demo model's tokenizer, and its prompts.

    Attributes:
        description: one line describing model and inputs.
        module: the transformers model (wrappers get deep copies).
        tokenizer: the demo model's tokenizer (pads on the left).
        prompts: 32 prompts of 5 to 8 tokens, so batches of them are padded.
    """

    description: str
    module: torch.nn.Module
    tokenizer: Any
    prompts: list[str]


def build_language() -> LanguageSubject | str:
    """The language-model subject, or why it cannot be built."""
    try:
        import transformers

        from endoscope import demo_facts, demo_model_path
    except ImportError as error:
        return (
            f"transformers or endoscope is not installed ({error}); install the endoscope "
            "meta-package to run it"
        )
    transformers.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(demo_model_path(), local_files_only=True)
    # The GPT-2 of the point scenarios, with room for 64 generated tokens.
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=len(tokenizer),
        n_positions=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    module = transformers.GPT2LMHeadModel(config).eval()
    prompts = [fact["prompt"] for fact in demo_facts()["facts"][: max(INVOKES)]]
    return LanguageSubject(
        description=(
            "tiny GPT-2 (n_layer=2, n_embd=32, n_head=2) with the demo tokenizer; "
            "each invoke saves h[1].mlp's output, each generated step zeroes "
            "feature 0 of h[0].mlp's output in place"
        ),
        module=module,
        tokenizer=tokenizer,
        prompts=prompts,
    )


def trace_invokes(lm: Any, prompts: list[str], save: Callable, check: bool) -> Any:
    """One invoke per prompt, each saving one layer's output for its own rows."""
    saved = []
    with lm.trace() as tracer:
        for prompt in prompts:
            with tracer.invoke(prompt):
                saved.append(save(lm.transformer.h[1].mlp.output))
    return saved


def trace_generate(lm: Any, prompt: str, steps: int, save: Callable, check: bool) -> Any:
    """Generate ``steps`` tokens, zeroing feature 0 of one layer's output at every step."""
    edited = None
    # min_new_tokens: a random model may emit the end token early.
    with lm.generate(prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False) as tracer:
        for _ in tracer.iter[:steps]:
            lm.transformer.h[0].mlp.output[..., 0] = 0
            if check:
                edited = save(lm.transformer.h[0].mlp.output)
        ids = save(tracer.result)
    return ids, edited


def _hooked(hooks: Sequence[tuple[Any, Any]], call: Callable[[], Any]) -> Any:
    """``call()`` with forward hooks that exist for this call only."""
    handles = [target.register_forward_hook(hook) for target, hook in hooks]
    try:
        return call()
    finally:
        for handle in handles:
            handle.remove()


def plain_batch(module: torch.nn.Module, tokenizer: Any, prompts: list[str]) -> Any:
    """One padded batch of ``prompts`` through the model, no hooks.

    Positions count from each prompt's first token, as both libraries make them, so
    that a left-padded row gives what its prompt alone gives.
    """
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return module(**batch, position_ids=positions)


def hooks_batch(module: torch.nn.Module, tokenizer: Any, prompts: list[str]) -> list[Any]:
    """One padded batch with a hook keeping h[1].mlp's output; each prompt's rows."""
    kept: list[torch.Tensor] = []
    target = module.transformer.h[1].mlp

    def keep(_m: Any, _a: Any, out: Any) -> None:
        kept.append(out)

    _hooked([(target, keep)], lambda: plain_batch(module, tokenizer, prompts))
    return [kept[0][i : i + 1] for i in range(len(prompts))]


def plain_generate(module: Any, tokenizer: Any, prompt: str, steps: int) -> Any:
    """Greedy generation of exactly ``steps`` tokens, no hooks."""
    ids = tokenizer(prompt, return_tensors="pt")
    return module.generate(**ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)


def hooks_generate(module: Any, tokenizer: Any, prompt: str, steps: int) -> Any:
    """Generation with a hook zeroing feature 0 of h[0].mlp's output at every step."""

    def edit(_m: Any, _a: Any, out: Any) -> None:
        out[..., 0] = 0

    target = module.transformer.h[0].mlp
    return _hooked([(target, edit)], lambda: plain_generate(module, tokenizer, prompt, steps))


def invokes_name(count: int) -> str:
    """The scenario name of ``count`` invokes."""
    return f"{count} invoke{'s' if count > 1 else ''}, one save each"


def generate_name(steps: int) -> str:
    """The scenario name of generating ``steps`` tokens."""
    return f"generate {steps} tokens, an edit per step"


LANGUAGE_SCENARIOS = (*map(invokes_name, INVOKES), *map(generate_name, STEPS))


def build_language_variants(subject: LanguageSubject, libraries: list[Library]) -> list[Variant]:
    """Make the invoke and generation variants and check each library's once.

    Args:
        subject: the language model, its tokenizer and prompts.
        libraries: the tracing libraries to run (endoscope first).

    Returns:
        For every scenario, a ``plain`` variant (no hooks, what overhead is measured
        from), a ``hooks`` variant (plain transformers with a hook doing the same
        reads or writes) and one variant per library.
    """
    base, tokenizer, prompts = subject.module, subject.tokenizer, subject.prompts
    variants: list[Variant] = []
    reference: dict[str, Any] = {}
    for count in INVOKES:
        name, few = invokes_name(count), prompts[:count]
        reference[name] = hooks_batch(base, tokenizer, few)
        variants.append(Variant(name, "plain", _bind_hooks(plain_batch, base, tokenizer, few)))
        variants.append(Variant(name, "hooks", _bind_hooks(hooks_batch, base, tokenizer, few)))
    for steps in STEPS:
        name = generate_name(steps)
        reference[name] = hooks_generate(base, tokenizer, prompts[0], steps)
        plain = plain_generate(base, tokenizer, prompts[0], steps)
        _expect(reference[name].shape[-1] == plain.shape[-1], "hooks: generated a wrong length")
        variants.append(
            Variant(name, "plain", _bind_generate(plain_generate, base, subject, steps))
        )
        variants.append(
            Variant(name, "hooks", _bind_generate(hooks_generate, base, subject, steps))
        )

    for library in libraries:
        if library.language_model is None:
            continue
        try:
            lm = library.language_model(copy.deepcopy(base), tokenizer)
        except Exception as error:
            for count in INVOKES:
                variants.append(
                    Variant(invokes_name(count), library.name, _none, "error", _error_text(error))
                )
            for steps in STEPS:
                variants.append(
                    Variant(generate_name(steps), library.name, _none, "error", _error_text(error))
                )
            continue
        jobs: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [
            (invokes_name(count), trace_invokes, (lm, prompts[:count])) for count in INVOKES
        ]
        jobs += [(generate_name(steps), trace_generate, (lm, prompts[0], steps)) for steps in STEPS]
        for name, fn, args in jobs:
            variant = Variant(name, library.name, _bind_traced(fn, args, library.save))
            try:
                result = fn(*args, library.save, True)
                if fn is trace_invokes:
                    expected = reference[name]
                    _expect(len(result) == len(expected), "wrong number of saved values")
                    for got, want in zip(result, expected):
                        _expect(_same(got, want), "an invoke's saved rows differ from the hooks'")
                else:
                    ids, edited = result
                    _expect(_same(ids, reference[name]), "generated ids differ from the hooks'")
                    _expect(
                        edited is not None and bool((edited[..., 0] == 0).all()),
                        "the edit did not reach the last step",
                    )
            except CheckFailed as error:
                variant.status, variant.message = "wrong", str(error)
            except Exception as error:
                variant.status, variant.message = "error", _error_text(error)
            variants.append(variant)
    return variants


def _none() -> None:
    return None


def _bind_generate(
    fn: Callable[..., Any], module: torch.nn.Module, subject: LanguageSubject, steps: int
) -> Callable[[], Any]:
    def run() -> Any:
        return fn(module, subject.tokenizer, subject.prompts[0], steps)

    return run


def _bind_traced(fn: Callable[..., Any], args: tuple[Any, ...], save: Callable) -> Callable:
    def run() -> Any:
        return fn(*args, save, False)

    return run


# -------------------------------------------------------------------- timing


def time_variants(
    variants: list[Variant],
    rounds: int,
    warmup: int,
    runs: int = 1,
    seed: int = 0,
    clock: Callable[[], int] = time.perf_counter_ns,
    backwards: dict[str, Any] | None = None,
) -> None:
    """Run the working variants round-robin, shuffled per round, recording ns per call.

    Each timed call follows an untimed call of the same variant, so it never pays
    for state another variant left behind (invalidated type attribute caches, a
    different allocator pattern) but does pay for what its own previous run left.
    ``runs`` repeats the whole timing (``rounds`` rounds each, in a different order)
    and keeps each run's median, so a burst of load on a shared machine moves one
    run's figure rather than the reported median of the runs. ``clock`` is wall
    time by default; ``time.process_time_ns`` counts only this process's CPU time
    (all its threads), which other processes on a busy machine do not inflate.
    ``backwards`` maps a variant's ``impl`` to the ``torch.Tensor.backward`` it
    runs with (see the module docstring); ``None`` leaves it alone.
    """
    live = [v for v in variants if v.status == "ok"]
    install = _backward_installer(backwards)
    for _ in range(warmup):
        for variant in live:
            install(variant.impl)
            variant.run()
    for number in range(runs):
        gc.collect()
        rng = random.Random(seed + number)
        order = list(live)
        for variant in live:
            variant.times = []
        for _ in range(rounds):
            rng.shuffle(order)
            for variant in order:
                install(variant.impl)
                run = variant.run
                run()
                start = clock()
                run()
                variant.times.append(clock() - start)
        for variant in live:
            variant.run_medians.append(statistics.median(variant.times) / 1e3)


def _backward_installer(backwards: dict[str, Any] | None) -> Callable[[str], None]:
    """A function putting the ``Tensor.backward`` of an ``impl`` in place (a no-op
    when it is there already: setting a class attribute is what it avoids)."""
    if not backwards:
        return lambda impl: None
    plain = backwards["plain"]
    namespace = torch.Tensor.__dict__

    def install(impl: str) -> None:
        wanted = backwards.get(impl, plain)
        if namespace.get("backward") is not wanted:
            torch.Tensor.backward = wanted  # type: ignore[method-assign]

    return install


# ------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 1) -> str:
    """A microsecond figure for the table."""
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    """``numerator / denominator`` for the table; n/a when not meaningful."""
    if numerator is None or denominator is None or denominator <= 0:
        return "n/a"
    return f"{numerator / denominator:.2f}"


@dataclass
class Findings:
    """What the verdict and the picture are made of, gathered over all models.

    Attributes:
        targets: ``(what, endoscope/other ratio or None, limit)`` per target checked.
        series: panel title -> line label -> ``(x, overhead us)`` points.
    """

    targets: list[tuple[str, float | None, float]] = field(default_factory=list)
    series: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)

    def point(self, panel: str, label: str, x: int, y: float | None) -> None:
        """Add one point to a line of the picture (nothing when not measured)."""
        if y is not None:
            self.series.setdefault(panel, {}).setdefault(label, []).append((x, y))


READS_PANEL = "reads (saves of module outputs)"
INVOKES_PANEL = "invokes (one prompt, one save each)"
STEPS_PANEL = "generated steps (an in-place edit each)"


def _per_extra(first: float | None, last: float | None, extra: int) -> float | None:
    """The cost of each of ``extra`` added units between two medians."""
    return None if first is None or last is None else (last - first) / extra


def _growth_table(
    title: str,
    unit: str,
    rows: list[tuple[int, dict[str, float | None]]],
    compare: list[str],
    findings: Findings | None,
    where: str,
) -> None:
    """Print the cost of each extra unit (read, invoke, step) and record its target.

    Args:
        title: what grows, e.g. ``"invoke"``.
        unit: the plural, for the note.
        rows: ``(units, {impl: median us})`` for the smallest and largest count.
        compare: the other libraries.
        findings: where the per-extra target's ratio goes (None: shown, not a target).
        where: the model, for the verdict.
    """
    (low, first), (high, last) = rows[0], rows[-1]
    extra = high - low
    per = {impl: _per_extra(first.get(impl), last.get(impl), extra) for impl in first}
    hooks = per.get("hooks")

    def above(impl: str) -> float | None:
        value = per.get(impl)
        return None if value is None or hooks is None else value - hooks

    columns = ["cost", "plain hooks us", "endoscope us", "above plain us"]
    for name in compare:
        columns += [f"{name} us", "above plain us", f"endo/{name} above plain"]
    print(
        f"\nCost of each extra {title} ({low} to {high} {unit}; 'above plain' subtracts "
        "plain torch/transformers doing the same work):\n"
    )
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")
    row = [f"per extra {title}", _fmt(hooks), _fmt(per.get("endoscope")), _fmt(above("endoscope"))]
    for name in compare:
        ratio = _ratio(above("endoscope"), above(name))
        row += [_fmt(per.get(name)), _fmt(above(name)), ratio]
        endo, other = above("endoscope"), above(name)
        value = endo / other if endo is not None and other is not None and other > 0 else None
        if findings is not None:
            what = f"{where}: per extra {title}, endo/{name} above plain"
            findings.targets.append((what, value, 0.5))
    print("| " + " | ".join(row) + " |")


def report(
    subject: Subject, variants: list[Variant], libraries: list[Library], findings: Findings
) -> list[str]:
    """Print the Markdown tables for one model and record its targets and curves.

    Args:
        subject: the model benchmarked.
        variants: its timed variants.
        libraries: the libraries that ran (columns after endoscope's and the hooks').
        findings: where the targets' ratios and the picture's points go.

    Returns:
        One note per variant that raised or gave a wrong result.
    """
    by_key = {(v.scenario, v.impl): v for v in variants}
    plain = by_key[("plain forward", "plain")].median_us()
    compare = [lib.name for lib in libraries if lib.name != "endoscope"]

    def median(variant: Variant | None) -> float | None:
        return None if variant is None or variant.status != "ok" else variant.median_us()

    def overhead(variant: Variant | None) -> float | None:
        value = median(variant)
        if variant is None or value is None:
            return None
        baseline = BASELINES.get(variant.scenario)
        base = plain if baseline is None else by_key[(baseline, "plain")].median_us()
        return value - base

    def machinery(scenario: str, impl: str) -> float | None:
        """The scenario's time minus plain hooks doing the same reads and writes."""
        value = median(by_key.get((scenario, impl)))
        hooks = plain if scenario == "empty trace" else median(by_key.get((scenario, "hooks")))
        return None if value is None or hooks is None else value - hooks

    notes: list[str] = []

    def cell(variant: Variant | None) -> tuple[str, str]:
        if variant is None:
            return "—", "—"
        if variant.status != "ok":
            notes.append(
                f"{variant.impl} / {variant.scenario}: {variant.status}: {variant.message}"
            )
            label = "unavailable" if variant.status == "error" else "WRONG"
            return label, f"[{len(notes)}]"
        return _fmt(variant.median_us()), _fmt(overhead(variant))

    print(f"\n### {subject.description}")
    print(f"\nplain forward: {plain:,.1f} us (median)\n")
    columns = ["scenario", "endoscope us", "overhead us", "hooks us", "overhead us", "endo/hooks"]
    columns += ["endo machinery us"]
    for name in compare:
        columns += [f"{name} us", "overhead us", f"endo/{name}"]
        columns += [f"{name} machinery us", f"machinery endo/{name}"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")
    for scenario in (*SCENARIOS, *READ_COUNTS):
        endo = by_key.get((scenario, "endoscope"))
        hooks = by_key.get((scenario, "hooks"))
        row = [scenario, *cell(endo)]
        if scenario == "empty trace":
            # The plain-hooks equivalent of an empty trace is the plain forward.
            row += [_fmt(plain), "0.0", "n/a"]
        else:
            row += [*cell(hooks), _ratio(overhead(endo), overhead(hooks))]
        row += [_fmt(machinery(scenario, "endoscope"))]
        for name in compare:
            other = by_key.get((scenario, name))
            row += [*cell(other), _ratio(overhead(endo), overhead(other))]
            mine, theirs = machinery(scenario, "endoscope"), machinery(scenario, name)
            row += [_fmt(theirs), _ratio(mine, theirs)]
            if scenario in SCENARIOS:
                ratio = mine / theirs if mine is not None and theirs and theirs > 0 else None
                findings.targets.append(
                    (
                        f"{subject.name}: {scenario}, machinery endo/{name}",
                        ratio,
                        0.4 if scenario == "empty trace" else 0.5,
                    )
                )
        print("| " + " | ".join(row) + " |")
    if notes:
        print()
        for i, note in enumerate(notes, 1):
            print(f"[{i}] {note}")

    reads = [(0, "empty trace"), *((n, s) for s, n in READ_COUNTS.items()), (12, "12 saves")]
    for impl in ("hooks", "endoscope", *compare):
        for count, scenario in reads:
            value = (
                0.0 if impl == "hooks" and count == 0 else overhead(by_key.get((scenario, impl)))
            )
            findings.point(READS_PANEL, f"{impl} ({subject.name})", count, value)
    first, last = reads[1], reads[-1]
    _growth_table(
        "read",
        "reads",
        [
            (n, {impl: median(by_key.get((s, impl))) for impl in ("hooks", "endoscope", *compare)})
            for n, s in (first, last)
        ],
        compare,
        None,  # the cost per extra read is shown, not a target of the issue
        subject.name,
    )

    floors = [(s, overhead(by_key.get((s, "floor")))) for s in FLOOR_KINDS]
    if any(value is not None for _, value in floors):
        print(
            "\nFloor: the same reads and writes by a hand-written interleaving (one reused "
            "greenlet, the points' forwards wrapped; no capture, no checks)"
            + (
                ", and what a target of half another library's overhead leaves above it "
                "for everything else a library does (capture, bookkeeping, checks):\n"
                if compare
                else ":\n"
            )
        )
        header = ["scenario", "floor overhead us", "endoscope overhead us"]
        for name in compare:
            header += [f"half of {name}'s us", "room above the floor us"]
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
        for scenario, value in floors:
            row = [scenario, _fmt(value), _fmt(overhead(by_key.get((scenario, "endoscope"))))]
            for name in compare:
                other = overhead(by_key.get((scenario, name)))
                half = other / 2 if other is not None else None
                room = half - value if half is not None and value is not None else None
                row += [_fmt(half), _fmt(room)]
            print("| " + " | ".join(row) + " |")
    return notes


def report_language(
    subject: LanguageSubject, variants: list[Variant], libraries: list[Library], findings: Findings
) -> list[str]:
    """Print the invokes and generation tables and record their targets and curves.

    Args:
        subject: the language model benchmarked.
        variants: its timed variants.
        libraries: the libraries that ran.
        findings: where the targets' ratios and the picture's points go.

    Returns:
        One note per variant that raised or gave a wrong result.
    """
    by_key = {(v.scenario, v.impl): v for v in variants}
    compare = [lib.name for lib in libraries if lib.name != "endoscope"]
    impls = ("hooks", "endoscope", *compare)

    def median(scenario: str, impl: str) -> float | None:
        variant = by_key.get((scenario, impl))
        return None if variant is None or variant.status != "ok" else variant.median_us()

    notes: list[str] = []
    print(f"\n### {subject.description}\n")
    print(
        "'plain' is plain transformers without hooks (one padded batch of the invokes' "
        "prompts, or `generate`); 'hooks' adds a forward hook doing the same read or edit; "
        "machinery = time minus hooks.\n"
    )
    columns = ["scenario", "plain us", "hooks us", "endoscope us", "endo machinery us"]
    for name in compare:
        columns += [f"{name} us", f"{name} machinery us", f"machinery endo/{name}"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")

    def cell(scenario: str, impl: str) -> str:
        variant = by_key.get((scenario, impl))
        if variant is None:
            return "—"
        if variant.status != "ok":
            notes.append(f"{impl} / {scenario}: {variant.status}: {variant.message}")
            label = "unavailable" if variant.status == "error" else "WRONG"
            return f"{label} [{len(notes)}]"
        return _fmt(variant.median_us())

    def machinery(scenario: str, impl: str) -> float | None:
        value, hooks = median(scenario, impl), median(scenario, "hooks")
        return None if value is None or hooks is None else value - hooks

    names = [(INVOKES_PANEL, n, invokes_name(n)) for n in INVOKES]
    names += [(STEPS_PANEL, n, generate_name(n)) for n in STEPS]
    for panel, count, scenario in names:
        plain = median(scenario, "plain")
        row = [scenario, _fmt(plain), _fmt(median(scenario, "hooks")), cell(scenario, "endoscope")]
        row += [_fmt(machinery(scenario, "endoscope"))]
        for name in compare:
            mine, theirs = machinery(scenario, "endoscope"), machinery(scenario, name)
            row += [cell(scenario, name), _fmt(theirs), _ratio(mine, theirs)]
        print("| " + " | ".join(row) + " |")
        for impl in impls:
            value = median(scenario, impl)
            overhead = None if value is None or plain is None else value - plain
            findings.point(panel, impl, count, overhead)
    if notes:
        print()
        for i, note in enumerate(notes, 1):
            print(f"[{i}] {note}")
    for title, unit, counts, name_of in (
        ("invoke", "invokes", INVOKES, invokes_name),
        ("generated step", "steps", STEPS, generate_name),
    ):
        ends = (counts[0], counts[-1])
        rows = [(n, {impl: median(name_of(n), impl) for impl in impls}) for n in ends]
        _growth_table(title, unit, rows, compare, findings, "gpt2")
    return notes


def print_verdict(findings: Findings) -> None:
    """Print which targets are met: machinery at most half (empty trace 0.4) of the other's."""
    if not findings.targets:
        return
    print(
        "\n## Verdict\n\nTargets: machinery overhead (time minus plain hooks doing the same "
        "work) at most 0.5 of the other library's in every scenario, the empty trace at most "
        "0.4; the cost per extra invoke and per extra generated step above plain at most 0.5 "
        "of the other's.\n"
    )
    met = [(what, r, limit) for what, r, limit in findings.targets if r is not None and r <= limit]
    missed = [
        (what, r, limit) for what, r, limit in findings.targets if r is not None and r > limit
    ]
    unmeasured = [what for what, r, _ in findings.targets if r is None]
    print(f"met {len(met)} of {len(met) + len(missed)} measured targets")
    for what, r, limit in missed:
        print(f"- missed: {what} = {r:.2f} (target <= {limit})")
    for what in unmeasured:
        print(f"- not measured: {what} (a side raised, or the other's figure is not positive)")


def plot(findings: Findings, path: str) -> str:
    """Write the overhead-growth picture to ``path``; returns what happened, for the log."""
    if not findings.series:
        return "no picture: nothing was measured"
    try:
        import matplotlib
    except ImportError as error:
        return f"no picture: matplotlib is not importable ({error}); pip install matplotlib"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in (READS_PANEL, INVOKES_PANEL, STEPS_PANEL) if p in findings.series]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    styles = {"hooks": ("tab:gray", "s"), "endoscope": ("tab:blue", "o")}
    for axis, panel in zip(axes[0], panels):
        for label, points in sorted(findings.series[panel].items()):
            impl = label.split(" ")[0]
            color, marker = styles.get(impl, ("tab:orange", "^"))
            xs, ys = zip(*sorted(points))
            linestyle = "--" if "(gpt2)" in label else "-"
            axis.plot(
                xs,
                [y / 1e3 for y in ys],
                marker=marker,
                color=color,
                linestyle=linestyle,
                label=label,
            )
        axis.set_title(panel, fontsize=10)
        axis.set_xlabel("count")
        axis.set_ylabel("overhead over plain, ms (median)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("endoscope overhead growth (plain hooks = the same work in plain torch)")
    figure.tight_layout()
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return f"picture written to {path}"


# ---------------------------------------------------------------------- main


def _load_nnsight() -> Library | str:
    """nnsight as a :class:`Library`, or a note saying how to get it."""
    try:
        import nnsight
    except ImportError as error:
        return (
            f"note: --compare nnsight: nnsight is not importable here ({error}). "
            "Install it in the benchmark's environment, e.g. for the nox session: "
            "`nox -s bench` once, then `.nox/bench/bin/python -m pip install nnsight==0.8.1` "
            "and `nox -R -s bench -- --compare nnsight`; elsewhere `pip install "
            "nnsight==0.8.1`. Continuing without it."
        )
    try:
        # nnsight mounts ``.save`` on ``object`` for good at import; take it off so
        # endoscope's traces run exactly as they do without nnsight (both sides
        # call their function form of save instead).
        from nnsight._c import unmount

        if unmount is not None and hasattr(object, "save"):
            unmount("save")
    except Exception:
        pass
    version = getattr(nnsight, "__version__", "?")
    print(f"nnsight {version} from {nnsight.__file__}")

    def language_model(module: torch.nn.Module, tokenizer: Any) -> Any:
        import warnings

        with warnings.catch_warnings():
            # 0.8.1 calls LanguageModel deprecated in favour of a hub-id-only class.
            warnings.simplefilter("ignore")
            return nnsight.LanguageModel(module, tokenizer=tokenizer)

    # Installed by nnsight's import over whatever was there (endoscope's).
    return Library(
        "nnsight", nnsight.NNsight, nnsight.save, language_model, backward=torch.Tensor.backward
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few rounds: a smoke run")
    parser.add_argument(
        "--reps", type=int, default=None, help="timed rounds per run (default 100, quick 2)"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="timing runs; each figure is the median of the runs' medians (default 3, quick 1)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this process's CPU time (steadier on a shared, busy machine)",
    )
    parser.add_argument(
        "--plot",
        default=os.path.join("benchmarks", "out", "overhead.png"),
        help="where to write the overhead-growth PNG (default benchmarks/out/overhead.png; "
        "'' for none)",
    )
    parser.add_argument(
        "--scheduler",
        choices=("greenlet", "thread"),
        default=None,
        help="endoscope's scheduler (default: endoscope's CONFIG.scheduler)",
    )
    parser.add_argument(
        "--compare", choices=("nnsight",), default=None, help="also run nnsight side by side"
    )
    parser.add_argument(
        "--model",
        choices=("all", "mlp", "gpt2", "lm"),
        default="all",
        help="which model to benchmark (lm: the invokes and generation scenarios)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables.

    Args:
        argv: command line arguments; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit status: 1 when endoscope gave a wrong result or a core scenario
        raised, else 0.
    """
    args = parse_args(argv)
    rounds = args.reps if args.reps is not None else (2 if args.quick else 100)
    warmup = 1 if args.quick else 10
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    torch.set_num_threads(1)
    scheduler = args.scheduler or endoscope_envoy.CONFIG.scheduler

    print("# endoscope overhead benchmark")
    print(
        f"\npython {platform.python_version()}, torch {torch.__version__}, "
        f"endoscope-envoy {endoscope_envoy.__version__}, scheduler {scheduler}, "
        f"{torch.get_num_threads()} torch thread, medians of {runs} runs of {rounds} "
        f"rounds after {warmup} warm-up, {args.clock} clock"
    )
    clock = time.perf_counter_ns if args.clock == "wall" else time.process_time_ns

    def language_model(module: torch.nn.Module, tokenizer: Any) -> Any:
        import endoscope

        return endoscope.LanguageModel(module, tokenizer=tokenizer, scheduler=args.scheduler)

    # torch's own Tensor.backward, then endoscope's (mounted at its import).
    endoscope_envoy.unmount_backward()
    backwards = {"plain": torch.Tensor.backward}
    endoscope_envoy.mount_backward()
    libraries = [
        Library(
            "endoscope",
            lambda module: endoscope_envoy.NNsight(module, scheduler=args.scheduler),
            endoscope_envoy.save,
            language_model,
            backward=torch.Tensor.backward,
        )
    ]
    if args.compare == "nnsight":
        loaded = _load_nnsight()
        if isinstance(loaded, str):
            print(loaded)
        else:
            libraries.append(loaded)
    backwards.update({lib.name: lib.backward for lib in libraries if lib.backward is not None})

    subjects: list[Subject] = []
    if args.model in ("all", "mlp"):
        subjects.append(build_mlp())
    if args.model in ("all", "gpt2"):
        gpt2 = build_gpt2()
        if isinstance(gpt2, str):
            print(f"\nnote: GPT-2 skipped: {gpt2}")
        else:
            subjects.append(gpt2)

    language: LanguageSubject | None = None
    if args.model in ("all", "lm"):
        built = build_language()
        if isinstance(built, str):
            print(f"\nnote: invokes and generation skipped: {built}")
        else:
            language = built

    failed = False
    findings = Findings()
    timed: list[list[Variant]] = []
    for subject in subjects:
        variants = build_variants(subject, libraries)
        time_variants(variants, rounds, warmup, runs, clock=clock, backwards=backwards)
        report(subject, variants, libraries, findings)
        timed.append(variants)
    if language is not None:
        variants = build_language_variants(language, libraries)
        time_variants(variants, rounds, warmup, runs, clock=clock, backwards=backwards)
        report_language(language, variants, libraries, findings)
        timed.append(variants)
    print_verdict(findings)
    if args.plot:
        print(f"\n{plot(findings, args.plot)}")
    for variants in timed:
        for variant in variants:
            if variant.impl != "endoscope":
                continue
            if variant.status == "wrong" or (
                variant.status == "error"
                and (variant.scenario in CORE or variant.scenario in LANGUAGE_SCENARIOS)
            ):
                failed = True
    if failed:
        print("\nFAILED: an endoscope scenario gave a wrong result or a core scenario raised.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
