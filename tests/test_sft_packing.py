"""Packing: truncation rules, loss masks across packed examples, and logits equal to unpacked ones."""

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from pajama.sft import IGNORE_INDEX, block_diagonal_attention_mask, pack_examples, truncate_example

PAD = 0


def example(prompt: list[int], response: list[int]) -> dict:
    return {"input_ids": prompt + response, "labels": [IGNORE_INDEX] * len(prompt) + response}


def test_short_examples_are_untouched():
    ex = example([5, 6], [7, 8])
    assert truncate_example(ex, max_length=8) == ex


def test_long_prompt_loses_its_head_to_leave_room_for_the_response():
    ex = example(list(range(100, 120)), [1, 2, 3, 4, 5, 6])
    cut = truncate_example(ex, max_length=10, min_response_tokens=4)
    # 6 prompt tokens (the tail, next to the reply) + the first 4 reply tokens.
    assert cut["input_ids"] == [114, 115, 116, 117, 118, 119, 1, 2, 3, 4]
    assert cut["labels"] == [IGNORE_INDEX] * 6 + [1, 2, 3, 4]


def test_prompt_that_fits_is_kept_and_the_response_tail_is_cut():
    ex = example([10, 11, 12], list(range(1, 20)))
    cut = truncate_example(ex, max_length=8, min_response_tokens=4)
    assert cut["input_ids"] == [10, 11, 12, 1, 2, 3, 4, 5]
    assert cut["labels"] == [IGNORE_INDEX] * 3 + [1, 2, 3, 4, 5]


def test_short_response_reserves_only_its_own_length():
    ex = example(list(range(100, 120)), [1, 2])
    cut = truncate_example(ex, max_length=8, min_response_tokens=16)
    assert cut["input_ids"] == [114, 115, 116, 117, 118, 119, 1, 2]


def test_packing_keeps_examples_apart():
    examples = [
        example([11, 12, 13], [14, 15]),
        example([21, 22], [23, 24, 25, 26]),
        example([31], [32, 33]),
        example([41, 42, 43], []),  # no response: dropped
        example([51, 52, 53, 54, 55, 56, 57], [58, 59, 60, 61, 62, 63, 64, 65]),  # cut to 12 tokens
    ]
    sequences, report = pack_examples(examples, max_length=12, pad_token_id=PAD, min_response_tokens=4)
    assert report == {
        "examples": 5, "truncated": 1, "dropped_no_response": 1, "sequences": 3, "tokens": 5 + 6 + 3 + 12,
        "fill": pytest.approx(26 / 36),
    }
    X = IGNORE_INDEX
    # Best fit, longest first: 12 alone; 6 then 5 share a sequence; 3 no longer fits there.
    assert sequences == [
        {
            "input_ids": [11, 12, 13, 14, 15, 21, 22, 23, 24, 25, 26, PAD],
            "labels": [X, X, X, 14, 15, X, X, 23, 24, 25, 26, X],
            "position_ids": [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 0],
            "segment_ids": [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0],
        },
        {
            "input_ids": [31, 32, 33] + [PAD] * 9,
            "labels": [X, 32, 33] + [X] * 9,
            "position_ids": [0, 1, 2] + [0] * 9,
            "segment_ids": [1, 1, 1] + [0] * 9,
        },
        {
            "input_ids": list(range(51, 63)),
            "labels": [X] * 7 + [58, 59, 60, 61, 62],
            "position_ids": list(range(12)),
            "segment_ids": [1] * 12,
        },
    ]


def test_no_loss_crosses_examples_even_when_they_start_with_a_scored_token():
    examples = [example([], [1, 2, 3]), example([], [4, 5]), example([6], [7])]
    (sequence,), _ = pack_examples(examples, max_length=8, pad_token_id=PAD)
    labels, segments = sequence["labels"], sequence["segment_ids"]
    for i, label in enumerate(labels):
        if label != IGNORE_INDEX:
            # Position i is predicted from position i - 1: both must be the same example.
            assert i > 0 and segments[i] == segments[i - 1] > 0
    assert [label for label in labels if label != IGNORE_INDEX] == [2, 3, 5, 7]


