"""The README's "Ten common tasks" run as written, and give what plain transformers gives.

Every ```python block of that section is written to its own file and executed in a
fresh namespace (traces read their own source, so each block runs from a real file).
The names a block defines are then checked against the same computation done on the
demo model's weights with plain transformers and torch hooks.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
from plain_torch import hooked, record

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Ten common tasks"


def task_blocks() -> list[str]:
    """The ```python blocks of the README section, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


BLOCKS = task_blocks()


def run_task(number: int, tmp_path: Path) -> dict[str, Any]:
    """Run block ``number`` (from 1) from a file; its namespace afterwards."""
    source = BLOCKS[number - 1]
    path = tmp_path / f"readme_task_{number}.py"
    path.write_text(source, encoding="utf-8")
    namespace: dict[str, Any] = {"__name__": f"readme_task_{number}", "__file__": str(path)}
    try:
        exec(compile(source, str(path), "exec"), namespace)
    except Exception as error:
        details = "".join(traceback.format_exception(error))
        pytest.fail(f"README task {number} failed:\n{details}", pytrace=False)
    return namespace


# ------------------------------------------------------------------ plain references


def zero(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(output)


def encode(tokenizer: Any, *prompts: str) -> torch.Tensor:
    """Token ids of prompts of equal length, one row each."""
    return torch.tensor([tokenizer(p)["input_ids"] for p in prompts])


def last_token(logits: torch.Tensor, row: int = 0) -> int:
    return int(logits[row, -1].argmax())


@torch.no_grad()
def plain_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits


# ---------------------------------------------------------------------------- tests


def test_the_section_has_ten_blocks() -> None:
    assert len(BLOCKS) == 10
    text = README.read_text(encoding="utf-8")
    assert text.index("## Quickstart") < text.index(SECTION) < text.index("## Packages")
    for number in range(1, 11):
        assert f"**{number}. " in text


def test_1_read_a_layer(tmp_path, capsys, demo_reference) -> None:
    ns = run_task(1, tmp_path)
    model, tok = demo_reference
    seen: dict[str, Any] = {}
    with hooked((model.transformer.h[2], record(seen, "h"))):
        logits = plain_logits(model, encode(tok, "The Eiffel Tower is in the city of"))
    assert torch.equal(ns["hidden"], seen["h"])
    assert torch.equal(ns["logits"], logits)
    assert tok.decode(last_token(logits)) == "Paris"
    assert capsys.readouterr().out.strip().endswith("Paris")


def test_2_edit_and_replace(tmp_path, demo_reference) -> None:
    ns = run_task(2, tmp_path)
    model, tok = demo_reference
    ids = encode(tok, "The capital of France is")
    with hooked((model.transformer.h[0].mlp, zero)):
        ablated = last_token(plain_logits(model, ids))
    seen: dict[str, Any] = {}
    with hooked(
        (model.transformer.h[1], record(seen, "early")),
        (model.transformer.h[3], lambda m, a, o: seen["early"]),
    ):
        skipped = last_token(plain_logits(model, ids))
    assert int(ns["ablated"]) == ablated
    assert int(ns["skipped"]) == skipped
    # The ablation changes the answer; removing layers 2 and 3 does not.
    assert tok.decode(ablated) != "Paris" and tok.decode(skipped) == "Paris"


def test_3_patch_across_prompts(tmp_path, demo_reference) -> None:
    ns = run_task(3, tmp_path)
    model, tok = demo_reference
    ids = encode(tok, "The Eiffel Tower is in the city of", "The Leaning Tower is in the city of")

    def patch(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0].clone()
        hidden[1, 1] = hidden[0, 1]
        return (hidden, *args[1:])

    handle = model.transformer.h[0].register_forward_pre_hook(patch)
    try:
        patched = last_token(plain_logits(model, ids), row=1)
    finally:
        handle.remove()
    assert int(ns["patched"]) == patched
    assert tok.decode(patched) == "Paris"
    assert tok.decode(last_token(plain_logits(model, ids[1:]))) == "Pisa"


def test_4_logit_lens(tmp_path, demo_reference) -> None:
    ns = run_task(4, tmp_path)
    model, tok = demo_reference
    seen: dict[str, Any] = {}
    hooks = [(block, record(seen, str(i))) for i, block in enumerate(model.transformer.h)]
    with hooked(*hooks), torch.no_grad():
        plain_logits(model, encode(tok, "The capital of France is"))
        expected = [
            tok.decode(last_token(model.lm_head(model.transformer.ln_f(seen[str(i)]))))
            for i in range(len(model.transformer.h))
        ]
    assert ns["guesses"] == expected
    assert expected[-1] == "Paris"


def test_5_steer_generation(tmp_path, demo_reference) -> None:
    ns = run_task(5, tmp_path)
    model, tok = demo_reference
    seen: dict[str, Any] = {}
    with hooked((model.transformer.h[2], record(seen, "h"))):
        plain_logits(model, encode(tok, "The capital of France is", "The capital of Italy is"))
    france, italy = seen["h"][0, -1], seen["h"][1, -1]
    assert torch.equal(ns["france"], france) and torch.equal(ns["italy"], italy)

    def steer(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, -1] += italy - france
        return output

    ids = encode(tok, "The capital of France is")
    mask = torch.ones_like(ids)
    with hooked((model.transformer.h[2], steer)), torch.no_grad():
        steered = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert torch.equal(ns["tokens"], steered)
    assert tok.decode(steered[0, ids.shape[1]]) == "Rome"
    assert tok.decode(plain[0, ids.shape[1]]) == "Paris"


def test_6_cache_every_layer(tmp_path, demo_reference) -> None:
    ns = run_task(6, tmp_path)
    model, tok = demo_reference
    seen: dict[str, Any] = {}
    hooks = [(block, record(seen, str(i))) for i, block in enumerate(model.transformer.h)]
    with hooked(*hooks):
        plain_logits(model, encode(tok, "The Colosseum is in the city of"))
    cache = ns["cache"]
    assert sorted(cache.keys()) == [f"model.transformer.h.{i}" for i in range(4)]
    for i in range(4):
        assert torch.equal(cache.model.transformer.h[i].output, seen[str(i)])
        assert torch.equal(cache[f"model.transformer.h.{i}"].output, seen[str(i)])


def test_7_gradients(tmp_path, demo_reference) -> None:
    ns = run_task(7, tmp_path)
    model, tok = demo_reference
    seen: dict[str, Any] = {}
    with hooked((model.transformer.h[1], record(seen, "h"))):
        logits = model(encode(tok, "The Colosseum is in the city of")).logits
    seen["h"].retain_grad()
    rome = tok.convert_tokens_to_ids("Rome")
    (-logits[0, -1].log_softmax(-1)[rome]).backward()
    model.zero_grad(set_to_none=True)
    assert torch.equal(ns["grad"], seen["h"].grad)
    assert ns["grad"].abs().sum() > 0


def test_8_source(tmp_path, capsys, demo_reference) -> None:
    ns = run_task(8, tmp_path)
    model, tok = demo_reference
    seen: dict[str, Any] = {}
    attn, mlp = model.transformer.h[0].attn, model.transformer.h[0].mlp
    with hooked((attn.c_attn, record(seen, "qkv")), (mlp.act, zero)):
        logits = plain_logits(model, encode(tok, "The Colosseum is in the city of"))
    assert torch.equal(ns["qkv"], seen["qkv"])
    assert torch.equal(ns["logits"], logits)
    printed = capsys.readouterr().out
    for name in ("self_c_attn_1", "attention_interface_0", "self_c_proj_0"):
        assert name in printed


def test_9_scan_and_edit(tmp_path, capsys, demo_reference) -> None:
    ns = run_task(9, tmp_path)
    model, tok = demo_reference
    ids = encode(tok, "The capital of France is")
    assert tuple(ns["shape"]) == (1, ids.shape[1], 4 * model.config.n_embd)
    assert "torch.float32" in capsys.readouterr().out
    with hooked((model.transformer.h[0].mlp, zero)):
        edited = plain_logits(model, ids)
    assert torch.equal(ns["edited"], edited)
    assert torch.equal(ns["original"], plain_logits(model, ids))
    assert not torch.equal(ns["edited"], ns["original"])


def test_10_any_pytorch_module(tmp_path) -> None:
    ns = run_task(10, tmp_path)
    net, x = ns["net"], ns["x"]

    def zero_rest(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[2:] = 0
        return output

    with torch.no_grad():
        assert torch.equal(ns["hidden"], net[0](x)[:2])
        with hooked((net[1], zero_rest)):
            expected = net(x)[2:]
    assert torch.equal(ns["out"], expected)
    assert torch.equal(ns["out"][0], net[2].bias)
