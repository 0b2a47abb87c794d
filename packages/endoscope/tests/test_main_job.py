"""The main job, ``python -m endoscope demo``, on the demo model and on a tiny Llama."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import torch

import endoscope
from endoscope import NNsight
from endoscope._demo import demo_facts, demo_model_path, load_demo_transformers
from endoscope._main_job import (
    LayoutNotFoundError,
    activation_patching,
    check_pair,
    find_layout,
    logit_lens,
    main,
    run_demo,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def lm():
    """The demo model wrapped once for the module (the scheduler is chosen per trace)."""
    return endoscope.demo_model(dispatch=True)


@pytest.fixture(scope="module")
def hf():
    """The demo model with plain transformers, for reference values."""
    return load_demo_transformers()


@pytest.fixture(scope="module")
def pair():
    return demo_facts()["patching_pairs"][0]


@pytest.fixture(scope="module")
def reports():
    """One demo run per scheduler, shared by the tests that only inspect it."""
    return {}


@pytest.fixture
def report(lm, scheduler, reports, tmp_path_factory):
    """``(DemoReport, printed text)`` of the main job on the demo model."""
    if scheduler not in reports:
        out = io.StringIO()
        png = tmp_path_factory.mktemp(f"demo-{scheduler}") / "patching.png"
        reports[scheduler] = (run_demo(lm, out=png, stream=out), out.getvalue())
    return reports[scheduler]


def _block_outputs(model, ids):
    """Plain torch: every GPT-2 block's hidden-state output and the final logits."""
    captured = []
    hooks = [
        block.register_forward_hook(
            lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o)
        )
        for block in model.transformer.h
    ]
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        for hook in hooks:
            hook.remove()
    return captured, logits


def test_the_report_prints_the_tree_the_lens_and_the_patching(report, pair):
    result, text = report
    assert "GPT2LMHeadModel(" in text
    assert "(ln_f): LayerNorm" in text
    assert "4 x GPT2Block" in text
    assert "Logit lens on 'The Eiffel Tower is in the city of'" in text
    assert "the model predicts 'Paris'" in text
    assert f"clean:   {pair['clean']!r} -> 'Paris'" in text
    assert f"corrupt: {pair['corrupt']!r} -> 'Pisa'" in text
    assert (
        "Patching the subject token 'Eiffel' (position 1) at the embeddings changes the "
        "prediction from 'Pisa' to 'Paris'." in text
    )
    assert f"written to {result.png}" in text


def test_the_lens_matches_plain_transformers(report, hf):
    result, _ = report
    model, tokenizer = hf
    ids = tokenizer(result.lens.prompt, return_tensors="pt").input_ids
    hidden, logits = _block_outputs(model, ids)
    assert len(result.lens.rows) == model.config.n_layer
    with torch.no_grad():
        for row, h in zip(result.lens.rows, hidden):
            probs = model.lm_head(model.transformer.ln_f(h[0, -1])).softmax(-1)
            top = probs.topk(len(row))
            assert [token for token, _ in row] == [tokenizer.decode([i]) for i in top.indices]
            assert [p for _, p in row] == pytest.approx(top.values.tolist(), abs=1e-5)
    actual = tokenizer.decode([logits[0, -1].argmax()])
    assert result.lens.rows[-1][0][0] == actual == result.lens.prediction == "Paris"


def test_patching_the_subject_early_flips_the_city(report, pair, hf):
    result, _ = report
    patching = result.patching
    _, tokenizer = hf
    subject = patching.differing_positions
    assert subject == [1]
    assert patching.clean_tokens[1] == "Eiffel" and patching.corrupt_tokens[1] == "Leaning"
    assert (patching.clean_answer, patching.corrupt_answer) == ("Paris", "Pisa")
    assert patching.clean_answer == pair["clean_answer"]
    assert patching.rows == ["embed", "layer 0", "layer 1", "layer 2", "layer 3"]
    # Patching the subject token before the first layer turns Pisa into Paris.
    assert patching.predictions[0][1] == "Paris"
    assert "embed" in patching.flips(1)
    assert float(patching.effect[0, 1]) == pytest.approx(1.0, abs=1e-4)
    # Positions before the subject hold the same state in both runs: no effect at all.
    assert patching.effect[:, 0].abs().max() < 1e-4
    # The last layer's output at the last position decides the prediction entirely.
    assert float(patching.effect[-1, -1]) == pytest.approx(1.0, abs=1e-4)
    # Elsewhere the corrupt prediction stands.
    assert patching.predictions[1][2] == "Pisa"


