"""fastText quality classifiers trained on a small synthetic corpus: RPv2's sampling, score semantics and
a model file that the real fastText library loads."""

import random
import struct
from collections.abc import Iterator
from pathlib import Path

import fasttext
import pytest
from pajama.data.classifiers import CC_LABEL, classifier_input, load_classifier, quality_scores, train_classifier

ENCYCLOPEDIA = "the river empire century dynasty treaty physics chemistry theorem orbit cathedral".split()
NOVEL = "she whispered softly heart moonlight carriage letter sorrow garden promise dawn".split()
SPAM = "click buy cheap casino bonus login discount free deals subscribe unlimited".split()


def texts(vocabulary: list[str], count: int, seed: int) -> Iterator[str]:
    """`count` texts of 30 words from `vocabulary`, a line break every 10 words (a generator, as a reader)."""
    rng = random.Random(seed)
    for _ in range(count):
        words = rng.choices(vocabulary, k=30)
        yield "\n".join(" ".join(words[i : i + 10]) for i in range(0, 30, 10))


def train(out_path: Path, seed: int = 7, samples_per_class: int = 301, books: int = 400) -> dict:
    # 301 // 2 sources = 150 texts per positive source (RPv2: samples_per_class // len(target_data))
    return train_classifier(
        positives={"wikipedia": texts(ENCYCLOPEDIA, 400, 1), "books": texts(NOVEL, books, 2)},
        negatives=texts(SPAM, 1000, 3),
        target_label="wiki",
        out_path=out_path,
        samples_per_class=samples_per_class,
        seed=seed,
    )


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("classifier") / "wiki.model.bin"
    assert train(path) == {"positives": {"wikipedia": 150, "books": 150}, "negatives": 300}
    return path


def test_samples_split_over_sources_and_negatives_match_positives(tmp_path: Path):
    # a source with fewer texts than its share gives what it has; negatives = positives found (150 + 40)
    counts = train(tmp_path / "m.bin", books=40)
    assert counts == {"positives": {"wikipedia": 150, "books": 40}, "negatives": 190}


def test_scores_separate_the_classes(model_path: Path):
    model = load_classifier(model_path)
    positive = list(texts(ENCYCLOPEDIA, 5, 11)) + list(texts(NOVEL, 5, 12))
    negative = list(texts(SPAM, 5, 13))
    scores = quality_scores(model, positive + negative)
    assert all(score > 0.9 for score in scores[:10]), scores
    assert all(score < 0.1 for score in scores[10:]), scores
    assert all(score == round(score, 8) for score in scores)


def test_fasttext_loads_the_model_and_the_score_follows_its_top_label(model_path: Path):
    model = fasttext.load_model(str(model_path))
    positive, negative = next(texts(ENCYCLOPEDIA, 1, 21)), next(texts(SPAM, 1, 22))
    (label,), (probability,) = model.predict(classifier_input(positive))
    assert label == "__label__wiki"
    assert quality_scores(model, [positive]) == [round(probability, 8)]
    (label,), (probability,) = model.predict(classifier_input(negative))
    assert label == CC_LABEL
    assert quality_scores(model, [negative]) == [round(1 - probability, 8)]


def test_model_file_is_a_fasttext_bin(model_path: Path):
    # magic, version, then dim ws epoch minCount neg wordNgrams loss model bucket minn maxn (fastText's
    # train_supervised defaults: softmax = 3, supervised = 3, no subwords so no buckets), then lrUpdateRate
    # 100 and t 1e-4, with floret's mode and hashCount fields removed
    header = model_path.read_bytes()[:64]
    assert struct.unpack_from("<13i", header) == (793712314, 12, 100, 5, 5, 1, 5, 1, 3, 3, 0, 0, 0)
    assert struct.unpack_from("<id", header, 52) == (100, 1e-4)


def test_training_is_deterministic(tmp_path: Path, model_path: Path):
    train(tmp_path / "again.bin")
    train(tmp_path / "other_seed.bin", seed=8)
    assert (tmp_path / "again.bin").read_bytes() == model_path.read_bytes()
    assert (tmp_path / "other_seed.bin").read_bytes() != model_path.read_bytes()


def test_input_text_and_empty_texts(model_path: Path):
    model = load_classifier(model_path)
    assert classifier_input("  cheap casino\nbonus \r\n login  ") == "cheap casino bonus   login"
    # lines are joined as the classifier sees them; an empty text is null, a blank one is scored
    one_line, two_lines, empty, blank = quality_scores(model, ["cheap casino bonus", "cheap casino\nbonus", "", " \n "])
    assert one_line == two_lines
    assert empty is None
    assert 0.0 <= blank <= 1.0


def test_models_are_loaded_once_per_path(model_path: Path):
    same_file = model_path.parent / ".." / model_path.parent.name / model_path.name
    assert load_classifier(model_path) is load_classifier(same_file)


def test_cc_is_not_a_target_label(tmp_path: Path):
    with pytest.raises(ValueError, match="target_label"):
        train_classifier({"web": ["x"]}, ["y"], "cc", tmp_path / "m.bin", 10, 0)
