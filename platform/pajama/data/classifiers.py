"""fastText quality classifiers: RedPajama-V2's `rps_doc_ml_wikiref_score`, `rps_doc_ml_palm_score` and
`rps_doc_ml_wikipedia_score` (RPv2: app/src/core/quality_signals/classifiers.py, artifacts/ft_trainer.py).

What follows RPv2 exactly:
- a classifier is a fastText supervised model, `__label__<target>` (Wikipedia references for wikiref;
  books, OpenWebText and Wikipedia for palm; Wikipedia for wikipedia) against `__label__cc` (the web slice);
- training data as ft_trainer.py writes it: samples_per_class // (number of positive sources) texts from
  each positive source, then as many negatives as positives were found, each line `<label> <text>`, the
  lines shuffled, then fastText's train_supervised with its defaults (lr 0.1, dim 100, ws 5, epoch 5,
  minCount 1, wordNgrams 1, softmax loss, no subwords);
- the input text of training and scoring is " ".join(text.splitlines()).strip();
- score = P(high quality): 1 - p when the top label is `__label__cc`, else p; null for an empty text (a
  whitespace-only text is still scored, as in RPv2); rounded to 8 decimals.

What differs, and why:
- training runs on `floret` (Explosion's fork of fastText, same supervised algorithm and defaults), because
  the installed `fasttext` module is `fasttext-predict`, which can only load and predict, and the full
  `fasttext` wheels would install a second, clashing `fasttext` module. floret's .bin has two int32 header
  fields more than fastText's (mode and hashCount, after maxn); the saved model drops them, so the file is
  a plain fastText .bin, loaded and scored with `fasttext.load_model` (floret's own predict breaks under
  numpy 2 and is never used).
- the shuffle is a seeded permutation (numpy's default_rng(seed)) instead of `shuf`, and training uses one
  thread and the same seed (RPv2: fastText's default of cpu_count - 1 threads), so that the same inputs give
  byte-identical models.
- scoring predicts one text at a time: fasttext-predict's batch predict (a list of texts) returns labels
  without probabilities, so it cannot give the score.
"""

from __future__ import annotations

import functools
import itertools
import mmap
import shutil
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

import fasttext
import numpy as np

CC_LABEL = "__label__cc"  # RPv2's CCNET_LABEL: the negative (web) class
PRECISION = 8  # RPv2 rounds its signals to 8 decimals

# fastText's .bin header: magic and version, then the int32 args dim, ws, epoch, minCount, neg, wordNgrams,
# loss, model, bucket, minn, maxn; floret inserts int32 mode and hashCount right after maxn.
_FASTTEXT_MAGIC = 793712314
_FASTTEXT_VERSION = 12
_FLORET_EXTRA_FIELDS_AT = 4 * 13
_FLORET_FASTTEXT_MODE = 1  # floret's mode_name.fasttext: plain fastText hashing, what fasttext can load

Classifier = fasttext.FastText._FastText  # what fasttext.load_model returns


def classifier_input(text: str) -> str:
    """The text a classifier sees: lines joined by single spaces, outer whitespace stripped (RPv2)."""
    return " ".join(text.splitlines()).strip()