def test_packing_is_deterministic_best_fit_decreasing():
    lengths = [7, 5, 4, 3, 3, 2, 2, 6, 2]
    # Example i: (n - 1) prompt tokens, then the single response token i + 1.
    examples = [example([100 + i] * (n - 1), [i + 1]) for i, n in enumerate(lengths)]
    sequences, report = pack_examples(examples, max_length=8, pad_token_id=PAD)
    assert sequences == pack_examples(examples, max_length=8, pad_token_id=PAD)[0]
    assert report["tokens"] == sum(lengths) and report["sequences"] == 5
    members = [[label - 1 for label in seq["labels"] if label != IGNORE_INDEX] for seq in sequences]
    assert members == [[0], [1, 3], [2, 4], [5, 7], [6, 8]]


def test_block_diagonal_mask():
    segments = torch.tensor([[1, 1, 2, 2, 2, 0]])
    allowed = block_diagonal_attention_mask(segments, dtype=torch.bool)[0, 0]
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(allowed, expected)
    additive = block_diagonal_attention_mask(segments[0])
    assert additive.shape == (1, 1, 6, 6) and additive.dtype == torch.float32
    assert torch.equal(additive[0, 0] == 0, expected)
    assert torch.all(additive[0, 0][~expected] == torch.finfo(torch.float32).min)


@pytest.fixture(scope="module")
def tiny_models():
    """The same random tiny GPT-NeoX with eager and with SDPA attention."""
    shape = dict(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, rotary_pct=0.5, hidden_dropout=0.0, attention_dropout=0.0,
    )
    torch.manual_seed(0)
    eager = GPTNeoXForCausalLM(GPTNeoXConfig(**shape, attn_implementation="eager")).eval()
    sdpa = GPTNeoXForCausalLM(GPTNeoXConfig(**shape, attn_implementation="sdpa")).eval()
    sdpa.load_state_dict(eager.state_dict())
    return {"eager": eager, "sdpa": sdpa}


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("mask", ["block_diagonal", "position_ids_only"])
def test_packed_logits_and_loss_equal_unpacked(tiny_models, implementation, mask):
    model = tiny_models[implementation]
    assert model.config._attn_implementation == implementation
    examples = [
        example([3, 4, 5, 6], [7, 8, 9]),
        example([10, 11], [12, 13, 14, 15, 16]),
        example([17, 18, 19], [20, 21]),
    ]
    sequences, report = pack_examples(examples, max_length=24, pad_token_id=PAD)
    assert report["sequences"] == 1
    seq = {k: torch.tensor([v]) for k, v in sequences[0].items()}
    if mask == "block_diagonal":
        kwargs = {"attention_mask": block_diagonal_attention_mask(seq["segment_ids"], dtype=model.dtype)}
    else:
        # transformers finds the examples from the restarting positions only without a KV cache.
        kwargs = {"use_cache": False}
    with torch.no_grad():
        packed = model(input_ids=seq["input_ids"], labels=seq["labels"], position_ids=seq["position_ids"], **kwargs)
        offset, total_loss, total_scored = 0, 0.0, 0
        for ex in examples:
            n = len(ex["input_ids"])
            alone = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]]))
            torch.testing.assert_close(packed.logits[0, offset : offset + n], alone.logits[0], rtol=1e-5, atol=1e-5)
            scored = sum(label != IGNORE_INDEX for label in ex["labels"][1:])
            total_loss += alone.loss.item() * scored
            total_scored += scored
            offset += n
    # The packed loss is the token-weighted mean of the examples' own losses.
    assert packed.loss.item() == pytest.approx(total_loss / total_scored, rel=1e-5)
