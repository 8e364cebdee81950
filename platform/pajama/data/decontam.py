"""Drop pretraining documents that share a word n-gram with evaluation data.

Benchmark text that sits in the pretraining corpus inflates the scores the evaluate stage reports.
As GPT-3 and lm-evaluation-harness's decontamination do, a document is contaminated when it shares
one word 13-gram (`data.decontamination.ngram`) with any evaluation example; it is dropped with the
reason `decontamination`, counted per slice like every other drop reason and kept in quarantine.
Text is normalised as for the fine-tuning sets (`pajama.sft.decontam.normalized_words`).

The evaluation data is JSON Lines (or JSON arrays) of records, `data.decontamination.against`;
the strings of a record are read in order as one text (question, then choices, passage, answer),
so that a question quoted with its choices is found although each alone is shorter than n words. The n-grams are hashed to
64 bits (BLAKE2b, stable across processes: the driver builds the set, the workers test against it).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from pajama.config import resolve_path
from pajama.sft.decontam import ngrams

REASON = "decontamination"


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _records(path: str) -> Iterator:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        text = handle.read()
    if path.removesuffix(".gz").endswith(".json"):
        document = json.loads(text)
        yield from document if isinstance(document, list) else [document]
    else:
        yield from (json.loads(line) for line in text.splitlines() if line.strip())


def _hash(gram: tuple[str, ...]) -> int:
    return int.from_bytes(hashlib.blake2b(" ".join(gram).encode(), digest_size=8).digest(), "little")


def eval_ngram_hashes(paths: list[str], n: int) -> np.ndarray:
    """The sorted, distinct hashes of every word n-gram of the evaluation files."""
    hashes = {_hash(gram) for path in paths for file in sorted(glob.glob(resolve_path(path)))
              for record in _records(file) for gram in ngrams(" ".join(_strings(record)), n)}
    return np.array(sorted(hashes), dtype=np.uint64)


def mark_contaminated(batch: pa.Table, hashes: np.ndarray, n: int) -> pa.Table:
    """Kept documents that share an n-gram with the evaluation data: keep false, drop_reason set."""
    keep = batch.column("keep").to_pylist()
    reasons = batch.column("drop_reason").to_pylist()
    texts = batch.column("text").to_pylist()
    for i, text in enumerate(texts):
        if keep[i] and text:
            grams = np.fromiter((_hash(gram) for gram in ngrams(text, n)), dtype=np.uint64)
            if grams.size and np.isin(grams, hashes, assume_unique=False).any():
                keep[i], reasons[i] = False, REASON
    batch = batch.set_column(batch.schema.get_field_index("keep"), "keep", pa.array(keep, pa.bool_()))
    return batch.set_column(batch.schema.get_field_index("drop_reason"), "drop_reason", pa.array(reasons, pa.string()))
