"""Instruction and chat data for supervised fine-tuning: loaders, prompt formats, packing, decontamination.

Pure functions over Python lists (no Ray here); the SFT stage maps them over its data.
"""

from pajama.sft.decontam import eval_ngrams, shares_ngram
from pajama.sft.formats import FORMATS, Examples, SFTDataError, load_examples, oasst1_conversations
from pajama.sft.packing import block_diagonal_attention_mask, pack_examples, truncate_example
from pajama.sft.templates import (
    CHAT_TEMPLATE,
    EOS_TOKEN,
    IGNORE_INDEX,
    INSTRUCT_TEMPLATE,
    render_chat,
    render_instruct,
    tokenize_example,
)

__all__ = [
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "FORMATS",
    "IGNORE_INDEX",
    "INSTRUCT_TEMPLATE",
    "Examples",
    "SFTDataError",
    "block_diagonal_attention_mask",
    "eval_ngrams",
    "load_examples",
    "oasst1_conversations",
    "pack_examples",
    "render_chat",
    "render_instruct",
    "shares_ngram",
    "tokenize_example",
    "truncate_example",
]
