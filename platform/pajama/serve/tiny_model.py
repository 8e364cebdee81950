"""A tiny random-weight GPT-NeoX chat model built locally, for Serve tests and benchmarks.

Nothing is downloaded: a byte-level BPE tokenizer is trained on a few lines of Pajama chat text
with `tokenizers`, and the model is a freshly initialised `GPTNeoXForCausalLM`, both written with
`save_pretrained` (safetensors) so they load exactly like a trained Pajama checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

_CORPUS = [
    "<human>: Hello, who are you?\n<bot>: I am Pajama, an open assistant.",
    "<human>: What is the capital of France?\n<bot>: The capital of France is Paris.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}",
]


def make_tiny_model(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    context_length: int = 256,
    vocab_size: int = 512,
    model_vocab_size: int | None = None,
    intermediate_size: int | None = None,
    chat_template: str | None = None,
    suppress_eos: bool = False,
    seed: int = 0,
) -> Path:
    """Write a tiny GPT-NeoX model + tokenizer to `out_dir` and return it.

    `suppress_eos` zeroes the EOS row of the output layer: its logit is then 0 while the max of the
    other (random, zero-mean) logits is almost surely positive, so greedy decoding never ends early
    and outputs have a predictable length (tests, throughput benchmarks). `model_vocab_size` gives
    the model a larger vocabulary than the tokenizer's (a real output layer's cost, for benchmarks
    of a preset's shape); the rows past the tokenizer's are zeroed the same way, so greedy decoding
    never picks a token the tokenizer cannot decode.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_CORPUS * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|padding|>",
        model_max_length=context_length,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if model_vocab_size is not None and model_vocab_size < len(tokenizer):
        raise ValueError(f"model_vocab_size {model_vocab_size} is smaller than the tokenizer's {len(tokenizer)}")
    config = GPTNeoXConfig(
        vocab_size=model_vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=context_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config)
    with torch.no_grad():
        if suppress_eos:
            model.embed_out.weight[tokenizer.eos_token_id] = 0.0
        model.embed_out.weight[len(tokenizer):] = 0.0
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
