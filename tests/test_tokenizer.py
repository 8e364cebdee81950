"""The data stage's encoder (pajama.data.tokenizer.BatchEncoder): tiktoken gives the ids of `tokenizers` for
the trained byte-level BPE and for one shaped like GPT-NeoX-20B's (NFC, whitespace runs as added tokens, merges
as "a b" strings) on the whole bundled corpus; other tokenizers stay on `tokenizers`; a document that tiktoken
encodes differently (in a checked sample) stops the packing with a message that says what to set."""

from __future__ import annotations

import gzip
import json
import random
import string
import unicodedata

import pyarrow as pa
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from pajama.config import RESOURCES_DIR
from pajama.data.stage import ENCODER_CHECK_FRACTION, _assign_shards, _check_encoder, hash_unit
from pajama.data.tokenizer import PROBE_TEXTS, BatchEncoder, _bytes_to_unicode, train_bpe

CODE = "def f(x):\n" + "".join(" " * n + f"line{n} = {n}  # {' ' * n}x\n" for n in range(1, 40)) + "\t\tend\n"


@pytest.fixture(scope="module")
def corpus_texts() -> list[str]:
    return [json.loads(line)["text"] for path in sorted((RESOURCES_DIR / "corpus").glob("*.jsonl.gz"))
            for line in gzip.open(path, "rt")]


@pytest.fixture(scope="module")
def trained_json(corpus_texts) -> str:
    return train_bpe(corpus_texts[::3], vocab_size=1024).backend_tokenizer.to_str()


def reference_ids(tokenizer_json: str, texts: list[str]) -> list[list[int]]:
    tokenizer = Tokenizer.from_str(tokenizer_json)
    return [tokenizer.encode(text, add_special_tokens=False).ids for text in texts]