def train_classifier(
    positives: dict[str, Iterable[str]],
    negatives: Iterable[str],
    target_label: str,
    out_path: Path,
    samples_per_class: int,
    seed: int,
    epoch: int = 5,
) -> dict:
    """Trains `__label__<target_label>` (texts of every positive source) against `__label__cc` (negatives)
    as RPv2's ft_trainer does, and writes a fastText .bin to `out_path`. `target_label` is the bare name
    ("wikipedia", not "__label__wikipedia"); every iterable is read only as far as its share. `epoch`:
    fastText's default (5), which RPv2 trained with on 75,000 texts a class; a small corpus needs more.

    Returns the counts used: {"positives": {source: texts taken}, "negatives": texts taken}.
    """
    if not positives:
        raise ValueError("train_classifier needs at least one positive source")
    positive_label = f"__label__{target_label}"
    if positive_label == CC_LABEL or not target_label or any(c.isspace() for c in target_label):
        raise ValueError(f"target_label {target_label!r} must be one word other than 'cc'")
    per_source = samples_per_class // len(positives)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as work:
        work_dir = Path(work)
        unshuffled, train_file = work_dir / "unshuffled.txt", work_dir / "train.txt"
        line_starts = [0]
        with open(unshuffled, "wb") as lines:
            taken = {
                source: _write_lines(itertools.islice(texts, per_source), positive_label, lines, line_starts)
                for source, texts in positives.items()
            }
            total_positives = sum(taken.values())
            taken_negatives = _write_lines(
                itertools.islice(negatives, total_positives), CC_LABEL, lines, line_starts
            )
        if total_positives + taken_negatives == 0:
            raise ValueError("no training texts: every source was empty")
        _write_shuffled(unshuffled, line_starts, train_file, seed)
        _train_fasttext_bin(train_file, out_path, seed, epoch, work_dir / "floret.bin")
    return {"positives": taken, "negatives": taken_negatives}


@functools.cache
def _load_classifier_file(resolved_path: str) -> Classifier:
    return fasttext.load_model(resolved_path)


def load_classifier(path: Path) -> Classifier:
    """The fastText model at `path`, loaded once per process."""
    return _load_classifier_file(str(Path(path).resolve()))


def quality_scores(model: Classifier, texts: list[str]) -> list[float | None]:
    """P(high quality) per text: 1 - p if the top label is __label__cc, else p; None for an empty text."""
    scores: list[float | None] = []
    for text in texts:
        if not text:
            scores.append(None)
            continue
        (label,), (probability,) = model.predict(classifier_input(text), k=1)
        high_quality = 1 - probability if label == CC_LABEL else probability
        scores.append(round(float(high_quality), PRECISION))
    return scores


def _write_lines(texts: Iterable[str], label: str, out, line_starts: list[int]) -> int:
    """Writes `<label> <classifier input>` lines, records where each next line starts; returns the count."""
    written = 0
    for text in texts:
        line = f"{label} {classifier_input(text)}\n".encode("utf-8")
        out.write(line)
        line_starts.append(line_starts[-1] + len(line))
        written += 1
    return written


def _write_shuffled(source: Path, line_starts: list[int], destination: Path, seed: int) -> None:
    """Copies the lines of `source` to `destination` in a seeded random order, one line in memory at a time."""
    order = np.random.default_rng(seed).permutation(len(line_starts) - 1)
    with open(source, "rb") as unshuffled, open(destination, "wb") as shuffled:
        with mmap.mmap(unshuffled.fileno(), 0, access=mmap.ACCESS_READ) as lines:
            for index in order:
                shuffled.write(lines[line_starts[index] : line_starts[index + 1]])


def _train_fasttext_bin(train_file: Path, out_path: Path, seed: int, epoch: int, floret_bin: Path) -> None:
    """fastText train_supervised defaults but `epoch` on floret (one thread, seeded), saved as a fastText .bin."""
    import floret  # only training needs it (not a dependency of scoring)

    floret.train_supervised(input=str(train_file), epoch=epoch, thread=1, seed=seed, verbose=0).save_model(
        str(floret_bin))
    with open(floret_bin, "rb") as floret_file, open(out_path, "wb") as fasttext_file:
        header = floret_file.read(_FLORET_EXTRA_FIELDS_AT + 8)
        magic, version = struct.unpack_from("<ii", header)
        mode, hash_count = struct.unpack_from("<ii", header, _FLORET_EXTRA_FIELDS_AT)
        if (magic, version) != (_FASTTEXT_MAGIC, _FASTTEXT_VERSION) or mode != _FLORET_FASTTEXT_MODE:
            raise RuntimeError(f"unexpected floret model header: {magic=} {version=} {mode=} {hash_count=}")
        fasttext_file.write(header[:_FLORET_EXTRA_FIELDS_AT])
        shutil.copyfileobj(floret_file, fasttext_file)
