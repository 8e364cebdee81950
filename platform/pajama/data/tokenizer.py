"""Train a byte-level BPE tokenizer with GPT-NeoX's special tokens, or load a Hugging Face one.

GPT-NeoX-20B (the RedPajama-INCITE tokenizer) is a byte-level BPE whose `<|endoftext|>` (id 0)
is BOS, EOS and UNK and whose `<|padding|>` is id 1; a trained tokenizer keeps that layout so
models trained on either behave the same way for generation and padding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EOD = "<|endoftext|>"
PAD = "<|padding|>"


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOD, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # transformers (and with it torch) is imported where it is used: Ray workers import this
    # module for the data stage's batch functions, which would pay seconds each for nothing.
    from transformers import GPTNeoXTokenizerFast

    return GPTNeoXTokenizerFast(tokenizer_object=tok, bos_token=EOD, eos_token=EOD, unk_token=EOD,
                                pad_token=PAD, add_bos_token=False, add_eos_token=False)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerFast:
    """A hub name (downloaded once, for users online) or a local directory; never remote code."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = PAD if PAD in tok.get_vocab() else tok.eos_token
    return tok
