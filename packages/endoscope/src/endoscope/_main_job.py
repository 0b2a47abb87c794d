"""The main job, ``python -m endoscope demo``: a tour of a language model's insides.

On the shipped demo model (or any causal language model given with ``--model``)
it prints the module tree, a logit lens (the top next token read from every
layer's hidden state at the last position) and an activation-patching sweep: for
every layer and token position, the hidden state of a *clean* prompt is written
into the run of a *corrupt* prompt that differs only in its subject, and the
change in the prediction is measured. The sweep is drawn as a PNG heatmap when
matplotlib is installed.

Everything here goes through endoscope's public API, the way a user would write it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, TextIO

import torch

from endoscope_envoy import Envoy, save

__all__ = [
    "DEFAULT_OUT",
    "KNOWN_LAYOUTS",
    "DemoReport",
    "LayoutNotFoundError",
    "LensResult",
    "ModelLayout",
    "PatchingResult",
    "activation_patching",
    "check_pair",
    "find_layout",
    "logit_lens",
    "main",
    "plot_patching",
    "run_demo",
]

# Under the working directory, in a folder of its own (git-ignored in this
# repository), never beside the user's files or inside an installed package.
DEFAULT_OUT = Path("endoscope-demo") / "patching.png"

# Prompt pairs tried, in order, on a model given with --model: the first pair whose
# prompts have the same number of tokens and different predictions is used.
GENERIC_PAIRS: tuple[tuple[str, str], ...] = (
    ("The capital of France is the city of", "The capital of Italy is the city of"),
    ("The Eiffel Tower is in the city of", "The Colosseum is in the city of"),
    ("The capital of Japan is", "The capital of Egypt is"),
    ("Paris is the capital of", "Berlin is the capital of"),
)


# The demo's --help text: plain text, as a terminal shows it (the module docstring
# says the same in reStructuredText).
DEMO_DESCRIPTION = (
    "On the shipped demo model (or any causal language model given with --model) the "
    "demo prints the module tree, a logit lens (the top next token read from every "
    "layer's hidden state at the last position) and an activation-patching sweep: for "
    "every layer and token position, the hidden state of a clean prompt is written into "
    "the run of a corrupt prompt that differs only in its subject, and the change in the "
    "prediction is measured. The sweep is drawn as a PNG heatmap (see --out) when "
    "matplotlib is installed."
)


class LayoutNotFoundError(LookupError):
    """The model's layer list, final norm or output head could not be found."""


@dataclass(frozen=True)
class ModelLayout:
    """Where the parts the demo needs live in a model's module tree.

    Attributes:
        layers: path of the list of transformer blocks.
        norm: path of the final normalisation applied before the head.
        head: path of the output head (hidden state to vocabulary logits).
        family: models that use this layout, for messages.
    """

    layers: str
    norm: str
    head: str
    family: str = ""


KNOWN_LAYOUTS: tuple[ModelLayout, ...] = (
    ModelLayout("transformer.h", "transformer.ln_f", "lm_head", "GPT-2, GPT-J, BLOOM, Falcon"),
    ModelLayout("model.layers", "model.norm", "lm_head", "Llama, Mistral, Qwen, Gemma"),
    ModelLayout("model.layers", "model.final_layernorm", "lm_head", "Phi"),
    ModelLayout("gpt_neox.layers", "gpt_neox.final_layer_norm", "embed_out", "GPT-NeoX, Pythia"),
    ModelLayout("model.decoder.layers", "model.decoder.final_layer_norm", "lm_head", "OPT"),
    ModelLayout("transformer.blocks", "transformer.norm_f", "lm_head", "MPT"),
)


def _module_at(model: Any, path: str) -> Any:
    """The Envoy at a dotted path, walked one attribute at a time.

    Attribute access rather than ``model.get(path)``: a model whose first child is
    itself called ``model`` (Llama's ``model.layers``) must not have that name read
    as the root's own prefix.

    Raises:
        AttributeError: the path does not lead to a module.
    """
    envoy = model
    for part in path.split("."):
        envoy = getattr(envoy, part)
    if not isinstance(envoy, Envoy):
        raise AttributeError(f"{path} is not a module")
    return envoy


