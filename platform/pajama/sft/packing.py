"""Pack tokenized SFT examples into fixed-length sequences with no loss or attention across them.

Input examples are ``{"input_ids", "labels"}`` from `templates.tokenize_example` (labels follow
transformers' convention: ``labels[i]`` is the token at position i, predicted from positions < i;
-100 is not scored). Each packed sequence has four columns of length `max_length`:

* ``input_ids``: the examples back to back, then `pad_token_id`;
* ``labels``: the examples' labels, with the first token of every example set to -100 (it would
  otherwise be predicted from the previous example's last token), and -100 on padding;
* ``position_ids``: 0, 1, ... restarting at every example (0 on padding), so rotary positions
  are those the example has alone;
* ``segment_ids``: 1..k for the k examples of the sequence, 0 on padding.

Attention must not cross examples either. Two ways with transformers 4.57 GPT-NeoX:

* pass ``attention_mask=block_diagonal_attention_mask(segment_ids, dtype=model.dtype)``: a 4D
  mask is used as given (`masking_utils._preprocess_mask_arguments` returns it untouched). The
  eager attention adds it to the scores, so it must be additive float (0 to attend, the dtype's
  minimum to block), which is the default here; SDPA takes float or bool (True = attend).
* or pass ``position_ids``, no attention mask and ``use_cache=False``:
  `masking_utils.find_packed_sequence_indices` then finds the examples where the positions
  restart and builds the same block-diagonal causal mask (torch >= 2.6). It does so only without
  a KV cache, and GPTNeoXModel creates one whenever `use_cache` is on (the config default, also
  in training without gradient checkpointing): then attention silently crosses examples.

Truncation (an example longer than `max_length`). Let p be the number of prompt tokens before
the first scored token and r the number of tokens from there on. The prompt keeps its *last*
tokens (the part next to the reply, with the ``A:``/``<bot>:`` marker) and gives up its head,
so that at least ``min(r, min_response_tokens)`` reply tokens fit; the reply then fills the rest
and loses its tail (and with it possibly the EOS). An example left with no scored token, such as
one with no reply at all, is dropped and counted.

Packing is best-fit decreasing: longest example first (ties in input order), each into the
fullest sequence that still has room, else a new sequence. It is deterministic; examples keep
their input order inside a sequence, and sequences are ordered by their first example.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from pajama.sft.templates import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


def truncate_example(example: dict, max_length: int, min_response_tokens: int = 16) -> dict:
    """`example` cut to at most `max_length` tokens by the rules in the module docstring."""
    input_ids, labels = example["input_ids"], example["labels"]
    if len(input_ids) != len(labels):
        raise ValueError(f"input_ids ({len(input_ids)}) and labels ({len(labels)}) differ in length")
    if len(input_ids) <= max_length:
        return {"input_ids": list(input_ids), "labels": list(labels)}
    prompt_length = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    reserved = min(len(labels) - prompt_length, min_response_tokens, max_length)
    start = prompt_length - min(prompt_length, max_length - reserved)
    return {"input_ids": list(input_ids[start : start + max_length]), "labels": list(labels[start : start + max_length])}


def pack_examples(
    examples: list[dict],
    max_length: int,
    pad_token_id: int,
    min_response_tokens: int = 16,
) -> tuple[list[dict], dict]:
    """Packed sequences and a report {examples, truncated, dropped_no_response, sequences, tokens, fill}.

    `fill` is the fraction of non-padding tokens; examples == packed + dropped_no_response.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    fitted, truncated, dropped = [], 0, 0
    for example in examples:
        cut = truncate_example(example, max_length, min_response_tokens)
        truncated += len(cut["input_ids"]) < len(example["input_ids"])
        # Only tokens after the first one can be scored once packed.
        if all(label == IGNORE_INDEX for label in cut["labels"][1:]):
            dropped += 1
        else:
            fitted.append(cut)

    # Best-fit decreasing; `open_bins` is sorted by (room left, bin index).
    bins: list[list[int]] = []
    open_bins: list[tuple[int, int]] = []
    for index in sorted(range(len(fitted)), key=lambda i: (-len(fitted[i]["input_ids"]), i)):
        length = len(fitted[index]["input_ids"])
        at = bisect.bisect_left(open_bins, (length, -1))
        if at < len(open_bins):
            room, bin_index = open_bins.pop(at)
        else:
            room, bin_index = max_length, len(bins)
            bins.append([])
        bins[bin_index].append(index)
        if room - length > 0:
            bisect.insort(open_bins, (room - length, bin_index))

    sequences = []
    for members in sorted((sorted(b) for b in bins), key=lambda b: b[0]):
        input_ids, labels, position_ids, segment_ids = [], [], [], []
        for segment, index in enumerate(members, start=1):
            ids = fitted[index]["input_ids"]
            input_ids += ids
            labels += [IGNORE_INDEX] + fitted[index]["labels"][1:]
            position_ids += range(len(ids))
            segment_ids += [segment] * len(ids)
        padding = max_length - len(input_ids)
        sequences.append({
            "input_ids": input_ids + [pad_token_id] * padding,
            "labels": labels + [IGNORE_INDEX] * padding,
            "position_ids": position_ids + [0] * padding,
            "segment_ids": segment_ids + [0] * padding,
        })
    tokens = sum(len(f["input_ids"]) for f in fitted)
    report = {
        "examples": len(examples),
        "truncated": truncated,
        "dropped_no_response": dropped,
        "sequences": len(sequences),
        "tokens": tokens,
        "fill": tokens / (len(sequences) * max_length) if sequences else 0.0,
    }
    return sequences, report


def block_diagonal_attention_mask(segment_ids, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A (batch, 1, seq, seq) causal mask letting a token see only earlier tokens of its own segment.

    `segment_ids` is (batch, seq) or (seq,), as from `pack_examples`. Padding (segment 0) sees
    earlier padding only, so no row is fully masked. `dtype=torch.bool` gives True = attend (SDPA
    only); a float dtype (default torch.float32) gives an additive mask, 0 or the dtype's minimum
    (eager and SDPA).
    """
    # torch is imported here, not with the module: packing runs in Ray Data workers (and pajama.sft is
    # imported by the data stage's), which would each pay seconds for an import they never use.
    import torch

    dtype = torch.float32 if dtype is None else dtype
    segments = torch.as_tensor(segment_ids)
    if segments.dim() == 1:
        segments = segments.unsqueeze(0)
    length = segments.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    allowed = allowed[:, None, :, :]
    if dtype == torch.bool:
        return allowed
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)
