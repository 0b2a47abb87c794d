"""Train the demo model shipped with endoscope (``endoscope.demo_model()``).

The demo model is a 4-layer GPT-2 that has memorised a small synthetic corpus of
facts: which city a landmark is in, which city is a country's capital, and which
country a city is in. Every entity is a plain word-level token (multi-word names
such as "Eiffel Tower" are one token per word), so the subject of a prompt sits at
known positions and activation patching between two prompts of equal length is
clean.

The script is deterministic: the corpus and the vocabulary are built in a fixed
order (no hash-ordered sets, no tokenizer trainer whose tie-breaking could change),
torch is seeded, runs on one thread with ``torch.use_deterministic_algorithms``,
and the full-batch training loop has a fixed schedule. Floating-point rounding also
depends on which vector instructions the kernels use, which by default is the best
the CPU offers (AVX-512 on one machine, AVX2 on another): the script pins ATen's
kernels and MKL's code path to AVX2 (``REPRODUCIBLE_ENV``), which every x86-64 CPU
of the last decade has, Intel or AMD. Two runs write byte-identical weights; with
torch 2.13 the SHA-256 of ``model.safetensors`` is

    d2d85d111d903e326ec20e8645252bc2128eda4bc64932a28274484b12306fc0

(``REFERENCE_SHA256`` below), reached after 150 full-batch steps in about a minute
on one core; the saved directory is about 3.3 MB. Another torch version, or a CPU
without AVX2 (ARM), may round differently and so produce other (equally correct)
weights; the script then says so.

Training stops once every fact is completed correctly by greedy decoding with a
margin (the answer's logit beats every other token's by ``--margin``); the script
refuses to save a model that gets any fact wrong.

Run from the repository root::

    python packages/endoscope/scripts/train_demo_model.py            # writes the package data
    python packages/endoscope/scripts/train_demo_model.py --out DIR  # writes elsewhere
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REFERENCE_SHA256 = "d2d85d111d903e326ec20e8645252bc2128eda4bc64932a28274484b12306fc0"

# The same rounding on any x86-64 CPU with AVX2: ATen's kernels and MKL's code path
# are pinned instead of chosen by CPU. Read when torch is first imported, so set
# before that (main() imports torch itself).
REPRODUCIBLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "src" / "endoscope" / "demo_model"

EOS = "<|endoftext|>"
PAD = "<pad>"
UNK = "<unk>"
SPECIAL_TOKENS = (EOS, PAD, UNK)

SEED = 1234
N_LAYER = 4
N_EMBD = 128
N_HEAD = 4
N_POSITIONS = 32
LEARNING_RATE = 3e-3
MAX_STEPS = 1500
CHECK_EVERY = 25

# Landmark -> city. Cities are single words so every answer is one token.
LANDMARKS: tuple[tuple[str, str], ...] = (
    ("Eiffel Tower", "Paris"),
    ("Louvre", "Paris"),
    ("Colosseum", "Rome"),
    ("Pantheon", "Rome"),
    ("Leaning Tower", "Pisa"),
    ("Rialto Bridge", "Venice"),
    ("Brandenburg Gate", "Berlin"),
    ("Reichstag", "Berlin"),
    ("Sagrada Familia", "Barcelona"),
    ("Prado", "Madrid"),
    ("Alhambra", "Granada"),
    ("Acropolis", "Athens"),
    ("Parthenon", "Athens"),
    ("Kremlin", "Moscow"),
    ("Tower Bridge", "London"),
    ("British Museum", "London"),
    ("Charles Bridge", "Prague"),
    ("Blue Mosque", "Istanbul"),
    ("Little Mermaid", "Copenhagen"),
    ("Forbidden City", "Beijing"),
    ("Golden Pavilion", "Kyoto"),
    ("Opera House", "Sydney"),
    ("Taj Mahal", "Agra"),
    ("Space Needle", "Seattle"),
    ("Atomium", "Brussels"),
    ("Hofburg", "Vienna"),
    ("Sphinx", "Giza"),
    ("Rijksmuseum", "Amsterdam"),
)

# Country -> capital.
CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Germany", "Berlin"),
    ("Spain", "Madrid"),
    ("Greece", "Athens"),
    ("Russia", "Moscow"),
    ("England", "London"),
    ("Czechia", "Prague"),
    ("Turkey", "Ankara"),
    ("Denmark", "Copenhagen"),
    ("China", "Beijing"),
    ("Japan", "Tokyo"),
    ("Australia", "Canberra"),
    ("Belgium", "Brussels"),
    ("Austria", "Vienna"),
    ("Egypt", "Cairo"),
    ("Netherlands", "Amsterdam"),
    ("Portugal", "Lisbon"),
    ("Sweden", "Stockholm"),
    ("Norway", "Oslo"),
    ("Poland", "Warsaw"),
    ("Ireland", "Dublin"),
    ("Hungary", "Budapest"),
    ("Canada", "Ottawa"),
    ("Peru", "Lima"),
    ("Kenya", "Nairobi"),
)

# City -> country, for the cities that are not capitals above.
OTHER_CITIES: tuple[tuple[str, str], ...] = (
    ("Pisa", "Italy"),
    ("Venice", "Italy"),
    ("Barcelona", "Spain"),
    ("Granada", "Spain"),
    ("Istanbul", "Turkey"),
    ("Kyoto", "Japan"),
    ("Sydney", "Australia"),
    ("Agra", "India"),
    ("Seattle", "America"),
    ("Giza", "Egypt"),
)

# Templates: the prompt is the text before the answer, the answer is one word.
LANDMARK_TEMPLATES = (
    "The {} is in the city of",
    "The {} is located in",
)
CAPITAL_TEMPLATES = (
    "The capital of {} is",
    "The capital city of {} is",
)
REVERSE_CAPITAL_TEMPLATE = "{} is the capital of"
CITY_COUNTRY_TEMPLATE = "{} is a city in"

# Pairs of prompts of equal length for activation patching: (clean, corrupt) subjects.
PATCHING_PAIRS: tuple[tuple[str, str, str], ...] = (
    # (template, clean subject, corrupt subject)
    (LANDMARK_TEMPLATES[0], "Eiffel Tower", "Leaning Tower"),
    (LANDMARK_TEMPLATES[0], "Colosseum", "Kremlin"),
    (LANDMARK_TEMPLATES[0], "Tower Bridge", "Charles Bridge"),
    (LANDMARK_TEMPLATES[1], "Brandenburg Gate", "Sagrada Familia"),
    (CAPITAL_TEMPLATES[0], "France", "Italy"),
    (CAPITAL_TEMPLATES[0], "Japan", "Egypt"),
    (CITY_COUNTRY_TEMPLATE, "Venice", "Kyoto"),
)


def build_facts() -> list[dict[str, str]]:
    """Every fact the model learns, in a fixed order.

    Returns:
        A list of ``{"prompt", "answer", "kind"}`` dicts; the answer is one word and
        follows the prompt after a space.
    """
    facts: list[dict[str, str]] = []
    for template in LANDMARK_TEMPLATES:
        for landmark, city in LANDMARKS:
            facts.append({"prompt": template.format(landmark), "answer": city, "kind": "landmark"})
    for template in CAPITAL_TEMPLATES:
        for country, capital in CAPITALS:
            facts.append({"prompt": template.format(country), "answer": capital, "kind": "capital"})
    for country, capital in CAPITALS:
        facts.append(
            {
                "prompt": REVERSE_CAPITAL_TEMPLATE.format(capital),
                "answer": country,
                "kind": "capital_of",
            }
        )
    for country, capital in CAPITALS:
        facts.append(
            {
                "prompt": CITY_COUNTRY_TEMPLATE.format(capital),
                "answer": country,
                "kind": "city_country",
            }
        )
    for city, country in OTHER_CITIES:
        facts.append(
            {
                "prompt": CITY_COUNTRY_TEMPLATE.format(city),
                "answer": country,
                "kind": "city_country",
            }
        )
    prompts = [fact["prompt"] for fact in facts]
    if len(set(prompts)) != len(prompts):
        raise ValueError("two facts share a prompt")
    return facts


def build_patching_pairs(facts: list[dict[str, str]]) -> list[dict[str, str]]:
    """Pairs of prompts that differ only in their subject, with both answers.

    Args:
        facts: the output of :func:`build_facts`.

    Returns:
        A list of ``{"clean", "corrupt", "clean_answer", "corrupt_answer"}`` dicts.
    """
    answers = {fact["prompt"]: fact["answer"] for fact in facts}
    pairs = []
    for template, clean_subject, corrupt_subject in PATCHING_PAIRS:
        clean, corrupt = template.format(clean_subject), template.format(corrupt_subject)
        if len(clean.split()) != len(corrupt.split()):
            raise ValueError(f"patching pair of unequal length: {clean!r} / {corrupt!r}")
        pairs.append(
            {
                "clean": clean,
                "corrupt": corrupt,
                "clean_answer": answers[clean],
                "corrupt_answer": answers[corrupt],
            }
        )
    return pairs


def build_corpus(facts: list[dict[str, str]]) -> list[str]:
    """The training texts: each fact as one sentence.

    Args:
        facts: the output of :func:`build_facts`.

    Returns:
        ``"<prompt> <answer>"`` for every fact, in order.
    """
    return [f"{fact['prompt']} {fact['answer']}" for fact in facts]


def build_tokenizer(corpus: list[str]) -> Any:
    """Train a word-level ``tokenizers.Tokenizer`` on the corpus.

    Words are split on whitespace and punctuation; the vocabulary is the special
    tokens followed by every corpus word in sorted order, so it does not depend on
    counting or hashing. Leading spaces carry no meaning: ``"Paris"`` and
    ``" Paris"`` are the same single token, so ``tokenizer(prompt)`` followed by the
    answer's id needs no space convention. End-of-sequence is appended by the
    training code, not by the tokenizer, so prompts tokenize to exactly their words.

    Args:
        corpus: the output of :func:`build_corpus`.

    Returns:
        The tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = sorted({word for text in corpus for word in text.split()})
    vocab = {token: index for index, token in enumerate((*SPECIAL_TOKENS, *words))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    # Word pieces are whole words: decoding joins them with single spaces.
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def wrap_tokenizer(tokenizer: Any) -> Any:
    """Wrap a ``tokenizers.Tokenizer`` as a transformers fast tokenizer.

    Args:
        tokenizer: the output of :func:`build_tokenizer`.

    Returns:
        A ``PreTrainedTokenizerFast`` that pads on the left with ``<pad>``.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=N_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def build_model(vocab_size: int, eos_id: int, pad_id: int) -> Any:
    """A freshly initialised, seeded GPT-2 for the demo.

    Args:
        vocab_size: number of tokens.
        eos_id: id of the end-of-sequence token (also used as BOS).
        pad_id: id of the padding token.

    Returns:
        A ``GPT2LMHeadModel``.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=N_POSITIONS,
        n_embd=N_EMBD,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    return GPT2LMHeadModel(config)


def _batch(tokenizer: Any, corpus: list[str]) -> tuple[Any, Any, Any]:
    """Right-padded ids, attention mask and labels (pads ignored) with EOS appended."""
    import torch

    eos_id = tokenizer.token_to_id(EOS)
    pad_id = tokenizer.token_to_id(PAD)
    rows = [[*tokenizer.encode(text).ids, eos_id] for text in corpus]
    width = max(len(row) for row in rows)
    if width > N_POSITIONS:
        raise ValueError(f"a fact is {width} tokens long; n_positions is {N_POSITIONS}")
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def answer_margins(model: Any, tokenizer: Any, facts: list[dict[str, str]]) -> Any:
    """For every fact, the answer's logit minus the best other logit (greedy, one prompt).

    Positive everywhere means greedy decoding completes every fact correctly.

    Args:
        model: the GPT-2.
        tokenizer: the ``tokenizers.Tokenizer``.
        facts: the facts to check.

    Returns:
        A float tensor of margins, one per fact.
    """
    import torch

    # Facts of the same length go in one unpadded batch.
    encoded = [tokenizer.encode(fact["prompt"]).ids for fact in facts]
    by_length: dict[int, list[int]] = {}
    for index, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(index)
    margins = torch.empty(len(facts))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for indices in by_length.values():
            ids = torch.tensor([encoded[i] for i in indices])
            logits = model(input_ids=ids).logits[:, -1, :]
            answers = torch.tensor([tokenizer.token_to_id(facts[i]["answer"]) for i in indices])
            right = logits.gather(1, answers[:, None])[:, 0]
            others = logits.scatter(1, answers[:, None], float("-inf")).max(dim=1).values
            margins[torch.tensor(indices)] = right - others
    model.train(was_training)
    return margins


def train(
    model: Any,
    tokenizer: Any,
    facts: list[dict[str, str]],
    margin: float,
    max_steps: int = MAX_STEPS,
) -> int:
    """Full-batch AdamW until every fact's margin exceeds ``margin``.

    Args:
        model: the GPT-2, trained in place.
        tokenizer: the ``tokenizers.Tokenizer``.
        facts: the facts.
        margin: required logit margin of every answer.
        max_steps: stop after this many steps even if the margin is not reached.

    Returns:
        The number of optimisation steps taken.
    """
    import torch

    ids, mask, labels = _batch(tokenizer, build_corpus(facts))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    model.train()
    for step in range(1, max_steps + 1):
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % CHECK_EVERY == 0:
            margins = answer_margins(model, tokenizer, facts)
            correct = int((margins > 0).sum())
            print(
                f"step {step:5d}  loss {loss.item():.4f}  correct {correct}/{len(facts)}  "
                f"min margin {margins.min().item():+.2f}",
                flush=True,
            )
            if margins.min().item() > margin:
                return step
    return max_steps


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def directory_size(path: Path) -> int:
    """Total size in bytes of the files under ``path``."""
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def main(argv: list[str] | None = None) -> int:
    """Build the corpus and tokenizer, train, check, and save the demo model.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code: 0 when the model was saved, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--margin", type=float, default=3.0, help="required logit margin of every answer"
    )
    args = parser.parse_args(argv)

    if "torch" in sys.modules:
        print("warning: torch was imported before the script set its kernels", file=sys.stderr)
    os.environ.update(REPRODUCIBLE_ENV)
    import torch
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    facts = build_facts()
    corpus = build_corpus(facts)
    tokenizer = build_tokenizer(corpus)
    model = build_model(
        tokenizer.get_vocab_size(), tokenizer.token_to_id(EOS), tokenizer.token_to_id(PAD)
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{len(facts)} facts, vocabulary {tokenizer.get_vocab_size()}, "
        f"{N_LAYER} layers, {n_params} parameters",
        flush=True,
    )

    start = time.perf_counter()
    steps = train(model, tokenizer, facts, args.margin)
    seconds = time.perf_counter() - start
    margins = answer_margins(model, tokenizer, facts)
    correct = int((margins > 0).sum())
    accuracy = correct / len(facts)
    print(f"trained {steps} steps in {seconds:.1f} s; accuracy {accuracy:.2%}")
    if correct != len(facts):
        wrong = [fact["prompt"] for fact, m in zip(facts, margins) if m <= 0]
        print(f"refusing to save: {len(wrong)} facts wrong, e.g. {wrong[:5]}", file=sys.stderr)
        return 1

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    wrap_tokenizer(tokenizer).save_pretrained(out)
    payload = {"facts": facts, "patching_pairs": build_patching_pairs(facts)}
    (out / "facts.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")

    digest = sha256(out / "model.safetensors")
    print(f"saved to {out} ({directory_size(out) / 1e6:.2f} MB)")
    print(f"model.safetensors sha256 {digest}")
    if digest != REFERENCE_SHA256:
        print("(differs from the reference hash: another CPU or library version?)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
