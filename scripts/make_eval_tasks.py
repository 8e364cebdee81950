"""Generate the bundled lm-evaluation-harness tasks' data from the held-out fine-tuning questions.

Reads platform/pajama/resources/sft/eval.jsonl (Python stdlib questions on modules and reference
topics that the instruct and chat sets never mention, and that they are decontaminated against)
and writes, beside the task YAMLs in platform/pajama/resources/eval_tasks/ (or --out):

* stdlib_mc.jsonl: four-way multiple choice. Each question's answer is the first sentence of its
  reference response; the three distractors are those of other questions of the same kind
  (function, class, module or reference-topic docs), so every choice reads like an answer.
* stdlib_lambada.jsonl: LAMBADA-style last-word prediction on the reference responses that are
  prose of eight words or more: `text` is the response, the task scores its last word.

The output is a pure function of eval.jsonl: every choice uses `random.Random(SEED)`.

Usage: python scripts/make_eval_tasks.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import defaultdict
from pathlib import Path

SEED = 20230505  # RedPajama-INCITE release date, as scripts/make_sft_data.py
RESOURCES = Path(__file__).resolve().parents[1] / "platform" / "pajama" / "resources"
EVAL_SET = RESOURCES / "sft" / "eval.jsonl"
OUT_DIR = RESOURCES / "eval_tasks"
# Signatures are code, not prose: neither a fair distractor nor a sentence with a last word.
PROSE_TASKS = ("stdlib_function_doc", "stdlib_class_doc", "stdlib_module_purpose", "python_reference_topic")
CHOICES = 4
# A choice is the answer's first sentence, at most this long: choices of like length (a long one
# would stand out), and each fits a tiny model's 256-token context even one byte a token.
MAX_CHOICE_CHARS = 160
MIN_LAMBADA_WORDS = 8


def first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]


def multiple_choice(rows: list[dict], rng: random.Random) -> list[dict]:
    answers = {row["prompt"]: first_sentence(row["response"]) for row in rows}
    by_task = defaultdict(set)
    for row in rows:
        if len(answers[row["prompt"]]) <= MAX_CHOICE_CHARS:
            by_task[row["task"]].add(answers[row["prompt"]])
    questions = []
    for row in rows:
        answer = answers[row["prompt"]]
        others = sorted(by_task[row["task"]] - {answer})
        if answer not in by_task[row["task"]] or len(others) < CHOICES - 1:
            continue
        choices = rng.sample(others, CHOICES - 1) + [answer]
        rng.shuffle(choices)
        questions.append({"question": row["prompt"], "choices": choices, "label": choices.index(answer),
                          "kind": row["task"]})
    return questions


def last_word_passages(rows: list[dict]) -> list[dict]:
    passages = []
    for row in rows:
        # The sentence as prose, without its final punctuation: the target is a bare word.
        text = row["response"].strip().rstrip(".!?:;,")
        words = text.split(" ")
        if len(words) >= MIN_LAMBADA_WORDS and re.fullmatch(r"[A-Za-z]+", words[-1]):
            passages.append({"text": text, "kind": row["task"]})
    return passages


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    print(f"{path}: {len(rows)} rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    rows = [json.loads(line) for line in EVAL_SET.read_text().splitlines() if line.strip()]
    rows = [row for row in rows if row["task"] in PROSE_TASKS]
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "stdlib_mc.jsonl", multiple_choice(rows, random.Random(SEED)))
    write_jsonl(args.out / "stdlib_lambada.jsonl", last_word_passages(rows))


if __name__ == "__main__":
    main()