def neox_shaped(tokenizer_json: str) -> str:
    """The trained tokenizer laid out as GPT-NeoX-20B's tokenizer.json: an NFC normalizer, runs of 2 to 24
    spaces as normalized, non-special added tokens after the vocabulary, merges written as "a b"."""
    spec = json.loads(tokenizer_json)
    spec["normalizer"] = {"type": "NFC"}
    spec["model"]["merges"] = [" ".join(pair) for pair in spec["model"]["merges"]]
    next_id = len(spec["model"]["vocab"])
    for run in range(2, 25):
        spec["added_tokens"].append({"id": next_id, "content": " " * run, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": True, "special": False})
        next_id += 1
    return json.dumps(spec)


@pytest.mark.parametrize("shape", ["trained", "neox"])
def test_tiktoken_gives_the_ids_of_tokenizers_on_the_bundled_corpus(shape, trained_json, corpus_texts):
    tokenizer_json = trained_json if shape == "trained" else neox_shaped(trained_json)
    encoder = BatchEncoder(tokenizer_json)
    assert encoder.engine == "tiktoken"
    texts = [*corpus_texts, *PROBE_TEXTS, CODE, "e\u0301t\u00e9  \u00e9" * 3, ""]
    ids = encoder.encode(texts)
    assert ids == reference_ids(tokenizer_json, texts)
    if shape == "neox":  # the added whitespace tokens were used, as `tokenizers` uses them
        assert max(ids[texts.index(CODE)]) >= len(json.loads(trained_json)["model"]["vocab"])
    assert BatchEncoder(tokenizer_json, "huggingface").engine == "huggingface"


def test_a_tokenizer_tiktoken_cannot_reproduce_stays_on_tokenizers(corpus_texts):
    # a BPE on whitespace-split words: not GPT-2's byte-level pre-tokenizer
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(string.printable)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    encoder = BatchEncoder(tokenizer.to_str())
    assert encoder.engine == "huggingface"
    assert encoder.encode(corpus_texts[:50]) == reference_ids(tokenizer.to_str(), corpus_texts[:50])
    with pytest.raises(ValueError, match="encoder must be 'auto' or 'huggingface'"):
        BatchEncoder(tokenizer.to_str(), "tiktoken")


def test_a_vocabulary_entry_that_no_merge_builds_keeps_tokenizers(trained_json):
    # `tokenizers` spells "zqxjv" out with its merges; tiktoken would take the word found whole in the
    # vocabulary as one token. The encoder sees it in the vocabulary and stays on `tokenizers`.
    spec = json.loads(trained_json)
    spec["model"]["vocab"]["zqxjv"] = len(spec["model"]["vocab"])
    encoder = BatchEncoder(json.dumps(spec))
    assert encoder.engine == "huggingface"
    assert encoder.encode(["a zqxjv"]) == reference_ids(json.dumps(spec), ["a zqxjv"])


def test_a_document_tiktoken_encodes_differently_stops_the_packing(trained_json, corpus_texts):
    """No tokenizer at hand gets past the encoder's checks and still encodes differently (the bundled corpus,
    every Unicode code point in context and a million random token concatenations agree), so the difference
    is made: the tiktoken encoding of the trained tokenizer checked against another trained tokenizer."""
    encoder = BatchEncoder(trained_json)
    encoder._reference = Tokenizer.from_str(train_bpe(corpus_texts[1::3], vocab_size=600).backend_tokenizer.to_str())
    salt = "0"
    sampled = [f"doc-{i}" for i in range(10_000)
               if hash_unit(f"doc-{i}", salt + ":encoder") < ENCODER_CHECK_FRACTION]
    not_sampled = [f"doc-{i}" for i in range(10) if f"doc-{i}" not in sampled]
    texts = corpus_texts[:3]
    _check_encoder(encoder, texts, not_sampled[:3], salt)  # nothing sampled, nothing compared
    with pytest.raises(ValueError, match=f"document '{sampled[0]}'.*set data.tokenizer.encoder=huggingface"):
        _check_encoder(encoder, texts, [not_sampled[0], sampled[0], not_sampled[1]], salt)
    batch = pa.table({"doc_id": [sampled[0]], "slice": ["web"], "text": texts[:1]})
    packed = _assign_shards(batch, tokenizer_json=trained_json, encoder="huggingface", eval_fraction=0.0,
                            weights=None, train_shards=1, eval_shards=1, salt=salt)
    assert packed.column("input_ids").to_pylist() == reference_ids(trained_json, texts[:1])


def test_the_encoder_setting_is_left_out_of_the_fingerprints(tmp_path):
    """data.tokenizer.encoder changes how the ids are computed, not what they are: the data stage and what
    follows keep their fingerprints (a nested section's NOT_FINGERPRINTED field), where the vocabulary size
    changes them."""
    from pajama.config import load_config
    from pajama.dag import plan

    def fingerprints(*overrides: str) -> dict[str, str]:
        cfg = load_config("tiny", [f"project.storage={tmp_path / 'storage'}", *overrides])
        return {step.stage: step.fingerprint for step in plan(cfg)}

    default = fingerprints()
    assert fingerprints("data.tokenizer.encoder=huggingface") == default
    resized = fingerprints("data.tokenizer.vocab_size=2048")
    assert resized["signals"] == default["signals"] and resized["data"] != default["data"]


def test_every_code_point_and_random_token_sequences_encode_the_same(trained_json):
    """Where the two could part: each assigned Unicode code point beside letters, a space, itself, a quote and a
    digit (the pre-tokenizer regexes of `tokenizers` (Oniguruma) and tiktoken (fancy-regex) class every one
    alike), and texts made of random runs of vocabulary tokens (neighbours the merges may not expect)."""
    encoder = BatchEncoder(trained_json)
    assert encoder.engine == "tiktoken"
    # the assigned ones (unassigned and private-use code points are no letter, number or space to either)
    code_points = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Co", "Cs")]
    for start in range(0, len(code_points), 8192):
        texts = [f"a{c}b {c}{c}'1{c}" for c in code_points[start:start + 8192]]
        assert encoder.mismatch(texts) is None
    to_byte = {char: byte for byte, char in _bytes_to_unicode().items()}
    tokens = [bytes(to_byte[c] for c in token) for token in json.loads(trained_json)["model"]["vocab"]
              if token not in ("<|endoftext|>", "<|padding|>")]
    rng = random.Random(0)
    texts = [b"".join(rng.choices(tokens, k=rng.randint(1, 12))).decode("utf-8", errors="ignore")
             for _ in range(20_000)]
    assert encoder.mismatch(texts) is None
