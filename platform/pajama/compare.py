"""Base, instruct and chat side by side on a small generation check set, logged to the DAG run.

The check set (`resources/sft/checks.jsonl`) is a handful of held-out Python stdlib questions
taken from `eval.jsonl`, so the fine-tuning sets are decontaminated against them. Each model gets
every prompt in its own format (base: the raw prompt; instruct: ``Q: ...\\nA:``; chat:
``<human>: ...\\n<bot>:``) and answers greedily, stopping at EOS or where it starts the next user
turn. Each model's response loss on the reference answers, in the same format, sits beside its
generations. Plain transformers on the driver (a tiny model takes seconds); the result is cached
under the storage directory by the three models' fingerprints, so a reused DAG does not redo it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pajama import kinds
from pajama.config import RESOURCES_DIR
from pajama.sft import formats, templates

CHECKS = RESOURCES_DIR / "sft" / "checks.jsonl"
MAX_NEW_TOKENS = 48
TABLE_FILE = "evaluation/comparison.json"


def load_checks(path: Path = CHECKS) -> list[dict]:
    """The check prompts and their reference answers, as (user, assistant) message pairs."""
    return formats.load_examples("instruct_jsonl", str(path))


def _labelled(tokenizer, kind: str, example: dict) -> dict:
    """Token ids with labels on the reference answer (+EOS) only, in the model's own format."""
    if kind != "base":
        return templates.tokenize_example(tokenizer, example, kind)
    prompt, answer = (m["content"].strip() for m in example["messages"])
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(f" {answer}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": prompt_ids + answer_ids,
            "labels": [templates.IGNORE_INDEX] * len(prompt_ids) + answer_ids}


def _generate(model, tokenizer, texts: list[str], stops: tuple[str, ...], strip: bool) -> list[tuple[str, str]]:
    """Greedy continuations of `texts` in one batch, each cut at its first stop string (and with
    `strip`, trimmed of surrounding whitespace); (answer, finish_reason) per text."""
    tokenizer.padding_side = "left"  # new tokens follow every prompt directly
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt",
                      return_token_type_ids=False).to(model.device)
    width = batch["input_ids"].shape[1]
    budget = min(MAX_NEW_TOKENS, model.config.max_position_embeddings - width)
    if budget < 1:
        raise ValueError(f"the check prompts fill the model's whole context; shorten them in {CHECKS}")
    out = model.generate(**batch, max_new_tokens=budget, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, stop_strings=list(stops), tokenizer=tokenizer)
    results = []
    for row in out[:, width:].tolist():
        answer = tokenizer.decode(row, skip_special_tokens=True)
        cuts = [i for i in (answer.find(s) for s in stops) if i >= 0]
        stopped = bool(cuts) or tokenizer.eos_token_id in row
        answer = answer[: min(cuts)] if cuts else answer
        results.append((answer.strip() if strip else answer, "stop" if stopped else "length"))
    return results


def _response_losses(model, tokenizer, kind: str, checks: list[dict]) -> list[tuple[float, int]]:
    """(mean loss, token count) of each reference answer, scored in one right-padded batch with the
    training loop's own loss."""
    import contextlib

    import torch

    from pajama.train.loop import row_losses

    rows = [_labelled(tokenizer, kind, example) for example in checks]
    width = max(len(r["input_ids"]) for r in rows)
    pad = lambda values, fill: [v + [fill] * (width - len(v)) for v in values]
    batch = {"input_ids": torch.tensor(pad([r["input_ids"] for r in rows], tokenizer.pad_token_id)),
             "labels": torch.tensor(pad([r["labels"] for r in rows], templates.IGNORE_INDEX)),
             "attention_mask": torch.tensor(pad([[1] * len(r["input_ids"]) for r in rows], 0))}
    losses, counts = row_losses(model, {k: v.to(model.device) for k, v in batch.items()}, contextlib.nullcontext())
    return [(loss / n, n) for loss, n in zip(losses.tolist(), counts.tolist())]


def evaluate_model(model_dir: Path, kind: str, checks: list[dict]) -> list[dict]:
    """One row per check: the prompt as rendered, the greedy answer, and the response loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    prompts = [example["messages"][0]["content"] for example in checks]
    style = kinds.kind(kind).style
    rendered = [style.render_prompt(prompt) for prompt in prompts]
    with torch.inference_mode():
        # A reply starts with the space after "A:" or "<bot>:"; a base model's whitespace is its output.
        answers = _generate(model, tokenizer, rendered, style.reply_stops, strip=kind != "base")
        losses = _response_losses(model, tokenizer, kind, checks)
    return [{"model": kind, "prompt": prompt, "rendered_prompt": text, "generation": answer, "finish_reason": finish,
             "reference": example["messages"][1]["content"], "response_loss": loss, "response_tokens": n}
            for prompt, text, (answer, finish), (loss, n), example in zip(prompts, rendered, answers, losses, checks)]


def compare(models: dict[str, Path], checks: list[dict]) -> list[dict]:
    """The comparison table's rows for `models` (kind -> HF directory), model by model."""
    return [row for kind, model_dir in models.items() for row in evaluate_model(model_dir, kind, checks)]


def mean_losses(rows: list[dict]) -> dict[str, float]:
    """Each model's response loss over all check answers (weighted by tokens, like eval_loss)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        sums[row["model"]] = sums.get(row["model"], 0.0) + row["response_loss"] * row["response_tokens"]
        counts[row["model"]] = counts.get(row["model"], 0) + row["response_tokens"]
    return {kind: sums[kind] / counts[kind] for kind in sums}


def cached_compare(models: dict[str, tuple[Path, str]], cache_uri: str) -> list[dict]:
    """`compare` of kind -> (HF directory, fingerprint), reusing an earlier result for the same
    models and check set, kept under `cache_uri` in the project storage."""
    from pajama import storage

    key = hashlib.sha256(json.dumps({"models": {k: fp for k, (_, fp) in models.items()},
                                     "checks": CHECKS.read_text(), "max_new_tokens": MAX_NEW_TOKENS},
                                    sort_keys=True).encode()).hexdigest()[:16]
    cached = storage.join(cache_uri, f"{key}.json")
    if storage.exists(cached):
        return json.loads(storage.read_text(cached))
    rows = compare({kind: path for kind, (path, _) in models.items()}, load_checks())
    storage.write_text(cached, json.dumps(rows, indent=1))
    return rows


def log_to_parent(parent_run_id: str, rows: list[dict], versions: dict[str, str]) -> None:
    """The table (one row per model and prompt) and each model's mean response loss, on the DAG run."""
    import mlflow
    from mlflow.tracking import MlflowClient

    table = [{**row, "version": versions.get(row["model"], "")} for row in rows]
    mlflow.log_table({key: [row[key] for row in table] for key in table[0]}, TABLE_FILE, run_id=parent_run_id)
    client = MlflowClient()
    for kind, loss in mean_losses(rows).items():
        client.log_metric(parent_run_id, f"compare/response_loss/{kind}", loss)