def test_patching_agrees_with_plain_torch_hooks(lm, hf, pair):
    model, tokenizer = hf
    clean = tokenizer(pair["clean"], return_tensors="pt").input_ids
    corrupt = tokenizer(pair["corrupt"], return_tensors="pt").input_ids
    clean_hidden, _ = _block_outputs(model, clean)
    result = activation_patching(lm, pair["clean"], pair["corrupt"])
    answer = tokenizer.convert_tokens_to_ids(pair["clean_answer"])
    other = tokenizer.convert_tokens_to_ids(pair["corrupt_answer"])
    for layer, position in ((0, 7), (1, 1), (2, 6)):

        def patch(module, args, output, layer=layer, position=position):
            output = output.clone()
            output[:, position] = clean_hidden[layer][:, position]
            return output

        hook = model.transformer.h[layer].register_forward_hook(patch)
        try:
            with torch.no_grad():
                logits = model(corrupt).logits[0, -1]
        finally:
            hook.remove()
        predicted = tokenizer.decode([logits.argmax()])
        assert result.predictions[layer + 1][position] == predicted
        with torch.no_grad():
            base_clean = model(clean).logits[0, -1]
            base_corrupt = model(corrupt).logits[0, -1]
        diff = lambda x: float(x[answer] - x[other])  # noqa: E731
        expected = (diff(logits) - diff(base_corrupt)) / (diff(base_clean) - diff(base_corrupt))
        assert float(result.effect[layer + 1, position]) == pytest.approx(expected, abs=1e-3)


def test_the_heatmap_is_a_png(report):
    result, _ = report
    assert result.png is not None
    assert result.png.read_bytes()[:8] == PNG_MAGIC
    assert result.png.stat().st_size > 5000


def test_without_matplotlib_it_says_how_to_get_the_png(lm, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now fails
    out = io.StringIO()
    result = run_demo(lm, out=tmp_path / "none.png", stream=out)
    assert result.png is None
    assert not (tmp_path / "none.png").exists()
    assert "pip install 'endoscope[plot]'" in out.getvalue()
    assert result.patching.predictions[0][1] == "Paris"


def test_prompt_overrides_and_their_checks(lm, tmp_path):
    out = io.StringIO()
    result = run_demo(
        lm,
        prompt="The capital of France is",
        corrupt="The capital of Italy is",
        out=None,
        stream=out,
    )
    assert result.png is None
    assert (result.patching.clean_answer, result.patching.corrupt_answer) == ("Paris", "Rome")
    assert result.patching.differing_positions == [3]
    assert "embed" in result.patching.flips(3)
    with pytest.raises(ValueError, match="same number of tokens"):
        check_pair(lm, "The Eiffel Tower is in the city of", "The Colosseum is in the city of")
    with pytest.raises(ValueError, match="both prompts predict 'Paris'"):
        check_pair(lm, "The capital of France is", "The capital of France is")
    with pytest.raises(ValueError, match="both --prompt and --corrupt"):
        run_demo(lm, prompt="The capital of France is", out=None, stream=io.StringIO())


def test_a_llama_layout_from_a_path(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(demo_model_path())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    out = io.StringIO()
    result = run_demo(str(tmp_path / "llama"), out=tmp_path / "llama.png", stream=out)
    text = out.getvalue()
    assert "LlamaForCausalLM(" in text
    assert "through model.norm and lm_head" in text
    assert len(result.lens.rows) == 2
    assert result.patching.rows == ["embed", "layer 0", "layer 1"]
    # The embedding row at the differing position makes the corrupt run the clean one.
    for position in result.patching.differing_positions:
        assert float(result.patching.effect[0, position]) == pytest.approx(1.0, abs=1e-3)
    assert result.png.read_bytes()[:8] == PNG_MAGIC


def test_an_unknown_architecture_is_explained():
    model = NNsight(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
    with pytest.raises(LayoutNotFoundError, match=r"Sequential.*transformer\.h.*model\.layers"):
        find_layout(model)
    with pytest.raises(LayoutNotFoundError):
        logit_lens(model, "anything")


def test_command_line_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--prompt", "The capital of France is"])
    assert exit_info.value.code == 2
    assert "--prompt and --corrupt go together" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])
    code = main(
        [
            "demo",
            "--prompt",
            "The Eiffel Tower is in the city of",
            "--corrupt",
            "The Colosseum is in the city of",
            "--out",
            os.devnull,
        ]
    )
    assert code == 1
    assert "same number of tokens" in capsys.readouterr().err


def test_python_dash_m_endoscope_demo(tmp_path, scheduler):
    png = tmp_path / "demo.png"
    env = {**os.environ, "ENDOSCOPE_SCHEDULER": scheduler}
    result = subprocess.run(
        [sys.executable, "-m", "endoscope", "demo", "--out", str(png)],
        capture_output=True,
        text=True,
        timeout=900,  # a guard against a hang, not a measurement
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GPT2LMHeadModel(" in result.stdout
    assert "the model predicts 'Paris'" in result.stdout
    assert "changes the prediction from 'Pisa' to 'Paris'" in result.stdout
    assert png.read_bytes()[:8] == PNG_MAGIC
