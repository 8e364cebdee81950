"""Decontamination: planted 10-gram overlaps are dropped, 9-gram near misses are kept."""

from collections import Counter

from pajama.sft.decontam import eval_ngrams, normalized_words, shares_ngram

EVAL_TEXT = "The quick brown fox jumps over the lazy dog near the quiet river bank today."


def ex(prompt: str, response: str, task: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], "task": task, "source": "t"}


def decontaminate(examples: list[dict], evaluation: list[dict], n: int = 10) -> tuple[list[dict], dict[str, int]]:
    """(kept examples, {task: dropped count}), as the fine-tuning stages drop them."""
    grams = eval_ngrams(evaluation, n)
    dropped = [e for e in examples if shares_ngram(e, grams, n)]
    return [e for e in examples if e not in dropped], dict(Counter(e["task"] for e in dropped))


def test_normalisation():
    assert normalized_words("Don't  use json.dumps()!\nOK?") == ["dont", "use", "jsondumps", "ok"]
    assert normalized_words("ＦＵＬＬ width") == ["full", "width"]


def test_planted_overlaps_are_dropped_and_near_misses_kept():
    words = EVAL_TEXT.split()
    evaluation = [ex("Describe the scene.", EVAL_TEXT, "eval_task")]
    examples = [
        # A 10-gram of the eval response inside a training prompt, in other case and punctuation.
        ex("Story: " + " ".join(words[2:12]).upper().replace(" ", ", ") + " -- continue it.", "ok", "stories"),
        # The same 10-gram in a response.
        ex("Say something.", "prefix words " + " ".join(words[3:13]) + " suffix", "stories"),
        # Only 9 consecutive words in common: kept.
        ex("Near miss.", " ".join(words[0:9]) + " cat " + " ".join(words[10:]), "stories"),
        # A 10-gram split across two turns is not an n-gram of either: kept.
        ex(" ".join(words[0:5]), " ".join(words[5:10]), "chat"),
        ex("Unrelated question about Python?", "An unrelated answer about json.dumps and friends here.", "python"),
        {"messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": " ".join(words[-10:])},
            {"role": "assistant", "content": "bye"},
        ], "task": "chat", "source": "t"},
    ]
    kept, report = decontaminate(examples, evaluation)
    assert report == {"stories": 2, "chat": 1}
    assert kept == [examples[2], examples[3], examples[4]]
    assert len(kept) + sum(report.values()) == len(examples)


def test_n_is_configurable():
    evaluation = [ex("a b c d e", "f g h", "e")]
    examples = [ex("x a b c y", "z", "t1"), ex("a b y", "z", "t2")]
    kept, report = decontaminate(examples, evaluation, n=3)
    assert kept == [examples[1]] and report == {"t1": 1}
    # Eval texts shorter than n words flag nothing.
    assert decontaminate(examples, evaluation, n=10) == (examples, {})
