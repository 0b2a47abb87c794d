"""The demo model shipped as package data: loads offline, knows its facts, reproducible."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from endoscope._demo import demo_facts, demo_model_path, load_demo_transformers

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_demo_model.py"


@pytest.fixture
def scheduler():
    """One run per test: these tests use plain transformers, not endoscope's schedulers.

    Overrides the autouse, parametrized ``scheduler`` fixture of ``conftest.py``.
    """
    return None


@pytest.fixture(scope="module")
def script():
    """The training script, imported as a module (it lives outside the package)."""
    spec = importlib.util.spec_from_file_location("train_demo_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hf():
    """The demo model and tokenizer loaded with plain transformers."""
    return load_demo_transformers()


def test_the_package_data_is_complete_and_small():
    path = demo_model_path()
    names = {item.name for item in path.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "facts.json",
    } <= names
    size = sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    assert size < 5 * 1024 * 1024, f"demo model is {size / 1e6:.2f} MB"


def test_loads_offline_with_plain_transformers(hf):
    model, tokenizer = hf
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert 2 <= model.config.n_layer <= 4
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.unk_token_id is not None
    # Whole words are single tokens, with or without a leading space.
    paris = tokenizer("Paris").input_ids
    assert len(paris) == 1
    assert tokenizer(" Paris").input_ids == paris
    assert tokenizer.decode(paris) == "Paris"
    assert tokenizer("Atlantis").input_ids == [tokenizer.unk_token_id]


def test_every_fact_is_completed_greedily(hf):
    model, tokenizer = hf
    facts = demo_facts()["facts"]
    assert len(facts) >= 100
    assert len({fact["answer"] for fact in facts}) >= 20
    wrong = []
    with torch.no_grad():
        for fact in facts:
            ids = tokenizer(fact["prompt"], return_tensors="pt").input_ids
            predicted = tokenizer.decode(model(ids).logits[0, -1].argmax())
            if predicted != fact["answer"]:
                wrong.append((fact["prompt"], predicted, fact["answer"]))
    assert wrong == []


def test_left_padded_batch_completes_every_fact(hf):
    model, tokenizer = hf
    facts = demo_facts()["facts"]
    batch = tokenizer([fact["prompt"] for fact in facts], return_tensors="pt", padding=True)
    mask = batch["attention_mask"]
    assert (mask[:, 0] == 0).any(), "the batch should contain left padding"
    assert (mask[:, -1] == 1).all()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(**batch, position_ids=positions).logits[:, -1]
    predicted = tokenizer.batch_decode(logits.argmax(-1)[:, None])
    assert predicted == [fact["answer"] for fact in facts]


def test_generation_stops_at_the_end_token(hf):
    model, tokenizer = hf
    inputs = tokenizer("The capital of Japan is", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new = out[0, inputs.input_ids.shape[1] :].tolist()
    assert new == [tokenizer.convert_tokens_to_ids("Tokyo"), tokenizer.eos_token_id]


def test_patching_pairs_have_equal_length_and_differ_only_in_the_subject(hf):
    _, tokenizer = hf
    pairs = demo_facts()["patching_pairs"]
    assert len(pairs) >= 3
    answers = {fact["prompt"]: fact["answer"] for fact in demo_facts()["facts"]}
    for pair in pairs:
        clean = tokenizer(pair["clean"]).input_ids
        corrupt = tokenizer(pair["corrupt"]).input_ids
        assert len(clean) == len(corrupt)
        differ = [i for i, (a, b) in enumerate(zip(clean, corrupt)) if a != b]
        assert 1 <= len(differ) <= 2
        assert differ == list(range(differ[0], differ[-1] + 1))
        assert answers[pair["clean"]] == pair["clean_answer"]
        assert answers[pair["corrupt"]] == pair["corrupt_answer"]
        assert pair["clean_answer"] != pair["corrupt_answer"]


def test_script_rebuilds_the_shipped_facts_and_vocabulary(script):
    facts = script.build_facts()
    shipped = demo_facts()
    assert facts == shipped["facts"]
    assert script.build_patching_pairs(facts) == shipped["patching_pairs"]
    tokenizer = script.build_tokenizer(script.build_corpus(facts))
    shipped_json = json.loads((demo_model_path() / "tokenizer.json").read_text())
    assert tokenizer.get_vocab() == shipped_json["model"]["vocab"]
    # Every word of every fact is in the vocabulary: nothing maps to <unk>.
    unk = tokenizer.token_to_id(script.UNK)
    for text in script.build_corpus(facts):
        assert unk not in tokenizer.encode(text).ids


def test_script_config_matches_the_shipped_model(script, hf):
    model, tokenizer = hf
    assert model.config.n_layer == script.N_LAYER
    assert model.config.n_embd == script.N_EMBD
    assert model.config.n_positions == script.N_POSITIONS
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_short_training_runs_are_bit_identical(script):
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        facts = script.build_facts()[:40]
        tokenizer = script.build_tokenizer(script.build_corpus(script.build_facts()))
        states = []
        for _ in range(2):
            model = script.build_model(tokenizer.get_vocab_size(), 0, 1)
            steps = script.train(model, tokenizer, facts, margin=float("inf"), max_steps=8)
            assert steps == 8
            states.append(model.state_dict())
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    first, second = states
    assert first.keys() == second.keys()
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
    fresh = script.build_model(tokenizer.get_vocab_size(), 0, 1).state_dict()
    changed = sum(not torch.equal(fresh[name], value) for name, value in first.items())
    assert changed > len(first) // 2, "training should have moved the weights"


# Fields a library stamps into what it saves (its own version, its class names):
# they say which release wrote the file, not what retraining determined.
STAMPED = {"transformers_version", "backend", "tokenizer_class"}


def _determined(path: Path) -> dict:
    """A saved JSON file without the fields the saving library stamps into it."""
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in STAMPED}


@pytest.mark.slow
def test_retraining_reproduces_the_shipped_weights(tmp_path, script):
    # About a minute on one core. On a CPU without AVX2 or another torch the rounding may
    # differ; the script then says so and prints the new hash. What is compared is
    # what retraining determines (weights, model fields, vocabulary, facts), never a
    # version string a library stamps, so a newer transformers cannot fail this test.
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,  # about a minute alone; far longer on a loaded machine
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "accuracy 100.00%" in result.stdout
    shipped = demo_model_path()
    retrained = load_file(tmp_path / "model.safetensors")
    reference = load_file(shipped / "model.safetensors")
    assert retrained.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(retrained[name], value), name
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        assert _determined(tmp_path / name) == _determined(shipped / name), name
    assert (tmp_path / "facts.json").read_bytes() == (shipped / "facts.json").read_bytes()
    tokenizers = [PreTrainedTokenizerFast.from_pretrained(p) for p in (tmp_path, shipped)]
    assert tokenizers[0].get_vocab() == tokenizers[1].get_vocab()
    prompts = [fact["prompt"] + " " + fact["answer"] for fact in script.build_facts()]
    assert tokenizers[0](prompts)["input_ids"] == tokenizers[1](prompts)["input_ids"]


def test_stamped_fields_are_ignored_and_model_fields_are_not(tmp_path):
    shipped = demo_model_path() / "config.json"
    config = json.loads(shipped.read_text())
    config["transformers_version"] = "99.0.0"
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert _determined(tmp_path / "config.json") == _determined(shipped)
    config["n_layer"] += 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert _determined(tmp_path / "config.json") != _determined(shipped)


@pytest.fixture
def bars(monkeypatch):
    """Names of the transformers progress bars started while the fixture is active."""
    from transformers.utils import logging as transformers_logging

    started: list[str] = []
    real = transformers_logging.tqdm_lib.tqdm

    class Spy(real):
        def __init__(self, *args, **kwargs):
            started.append(kwargs.get("desc") or "bar")
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(transformers_logging.tqdm_lib, "tqdm", Spy)
    transformers_logging.enable_progress_bar()
    return started


def test_loading_the_demo_model_shows_no_progress_bar(bars):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    from endoscope import demo_model

    # The spy sees transformers' own loading bar...
    AutoModelForCausalLM.from_pretrained(demo_model_path(), local_files_only=True)
    assert bars == ["Loading weights"]
    bars.clear()
    # ...but not when endoscope loads the demo model, eagerly or at the first trace.
    demo_model()
    load_demo_transformers()
    lazy = demo_model(dispatch=False)
    with lazy.trace("The capital of France is"):
        logits = lazy.lm_head.output.save()
    assert logits.shape[-1] == 115
    assert bars == []
    assert transformers_logging.is_progress_bar_enabled()  # the setting is restored
