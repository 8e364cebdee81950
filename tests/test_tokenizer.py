"""The data stage's encoder (pajama.data.tokenizer.BatchEncoder): tiktoken gives the ids of `tokenizers` for
the trained byte-level BPE and for one shaped like GPT-NeoX-20B's (NFC, whitespace runs as added tokens, merges
as "a b" strings) on the whole bundled corpus; other tokenizers stay on `tokenizers`; a document that tiktoken
encodes differently stops the packing with a message that says what to set."""

from __future__ import annotations

import gzip
import json
import string

import pyarrow as pa
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from pajama.config import RESOURCES_DIR
from pajama.data.stage import ENCODER_CHECK_FRACTION, _assign_shards, hash_unit
from pajama.data.tokenizer import PROBE_TEXTS, BatchEncoder, train_bpe

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
    with pytest.raises(ValueError, match="engine must be 'auto' or 'huggingface'"):
        BatchEncoder(tokenizer.to_str(), "tiktoken")


def test_a_document_tiktoken_encodes_differently_stops_the_packing(trained_json):
    # A vocabulary entry that no merge builds: `tokenizers` spells the word out with merges, tiktoken takes a
    # word found whole in the vocabulary as one token. No probe text holds the word, so tiktoken is chosen.
    spec = json.loads(trained_json)
    spec["model"]["vocab"]["zqxjv"] = len(spec["model"]["vocab"])
    tokenizer_json = json.dumps(spec)
    encoder = BatchEncoder(tokenizer_json)
    assert encoder.engine == "tiktoken"
    assert encoder.mismatch(["a normal text", "zqxjv"]) == 1
    salt = "0"
    checked = next(f"doc-{i}" for i in range(10_000) if hash_unit(f"doc-{i}", salt + ":encoder") < ENCODER_CHECK_FRACTION)
    batch = pa.table({"doc_id": ["doc-a", checked], "slice": ["web", "web"], "text": ["a normal text", "zqxjv"]})
    kwargs = dict(eval_fraction=0.0, weights=None, train_shards=1, eval_shards=1, salt=salt)
    with pytest.raises(ValueError, match=f"document '{checked}'.*set data.tokenizer.encoder=huggingface"):
        _assign_shards(batch, tokenizer_json=tokenizer_json, encoder="auto", **kwargs)
    packed = _assign_shards(batch, tokenizer_json=tokenizer_json, encoder="huggingface", **kwargs)
    assert packed.column("input_ids").to_pylist() == reference_ids(tokenizer_json, ["a normal text", "zqxjv"])


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