def _exists(model: Any, path: str) -> bool:
    try:
        _module_at(model, path)
    except AttributeError:
        return False
    return True


def find_layout(model: Any) -> ModelLayout:
    """Find the layer list, final norm and head of a wrapped language model.

    Args:
        model: a :class:`~endoscope.LanguageModel` (or any Envoy root).

    Returns:
        The first of :data:`KNOWN_LAYOUTS` whose three paths all exist.

    Raises:
        LayoutNotFoundError: no known layout matches; the message lists the
            supported layouts and the model's top-level modules.
    """
    for layout in KNOWN_LAYOUTS:
        if all(_exists(model, path) for path in (layout.layers, layout.norm, layout.head)):
            return layout
    top = ", ".join(name for name, _ in model.named_children()) or "(none)"
    known = "; ".join(
        f"{lay.family}: {lay.layers}, {lay.norm}, {lay.head}" for lay in KNOWN_LAYOUTS
    )
    raise LayoutNotFoundError(
        f"cannot find the transformer layers, final norm and output head of "
        f"{type(model._module).__name__} (top-level modules: {top}). Known layouts are "
        f"{known}."
    )


def _hidden(value: Any) -> torch.Tensor:
    """A block's hidden states, whether the block returns a tensor or a tuple."""
    return value[0] if isinstance(value, tuple) else value


