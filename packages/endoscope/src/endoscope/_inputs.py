"""Language-model inputs: every accepted form to left-padded token tensors.

One invoke's input (a prompt, a list of prompts, token ids, a tensor, a tokenizer
output) becomes keyword arguments for the model: ``input_ids`` of shape
``[rows, length]``, its ``attention_mask`` and ``position_ids`` counted from each
row's first real token. Rows of different lengths are padded on the *left*, so
every prompt ends at the last position and its real tokens see the same
positions and the same context as when run alone.

Several invokes are batched by padding each one's rows on the left to the
longest, then concatenating (endoscope_envoy's :func:`batch_inputs` assigns each
invoke its block of rows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "INPUT_NAMES",
    "SEQUENCE_PADDING",
    "encode_input",
    "left_pad",
    "pad_invokes",
    "positions_from_mask",
    "prompts_of",
    "sequence_length",
    "split_input_kwargs",
    "with_positions",
]

# Keyword inputs aligned with the token sequence, and what pads them on the left.
# ``None`` stands for the tokenizer's pad token id.
SEQUENCE_PADDING: dict[str, int | float | None] = {
    "input_ids": None,
    "attention_mask": 0,
    "position_ids": 0,
    "token_type_ids": 0,
    "labels": -100,
    "inputs_embeds": 0.0,
}

# Keyword arguments of ``trace``/``generate`` that are inputs (batched per invoke)
# rather than options of the run (``max_new_tokens``, ``streamer``, ...).
INPUT_NAMES = frozenset(SEQUENCE_PADDING)

Tokenize = Callable[[list[str]], Mapping[str, Any]]


def split_input_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``trace``/``generate`` keyword arguments into inputs and run options.

    Inputs are the sequence-aligned names of :data:`SEQUENCE_PADDING`; they are
    batched with the invoke's other inputs. Everything else (``max_new_tokens``,
    ``do_sample``, ``streamer``, ``output_hidden_states``, ...) is passed,
    unbatched and the same for every invoke, to the run.

    Returns:
        ``(inputs, options)``.
    """
    inputs = {name: value for name, value in kwargs.items() if name in INPUT_NAMES}
    options = {name: value for name, value in kwargs.items() if name not in INPUT_NAMES}
    return inputs, options


def left_pad(rows: Sequence[torch.Tensor], value: float) -> torch.Tensor:
    """Stack 1-D (or ``[length, ...]``) tensors, padding the short ones on the left."""
    length = max(row.shape[0] for row in rows)
    out = rows[0].new_full((len(rows), length, *rows[0].shape[1:]), value)
    for index, row in enumerate(rows):
        if row.shape[0]:
            out[index, length - row.shape[0] :] = row
    return out


def _pad_columns(tensor: torch.Tensor, length: int, value: float) -> torch.Tensor:
    """Pad ``[rows, n, ...]`` on the left of dim 1 to ``length`` columns."""
    missing = length - tensor.shape[1]
    if missing <= 0:
        return tensor
    pad = tensor.new_full((tensor.shape[0], missing, *tensor.shape[2:]), value)
    return torch.cat([pad, tensor], dim=1)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting each row's real tokens from 0 (pads get 0)."""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _is_int_sequence(value: Any) -> bool:
    # Judged per distinct element type: a tokenizer's row of ids is one type.
    return isinstance(value, (list, tuple)) and all(
        issubclass(kind, int) and kind is not bool for kind in set(map(type, value))
    )


def _as_rows(value: Any, name: str) -> list[torch.Tensor]:
    """One 1-D (or ``[length, ...]``) tensor per row of a tensor or nested list."""
    batched = _batched_tensor(name, value)
    if batched is not None:
        return list(batched.unbind(0))
    if _is_int_sequence(value):
        return [torch.tensor(list(value), dtype=torch.long)]
    if isinstance(value, (list, tuple)) and value:
        rows: list[torch.Tensor] = []
        for row in value:
            if isinstance(row, torch.Tensor):
                rows.append(row)
            elif _is_int_sequence(row):
                rows.append(torch.tensor(list(row), dtype=torch.long))
            else:
                raise TypeError(f"{name}: rows must be token id lists or tensors, got {row!r}.")
        return rows
    raise TypeError(
        f"{name}: expected a tensor or a list of token ids, got {type(value).__name__}."
    )


def _batched_tensor(name: str, value: Any) -> torch.Tensor | None:
    """``value`` as a ``[rows, length, ...]`` tensor if it is a tensor or rows of
    token ids all of one length (a tokenizer's output for one prompt), else ``None``."""
    if isinstance(value, (list, tuple)) and value and name != "inputs_embeds":
        # One tensor call, not one per row and a padded copy.
        length = len(value[0]) if isinstance(value[0], (list, tuple)) else -1
        if all(_is_int_sequence(row) and len(row) == length for row in value):
            return torch.tensor(value, dtype=torch.long)
        return None
    if not isinstance(value, torch.Tensor):
        return None
    if value.dim() == 0:
        raise TypeError(f"{name} must have a sequence dimension, got a scalar tensor.")
    single = 2 if name == "inputs_embeds" else 1
    return value.unsqueeze(0) if value.dim() == single else value


def _rows_to_batch(columns: Mapping[str, Any], pad_token_id: int) -> dict[str, Any]:
    """Turn sequence-aligned columns into left-padded ``[rows, length]`` tensors."""
    aligned = {
        name: value
        for name, value in columns.items()
        if name in SEQUENCE_PADDING and value is not None
    }
    ids_name = "input_ids" if "input_ids" in aligned else "inputs_embeds"
    if ids_name not in aligned:
        raise TypeError(
            "no token input: pass a prompt, token ids, a tokenizer output, or "
            "input_ids=... (or inputs_embeds=...)."
        )
    tensors = {name: _batched_tensor(name, value) for name, value in aligned.items()}
    batch: dict[str, Any] = {}
    if all(tensor is not None for tensor in tensors.values()):
        # Already rectangular: keep the tensors as they are.
        batch = dict(tensors)
        if "attention_mask" not in batch:
            batch["attention_mask"] = torch.ones(batch[ids_name].shape[:2], dtype=torch.long)
    else:
        rows = {name: _as_rows(value, name) for name, value in aligned.items()}
        lengths = [row.shape[0] for row in rows[ids_name]]
        if "attention_mask" not in rows:
            rows["attention_mask"] = [torch.ones(n, dtype=torch.long) for n in lengths]
        for name, padding in SEQUENCE_PADDING.items():
            if name in rows:
                value = pad_token_id if padding is None else padding
                batch[name] = left_pad(rows[name], value)
    ids = batch[ids_name]
    for name, tensor in batch.items():
        if tensor.shape[:2] != ids.shape[:2]:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, which does not match "
                f"{ids_name}'s {tuple(ids.shape)} in rows and length."
            )
    ordered = {ids_name: batch.pop(ids_name), "attention_mask": batch.pop("attention_mask")}
    ordered.update(batch)
    ordered.update((name, value) for name, value in columns.items() if name not in SEQUENCE_PADDING)
    return ordered


def encode_input(
    value: Any,
    kwargs: Mapping[str, Any],
    *,
    tokenize: Tokenize | None,
    pad_token_id: int,
) -> dict[str, Any]:
    """Normalise one invoke's input to keyword inputs with ``[rows, length]`` tensors.

    Args:
        value: a prompt, a list of prompts, token ids (a list of ints, a list of
            lists, a tensor of shape ``[length]`` or ``[rows, length]``), a
            tokenizer output (dict or BatchEncoding), or ``None`` when the input
            comes only as keywords.
        kwargs: keyword inputs (``input_ids=``, ``attention_mask=``, ``labels=``,
            ...); they override what ``value`` produced.
        tokenize: turns a list of prompts into a tokenizer output (lists of ids
            per prompt, unpadded); ``None`` if the model has no tokenizer.
        pad_token_id: the id that pads ``input_ids`` on the left.

    Returns:
        The model's keyword inputs, ``input_ids`` (or ``inputs_embeds``) first,
        then ``attention_mask``.

    Raises:
        TypeError: the input has a form that is not understood.
        ValueError: prompts without a tokenizer, or mismatched lengths.
    """
    columns: dict[str, Any] = {}
    if value is not None:
        columns.update(_columns_of(value, tokenize))
    columns.update(kwargs)
    return _rows_to_batch(columns, pad_token_id)


def prompts_of(value: Any) -> list[str] | None:
    """The prompts of an input that is text (a prompt or a list of them), else None."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _columns_of(value: Any, tokenize: Tokenize | None) -> dict[str, Any]:
    prompts = prompts_of(value)
    if prompts is not None:
        if tokenize is None:
            raise ValueError(
                "this LanguageModel has no tokenizer to turn text into tokens: pass "
                "tokenizer=... when creating it, or give token ids instead of text."
            )
        return dict(tokenize(prompts))
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            raise TypeError(
                "a tensor input is read as token ids and must hold integers; pass "
                "embeddings as inputs_embeds=... instead."
            )
        return {"input_ids": value}
    if isinstance(value, (list, tuple)) and value:
        return {"input_ids": value}
    raise TypeError(
        f"cannot use a {type(value).__name__} as a language model input: pass a "
        "prompt, a list of prompts, token ids, a tensor of token ids or a "
        "tokenizer output."
    )


def sequence_length(inputs: Mapping[str, Any]) -> int:
    """The padded sequence length of one invoke's keyword inputs."""
    if isinstance(inputs.get("input_ids"), torch.Tensor):
        return int(inputs["input_ids"].shape[1])
    return int(inputs["inputs_embeds"].shape[1])


def with_positions(inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with ``position_ids`` from the attention mask, if it has none."""
    if "position_ids" in inputs:
        return inputs
    return {**inputs, "position_ids": positions_from_mask(inputs["attention_mask"])}


def pad_invokes(inputs: Sequence[dict[str, Any]], *, pad_token_id: int) -> list[dict[str, Any]]:
    """Left-pad several invokes' keyword inputs to one sequence length.

    Padding on the left adds columns before every real token, so position ids
    counted from the attention mask stay what they were; they are padded with 0.

    Args:
        inputs: each invoke's keyword inputs, as :func:`encode_input` made them.
        pad_token_id: the id that pads ``input_ids``.

    Returns:
        The inputs, all of one length, ready to be concatenated along dim 0.
    """
    length = max(sequence_length(one) for one in inputs)
    padded: list[dict[str, Any]] = []
    for one in inputs:
        out = dict(one)
        for name, value in one.items():
            if name in SEQUENCE_PADDING and isinstance(value, torch.Tensor) and value.dim() >= 2:
                padding = SEQUENCE_PADDING[name]
                out[name] = _pad_columns(
                    value, length, pad_token_id if padding is None else padding
                )
        padded.append(out)
    return padded