def _token_text(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([int(token_id)])


@dataclass
class LensResult:
    """The logit lens of one prompt at its last position.

    Attributes:
        prompt: the prompt.
        rows: per layer, the ``top`` tokens and their probabilities, best first.
        prediction: the model's own next token (from its real output logits).
    """

    prompt: str
    rows: list[list[tuple[str, float]]]
    prediction: str


def logit_lens(
    model: Any, prompt: str, layout: ModelLayout | None = None, top: int = 3
) -> LensResult:
    """Read the next-token guess of every layer by applying the final norm and head.

    Args:
        model: a :class:`~endoscope.LanguageModel`.
        prompt: the text to run.
        layout: where the layers, norm and head are (found when ``None``).
        top: how many tokens to keep per layer.

    Returns:
        The lens table and the model's actual prediction.
    """
    layout = layout or find_layout(model)
    layers, norm, head = (
        _module_at(model, layout.layers),
        _module_at(model, layout.norm),
        _module_at(model, layout.head),
    )
    with model.trace(prompt):
        guesses = []
        for layer in layers:
            hidden = _hidden(layer.output)[:, -1]
            guesses.append(head(norm(hidden)).softmax(-1)[0])
        probs = save(torch.stack(guesses))
        logits = head.output[0, -1].save()
    tokenizer = model.tokenizer
    values, indices = probs.topk(top, dim=-1)
    rows = [
        [(_token_text(tokenizer, i), float(p)) for p, i in zip(row_values, row_indices)]
        for row_values, row_indices in zip(values, indices)
    ]
    return LensResult(prompt, rows, _token_text(tokenizer, logits.argmax()))


@dataclass
class PatchingResult:
    """An activation-patching sweep over layers and token positions.

    Attributes:
        clean: the prompt whose hidden states are copied.
        corrupt: the prompt they are written into.
        clean_tokens: the clean prompt's tokens as text.
        corrupt_tokens: the corrupt prompt's tokens as text.
        clean_answer: the clean prompt's prediction.
        corrupt_answer: the corrupt prompt's prediction.
        rows: one label per patched site: ``"embed"`` (the input of the first
            layer) and then the output of each layer (``"layer 0"``, ...).
        effect: ``[len(rows), n_tokens]``: the share of the logit difference
            ``clean_answer - corrupt_answer`` that patching that one hidden state
            restores (0 nothing, 1 all of it).
        predictions: ``[len(rows)][n_tokens]``: the predicted token after patching.
    """

    clean: str
    corrupt: str
    clean_tokens: list[str]
    corrupt_tokens: list[str]
    clean_answer: str
    corrupt_answer: str
    rows: list[str]
    effect: torch.Tensor
    predictions: list[list[str]]

    @property
    def differing_positions(self) -> list[int]:
        """Token positions where the two prompts differ (the subject)."""
        pairs = zip(self.clean_tokens, self.corrupt_tokens)
        return [i for i, (a, b) in enumerate(pairs) if a != b]

    def flips(self, position: int) -> list[str]:
        """The rows where patching ``position`` makes the clean answer the prediction."""
        return [
            row
            for row, predicted in zip(self.rows, self.predictions)
            if predicted[position] == self.clean_answer
        ]


def _ids(model: Any, prompt: str) -> list[int]:
    return list(model.tokenizer(prompt)["input_ids"])


def _last_logits(model: Any, head: Any, clean: str, corrupt: str) -> tuple[Any, Any]:
    """The last-position logits of both prompts, run as two invokes of one batch."""
    with model.trace() as tracer:
        with tracer.invoke(clean):
            clean_logits = head.output[0, -1].save()
        with tracer.invoke(corrupt):
            corrupt_logits = head.output[0, -1].save()
    return clean_logits, corrupt_logits


def _baseline(
    model: Any, head: Any, clean: str, corrupt: str
) -> tuple[list[int], list[int], torch.Tensor, torch.Tensor]:
    """Both prompts' token ids and last-position logits, checked to suit patching.

    Raises:
        ValueError: different numbers of tokens, or the same prediction for both.
    """
    clean_ids, corrupt_ids = _ids(model, clean), _ids(model, corrupt)
    if len(clean_ids) != len(corrupt_ids):
        raise ValueError(
            f"activation patching needs prompts with the same number of tokens: {clean!r} has "
            f"{len(clean_ids)}, {corrupt!r} has {len(corrupt_ids)}"
        )
    clean_logits, corrupt_logits = _last_logits(model, head, clean, corrupt)
    if int(clean_logits.argmax()) == int(corrupt_logits.argmax()):
        token = _token_text(model.tokenizer, int(clean_logits.argmax()))
        raise ValueError(
            f"both prompts predict {token!r}; activation patching needs prompts whose "
            "predictions differ"
        )
    return clean_ids, corrupt_ids, clean_logits, corrupt_logits


def _patch_row(
    model: Any, layers: Any, head: Any, row: int, clean: str, corrupt: str, n_tokens: int
) -> torch.Tensor:
    """Patch every position of one site in one forward pass.

    The corrupt prompt runs ``n_tokens`` times in one invoke, and copy ``i`` gets the
    clean hidden state at position ``i``. Site 0 is the input of the first layer, site
    ``r > 0`` the output of layer ``r - 1``.

    Returns:
        ``[n_tokens, vocab]``: the last-position logits of each patched copy.
    """
    index = torch.arange(n_tokens)
    with model.trace() as tracer:
        with tracer.invoke(clean):
            source = layers[0].input if row == 0 else _hidden(layers[row - 1].output)
        with tracer.invoke([corrupt] * n_tokens):
            if row == 0:
                target = layers[0].input
            else:
                output = layers[row - 1].output
                target = _hidden(output)
            patched = target.clone()
            patched[index, index] = source[0, index]
            if row == 0:
                layers[0].input = patched
            elif isinstance(output, tuple):
                layers[row - 1].output = (patched, *output[1:])
            else:
                layers[row - 1].output = patched
            logits = head.output[:, -1].save()
    return logits


def activation_patching(
    model: Any, clean: str, corrupt: str, layout: ModelLayout | None = None
) -> PatchingResult:
    """Copy each hidden state of ``clean`` into the run of ``corrupt``, one at a time.

    Args:
        model: a :class:`~endoscope.LanguageModel`.
        clean: the prompt whose hidden states are copied.
        corrupt: a prompt with the same number of tokens and another prediction.
        layout: where the layers and head are (found when ``None``).

    Returns:
        The sweep: for each site (first layer's input, each layer's output) and each
        position, the restored share of the clean-vs-corrupt logit difference.

    Raises:
        ValueError: the prompts have different lengths or the same prediction.
    """
    layout = layout or find_layout(model)
    layers, head = _module_at(model, layout.layers), _module_at(model, layout.head)
    tokenizer = model.tokenizer
    clean_ids, corrupt_ids, clean_logits, corrupt_logits = _baseline(model, head, clean, corrupt)
    good, bad = int(clean_logits.argmax()), int(corrupt_logits.argmax())

    def difference(logits: torch.Tensor) -> torch.Tensor:
        return logits[..., good] - logits[..., bad]

    clean_diff, corrupt_diff = difference(clean_logits), difference(corrupt_logits)
    n_tokens = len(clean_ids)
    effects, predictions = [], []
    for row in range(len(layers) + 1):
        logits = _patch_row(model, layers, head, row, clean, corrupt, n_tokens)
        effects.append((difference(logits) - corrupt_diff) / (clean_diff - corrupt_diff))
        predictions.append([_token_text(tokenizer, i) for i in logits.argmax(-1)])
    return PatchingResult(
        clean=clean,
        corrupt=corrupt,
        clean_tokens=[_token_text(tokenizer, i) for i in clean_ids],
        corrupt_tokens=[_token_text(tokenizer, i) for i in corrupt_ids],
        clean_answer=_token_text(tokenizer, good),
        corrupt_answer=_token_text(tokenizer, bad),
        rows=["embed", *(f"layer {i}" for i in range(len(layers)))],
        effect=torch.stack(effects).detach().float(),
        predictions=predictions,
    )


def _position_labels(result: PatchingResult) -> list[str]:
    labels = []
    for clean, corrupt in zip(result.clean_tokens, result.corrupt_tokens):
        labels.append(clean.strip() if clean == corrupt else f"{clean.strip()}/{corrupt.strip()}")
    return labels


def plot_patching(result: PatchingResult, path: str | Path) -> Path | None:
    """Draw the sweep as a heatmap (sites down, positions across) and save it as PNG.

    Args:
        result: the output of :func:`activation_patching`.
        path: where to write the PNG.

    Returns:
        The path written, or ``None`` when matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    path = Path(path)
    n_rows, n_cols = result.effect.shape
    figure = Figure(figsize=(2.5 + 0.75 * n_cols, 2.0 + 0.5 * n_rows), layout="constrained")
    axes = figure.add_subplot()
    data = result.effect.numpy()
    image = axes.imshow(
        data, cmap="Blues", vmin=min(0.0, float(data.min())), vmax=1.0, aspect="auto"
    )
    axes.set_xticks(range(n_cols), _position_labels(result), rotation=45, ha="right")
    axes.set_yticks(range(n_rows), result.rows)
    axes.set_xlabel("token position (clean/corrupt where they differ)")
    axes.set_title(
        f"Patching clean into corrupt: share of {result.clean_answer.strip()!r} vs "
        f"{result.corrupt_answer.strip()!r} restored",
        fontsize=10,
    )
    for r in range(n_rows):
        for c in range(n_cols):
            value = round(float(data[r, c]), 2) + 0.0  # no "-0.00"
            colour = "white" if value > 0.6 else "black"
            axes.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=axes, shrink=0.8)
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def format_lens(result: LensResult) -> str:
    """The logit lens as a text table."""
    lines = [f"   {'layer':>7}  top tokens at the last position (probability)"]
    for index, row in enumerate(result.rows):
        cells = "  ".join(f"{token!r:>12} {prob:5.2f}" for token, prob in row)
        lines.append(f"   {index:>7}  {cells}")
    lines.append(f"   the model predicts {result.prediction!r}")
    return "\n".join(lines)


def _sites(rows: list[str]) -> str:
    names = ["the embeddings" if row == "embed" else row for row in rows]
    return ", ".join(names)


def format_patching(result: PatchingResult) -> str:
    """The patching sweep as a text table with a one-line conclusion per subject token."""
    labels = [label[:16] for label in _position_labels(result)]
    widths = [max(5, len(label)) for label in labels]
    clean, corrupt = repr(result.clean_answer), repr(result.corrupt_answer)
    lines = [
        f"   clean:   {result.clean!r} -> {clean}",
        f"   corrupt: {result.corrupt!r} -> {corrupt}",
        "   Each cell: the corrupt run with one hidden state (site, position) copied from the",
        f"   clean run; the share of the logit difference {clean} - {corrupt} it restores",
        f"   (0 = none, 1 = all); * where the prediction becomes {clean}.",
        ("   " + " " * 8 + "".join(f"{label:>{w}} " for label, w in zip(labels, widths))).rstrip(),
    ]
    for r, row in enumerate(result.rows):
        cells = []
        for c, w in enumerate(widths):
            flip = "*" if result.predictions[r][c] == result.clean_answer else " "
            value = round(float(result.effect[r, c]), 2) + 0.0  # no "-0.00"
            cells.append(f"{value:>{w}.2f}{flip}")
        lines.append((f"   {row:>7} " + "".join(cells)).rstrip())
    for position in result.differing_positions:
        flips = result.flips(position)
        subject = f"{result.clean_tokens[position].strip()!r} (position {position})"
        if flips:
            lines.append(
                f"   Patching the subject token {subject} at {_sites(flips)} changes the "
                f"prediction from {corrupt} to {clean}."
            )
        else:
            lines.append(f"   Patching the subject token {subject} alone changes no prediction.")
    last = len(labels) - 1
    if last not in result.differing_positions:
        flips = result.flips(last)
        lines.append(
            f"   At the last position, {_sites(flips) if flips else 'no site'} "
            f"{'carry' if len(flips) > 1 else 'carries'} the answer {clean}."
        )
    return "\n".join(lines)


@dataclass
class DemoReport:
    """What :func:`run_demo` computed.

    Attributes:
        model_name: what was loaded.
        lens: the logit lens of the clean prompt.
        patching: the patching sweep.
        png: the heatmap written, or ``None`` without matplotlib.
        seconds: wall time of the whole job, loading included.
    """

    model_name: str
    lens: LensResult
    patching: PatchingResult
    png: Path | None
    seconds: float = field(default=0.0)


def _load(model: Any) -> tuple[Any, str, bool]:
    """The wrapped model, a name to show, and whether it is the demo model."""
    from ._demo import demo_model, demo_model_path

    if model is None:
        return demo_model(dispatch=True), "the endoscope demo model", True
    if not isinstance(model, (str, PathLike)):
        name = getattr(model, "repo_id", None) or type(model._module).__name__
        return model, str(name), Path(str(name)) == demo_model_path()
    from ._language_model import LanguageModel

    is_demo = Path(model).exists() and Path(model).resolve() == demo_model_path()
    return LanguageModel(str(model), dispatch=True), str(model), is_demo


def _default_pairs(is_demo: bool) -> list[tuple[str, str]]:
    from ._demo import demo_facts

    demo = [(pair["clean"], pair["corrupt"]) for pair in demo_facts()["patching_pairs"]]
    return demo if is_demo else [*GENERIC_PAIRS, *demo]


def check_pair(model: Any, clean: str, corrupt: str, layout: ModelLayout | None = None) -> None:
    """Check that two prompts suit activation patching.

    Args:
        model: a :class:`~endoscope.LanguageModel`.
        clean: the prompt whose hidden states are copied.
        corrupt: the prompt they are written into.
        layout: where the head is (found when ``None``).

    Raises:
        ValueError: the prompts have different numbers of tokens, or the model
            predicts the same next token for both.
    """
    layout = layout or find_layout(model)
    _baseline(model, _module_at(model, layout.head), clean, corrupt)


def _choose_pair(
    model: Any, layout: ModelLayout, candidates: list[tuple[str, str]]
) -> tuple[str, str]:
    """The first candidate pair of equal token length whose predictions differ."""
    for clean, corrupt in candidates:
        try:
            check_pair(model, clean, corrupt, layout)
        except ValueError:
            continue
        return clean, corrupt
    raise ValueError(
        "none of the built-in prompt pairs suits this model (equal token counts, different "
        "predictions): give your own with --prompt and --corrupt"
    )


def run_demo(
    model: str | PathLike[str] | Any = None,
    *,
    prompt: str | None = None,
    corrupt: str | None = None,
    out: str | Path | None = DEFAULT_OUT,
    stream: TextIO | None = None,
) -> DemoReport:
    """Run the main job and print its report.

    Args:
        model: a path or hub id of a causal language model, or one already wrapped
            as a :class:`~endoscope.LanguageModel`; ``None`` for the demo model.
        prompt: the clean prompt (logit lens and patching source).
        corrupt: the prompt patched into; same number of tokens as ``prompt``.
        out: where to write the heatmap PNG (``None``: no PNG).
        stream: where to print (default: standard output).

    Returns:
        Everything computed, for programmatic use.

    Raises:
        ValueError: only one of ``prompt`` and ``corrupt`` was given, or they do not
            suit patching.
        LayoutNotFoundError: the model's architecture is not one the demo knows.
    """
    stream = stream or sys.stdout
    if (prompt is None) != (corrupt is None):
        raise ValueError("give both --prompt and --corrupt (with the same number of tokens)")
    start = time.perf_counter()

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    lm, name, is_demo = _load(model)
    layout = find_layout(lm)
    with torch.no_grad():
        if prompt is None or corrupt is None:
            prompt, corrupt = _choose_pair(lm, layout, _default_pairs(is_demo))
        else:
            check_pair(lm, prompt, corrupt, layout)

        say(f"endoscope demo on {name}")
        say()
        say("1. The module tree (every module is reachable as an attribute: lm.transformer.h[0]):")
        say(str(lm))
        say()
        say(
            f"2. Logit lens on {prompt!r}: each layer's hidden state through {layout.norm} and {layout.head}"
        )
        lens = logit_lens(lm, prompt, layout)
        say(format_lens(lens))
        say()
        say("3. Activation patching, clean into corrupt, at every layer and position:")
        patching = activation_patching(lm, prompt, corrupt, layout)
        say(format_patching(patching))

    png = plot_patching(patching, out) if out is not None else None
    say()
    if png is not None:
        say(f"4. Heatmap of the patching effect written to {png}")
    elif out is not None:
        say(
            "4. No heatmap: matplotlib is not installed (pip install 'endoscope[plot]' to get the PNG)"
        )
    seconds = time.perf_counter() - start
    say(f"Done in {seconds:.1f} s.")
    return DemoReport(name, lens, patching, png, seconds)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m endoscope``."""
    parser = argparse.ArgumentParser(
        prog="python -m endoscope",
        description="endoscope: look inside PyTorch models while they run.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="module tree, logit lens and activation patching on a language model",
        description=DEMO_DESCRIPTION,
    )
    demo.add_argument(
        "--model",
        metavar="PATH_OR_ID",
        help="a causal language model to load instead of the shipped demo model",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="PNG",
        help=f"where to write the patching heatmap (default: {DEFAULT_OUT}, under the "
        "current directory; missing folders are made)",
    )
    demo.add_argument("--no-plot", action="store_true", help="do not write the heatmap")
    demo.add_argument("--prompt", help="the clean prompt (needs --corrupt)")
    demo.add_argument(
        "--corrupt", help="the prompt to patch into: same number of tokens, another subject"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m endoscope``.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.prompt is None) != (args.corrupt is None):
        parser.error(
            "--prompt and --corrupt go together (two prompts with the same number of tokens)"
        )
    from ._demo import quiet_loading

    out = None if args.no_plot else args.out
    try:
        with quiet_loading():  # no "Loading weights" bar in the report
            run_demo(args.model, prompt=args.prompt, corrupt=args.corrupt, out=out)
    except (ValueError, LookupError) as error:
        print(f"python -m endoscope demo: error: {error}", file=sys.stderr)
        return 1
    return 0
