"""Loaders that turn instruction and chat data sets into one in-memory shape.

Every loader returns an `Examples` list of ``{"messages": [...], "task": str, "source": str}``
where messages are ``{"role": "system"|"user"|"assistant", "content": str}`` turns; an
instruction example is the 1-turn conversation [user prompt, assistant response].

Formats (`load_examples(fmt, path, **options)` dispatches on `fmt`):

* ``instruct_jsonl``: ``{"prompt", "response", "task"?}`` per line (the bundled form).
* ``chat_jsonl``: ``{"messages": [...], "task"?, "source"?}`` per line.
* ``p3``: P3 / Natural-Instructions prompt-completion jsonl: ``inputs``, ``targets`` and a task
  name in ``task_name``, ``_task_name`` or ``task`` (the first present; option `task_field`).
  A non-empty ``definition`` (Natural-Instructions' task definition) is put before the inputs.
* ``dolly``: databricks-dolly-15k jsonl ``instruction``, ``context``, ``response``, ``category``;
  a non-empty context follows the instruction under an ``Input:`` heading, as Dolly's own
  training prompt does (databrickslabs/dolly training/consts.py, PROMPT_WITH_INPUT_FORMAT).
* ``oasst1``: OpenAssistant oasst1 flat message rows (``message_id``, ``parent_id``, ``role``
  prompter/assistant, ``text``, ``lang``, ``rank``, ``deleted``?) turned into conversations by
  `oasst1_conversations` (its docstring states the branch rules).
* ``hf``: any Hugging Face `datasets` data set through a column mapping (`load_hf_dataset`).

The file formats also read a hub dataset by path, ``hf://datasets/<org>/<name>``: its files that
match the option `data_files` (a glob, default ``**/*.jsonl*``; .jsonl, .jsonl.gz and .parquet)
are fetched through huggingface_hub (the cache alone under HF_HUB_OFFLINE, see pajama.hub) and
each is read in the format, e.g. p3 for Muennighoff/P3 and Muennighoff/natural-instructions
(Natural Instructions' ``definition``, ``inputs``, ``targets``, ``task_name``).

Bad records. A line that is not JSON, not an object, or lacks a required field (or has it with
the wrong type) raises `SFTDataError` naming the file and line: the file is in another format or
corrupt, and guessing would train on garbage. A well-formed record whose prompt or response is
empty (whitespace only) is skipped and counted by reason in `Examples.skipped`, as are the
oasst1 messages that end up in no conversation; every skip is also logged.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from pajama import hub
from pajama.sft.templates import ROLES

log = logging.getLogger(__name__)

FORMATS = ("instruct_jsonl", "chat_jsonl", "p3", "dolly", "oasst1", "hf")
P3_TASK_FIELDS = ("task_name", "_task_name", "task")


class SFTDataError(ValueError):
    """A record cannot be read; the message names the file, the line and what to fix."""


class Examples(list):
    """A list of examples plus `skipped`: a Counter of records left out, by reason."""

    def __init__(self, items: Iterable[dict] = (), skipped: Counter | None = None):
        super().__init__(items)
        self.skipped = Counter(skipped or {})


def _example(prompt: str, response: str, task: str, source: str) -> dict:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        "task": task,
        "source": source,
    }


def _read_jsonl(path: str | Path) -> Iterator[tuple[str, dict]]:
    """("file:line", record) for each non-blank line of a .jsonl or .jsonl.gz file (or "file:row"
    for each row of a .parquet file, as hub datasets publish them)."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for row, record in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}:row {row}", record
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise SFTDataError(f"{where}: not valid JSON ({err.msg}); each line must be one JSON object") from None
            if not isinstance(record, dict):
                raise SFTDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record


def _field(record: dict, name: str, where: str, types=str, required: bool = True):
    if name not in record or record[name] is None:
        if required:
            raise SFTDataError(f"{where}: missing field {name!r} (fields present: {', '.join(sorted(record))})")
        return None
    value = record[name]
    if not isinstance(value, types):
        raise SFTDataError(f"{where}: field {name!r} must be {getattr(types, '__name__', types)}, got {type(value).__name__}")
    return value


def _finish(examples: list[dict], skipped: Counter, path) -> Examples:
    if skipped:
        log.warning("%s: skipped %d record(s): %s", path, sum(skipped.values()), dict(skipped))
    return Examples(examples, skipped)


def _default_source(fmt: str, path) -> str:
    return f"{fmt}:{Path(str(path)).name}"


def _prompt_response_examples(rows, task_of, source: str, path) -> Examples:
    """Examples from (where, prompt, response, record) rows, skipping empty prompts/responses."""
    examples, skipped = [], Counter()
    for where, prompt, response, record in rows:
        if not prompt.strip():
            skipped["empty_prompt"] += 1
        elif not response.strip():
            skipped["empty_response"] += 1
        else:
            examples.append(_example(prompt, response, task_of(record, where), source))
    return _finish(examples, skipped, path)


def load_instruct_jsonl(path: str | Path, task: str = "instruct", source: str | None = None) -> Examples:
    """``{"prompt", "response", "task"?}`` lines; `task` names records without one."""
    rows = (
        (where, _field(r, "prompt", where), _field(r, "response", where), r)
        for where, r in _read_jsonl(path)
    )
    return _prompt_response_examples(
        rows, lambda r, where: _field(r, "task", where, required=False) or task,
        source or _default_source("instruct_jsonl", path), path,
    )


def load_chat_jsonl(path: str | Path, task: str = "chat", source: str | None = None) -> Examples:
    """``{"messages": [...], "task"?, "source"?}`` lines; each conversation needs an assistant turn."""
    default_source = source or _default_source("chat_jsonl", path)
    examples, skipped = [], Counter()
    for where, record in _read_jsonl(path):
        messages = _field(record, "messages", where, types=list)
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
                raise SFTDataError(
                    f"{where}: messages[{i}] must be {{'role': one of {', '.join(ROLES)}, 'content': str}}, got {message!r:.200}"
                )
        if any(not m["content"].strip() for m in messages):
            skipped["empty_message"] += 1
        elif not any(m["role"] == "assistant" for m in messages):
            skipped["no_assistant_turn"] += 1
        else:
            examples.append({
                "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
                "task": _field(record, "task", where, required=False) or task,
                "source": _field(record, "source", where, required=False) or default_source,
            })
    return _finish(examples, skipped, path)


def load_p3_jsonl(
    path: str | Path,
    task: str | None = None,
    task_field: str | None = None,
    source: str | None = None,
) -> Examples:
    """P3 / Natural-Instructions ``inputs``/``targets`` lines.

    The task is the record's `task_field` (default: the first of task_name, _task_name, task that
    is present), else `task`, else the file name without extension.
    """
    fallback_task = task or Path(str(path)).name.split(".")[0]

    def task_of(record: dict, where: str) -> str:
        fields = [task_field] if task_field else P3_TASK_FIELDS
        return next((record[f] for f in fields if isinstance(record.get(f), str) and record[f]), fallback_task)

    def rows():
        for where, r in _read_jsonl(path):
            inputs = _field(r, "inputs", where)
            definition = _field(r, "definition", where, required=False)
            prompt = f"{definition.strip()}\n\n{inputs}" if definition and definition.strip() else inputs
            yield where, prompt, _field(r, "targets", where), r

    return _prompt_response_examples(rows(), task_of, source or _default_source("p3", path), path)


def load_dolly_jsonl(path: str | Path, source: str | None = None) -> Examples:
    """databricks-dolly-15k lines; the task is the record's category."""

    def rows():
        for where, r in _read_jsonl(path):
            instruction = _field(r, "instruction", where)
            context = _field(r, "context", where, required=False) or ""
            prompt = f"{instruction.strip()}\n\nInput:\n{context.strip()}" if context.strip() else instruction
            yield where, prompt, _field(r, "response", where), r

    return _prompt_response_examples(
        rows(), lambda r, where: _field(r, "category", where), source or _default_source("dolly", path), path
    )


def _rank_key(message: dict, order: int) -> tuple:
    # rank 0 is best; an unranked reply (rank missing/None) comes after every ranked sibling;
    # ties keep file order.
    rank = message.get("rank")
    return (rank is None, rank if rank is not None else 0, order)


def oasst1_conversations(
    rows: Iterable[dict],
    lang: str | None = "en",
    task: str = "oasst1",
    source: str = "oasst1",
    where: str = "oasst1",
) -> Examples:
    """Conversation paths through OpenAssistant message trees, following the best-ranked replies.

    Rules:
    * A message is left out (with its whole subtree) when it is deleted, its `lang` differs from
      `lang` (None keeps every language), its text is empty, its parent is not in `rows`
      ("orphan"), or the roles do not alternate prompter/assistant from a prompter root.
    * Assistant branches: of a prompter message's usable assistant replies only the best one is
      followed: lowest `rank` (0 is best); replies without a rank come after ranked ones; ties go
      to the earlier row. The other replies and their subtrees are left out.
    * Prompter branches: every usable prompter follow-up of an assistant message is followed, each
      giving its own conversation (they share the earlier turns), since each is a different user
      question and all assistant turns on every path are still the best-ranked ones.
    * A conversation ends with an assistant turn: it is emitted when its last assistant message has
      no answered follow-up. A prompter message with no usable reply is left out
      ("unanswered_prompt"); a root without one yields no conversation.

    `Examples.skipped` counts the messages used in no conversation, by reason, so that
    used messages + sum(skipped) == number of rows.
    """
    messages: dict[str, dict] = {}
    order: dict[str, int] = {}
    for i, row in enumerate(rows):
        at = f"{where} row {i + 1}"
        message_id = _field(row, "message_id", at)
        if message_id in messages:
            raise SFTDataError(f"{at}: duplicate message_id {message_id!r}")
        if "parent_id" not in row:
            raise SFTDataError(f"{at}: missing field 'parent_id' (null for a tree's root prompt)")
        if row.get("role") not in ("prompter", "assistant"):
            raise SFTDataError(f"{at}: field 'role' must be 'prompter' or 'assistant', got {row.get('role')!r}")
        _field(row, "text", at)
        messages[message_id] = row
        order[message_id] = i

    children: dict[str | None, list[str]] = {}
    for message_id, row in messages.items():
        children.setdefault(row["parent_id"], []).append(message_id)

    skipped: Counter = Counter()
    accounted: set[str] = set()  # messages counted in `skipped`

    def skip(message_id: str, reason: str) -> None:
        skipped[reason] += 1
        accounted.add(message_id)

    def leave_out(message_id: str, reason: str) -> None:
        stack = [message_id]
        while stack:
            current = stack.pop()
            skip(current, reason)
            stack.extend(children.get(current, []))

    def own_defect(message_id: str, expected_role: str) -> str | None:
        row = messages[message_id]
        if row.get("deleted"):
            return "deleted"
        if lang is not None and row.get("lang") != lang:
            return "lang"
        if not row["text"].strip():
            return "empty_text"
        if row["role"] != expected_role:
            return "role_order"
        return None

    def usable_children(message_id: str, expected_role: str) -> list[str]:
        usable = []
        for child in children.get(message_id, []):
            defect = own_defect(child, expected_role)
            if defect:
                leave_out(child, defect)
            else:
                usable.append(child)
        return usable

    def best_reply(prompter_id: str) -> str | None:
        replies = sorted(usable_children(prompter_id, "assistant"), key=lambda m: _rank_key(messages[m], order[m]))
        for worse in replies[1:]:
            leave_out(worse, "lower_ranked_branch")
        return replies[0] if replies else None

    paths: list[list[str]] = []

    def follow(assistant_id: str, path: list[str]) -> None:
        answered = []
        for prompter_id in usable_children(assistant_id, "prompter"):
            reply = best_reply(prompter_id)
            if reply is None:
                skip(prompter_id, "unanswered_prompt")
            else:
                answered.append((prompter_id, reply))
        if not answered:
            paths.append(path)
        for prompter_id, reply in answered:
            follow(reply, path + [prompter_id, reply])

    for root_id in children.get(None, []):
        defect = own_defect(root_id, "prompter")
        if defect:
            leave_out(root_id, defect)
            continue
        reply = best_reply(root_id)
        if reply is None:
            skip(root_id, "unanswered_prompt")
        else:
            follow(reply, [root_id, reply])
    for parent_id, orphans in children.items():
        if parent_id is not None and parent_id not in messages:
            for orphan in orphans:
                leave_out(orphan, "orphan")

    used = {message_id for path in paths for message_id in path}
    # Only a parent_id cycle (no root above it) escapes every rule above.
    for message_id in messages.keys() - used - accounted:
        skip(message_id, "parent_cycle")

    def turn(message_id: str) -> dict:
        row = messages[message_id]
        return {"role": "user" if row["role"] == "prompter" else "assistant", "content": row["text"]}

    examples = [{"messages": [turn(m) for m in path], "task": task, "source": source} for path in paths]
    return _finish(examples, skipped, where)


def load_oasst1_jsonl(path: str | Path, lang: str | None = "en", source: str | None = None) -> Examples:
    """oasst1 message rows from jsonl (e.g. the HF data set exported with `to_json`)."""
    return oasst1_conversations(
        (record for _, record in _read_jsonl(path)),
        lang=lang, source=source or _default_source("oasst1", path), where=str(path),
    )


def load_hf_dataset(
    path: str,
    columns: dict[str, str],
    split: str = "train",
    task: str | None = None,
    source: str | None = None,
) -> Examples:
    """Any `datasets` data set as instruction examples through `columns`.

    `columns` maps ``prompt`` and ``response`` (required) and ``task`` (optional) to column names.
    A local directory is opened with `datasets.load_from_disk` (taking `split` of a DatasetDict);
    anything else is a name for `datasets.load_dataset(path, split=split)` (needs network access).
    Rows without a task column get `task`, default the data set's name.
    """
    import datasets

    missing = {"prompt", "response"} - set(columns)
    if missing or set(columns) - {"prompt", "response", "task"}:
        raise SFTDataError(f"columns for {path}: need 'prompt' and 'response' (and optionally 'task'), got {columns}")
    if Path(path).is_dir():
        data = datasets.load_from_disk(path)
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise SFTDataError(f"{path}: no split {split!r}; splits are {', '.join(data)}")
            data = data[split]
    else:
        data = datasets.load_dataset(path, split=split)
    absent = [c for c in columns.values() if c not in data.column_names]
    if absent:
        raise SFTDataError(f"{path}: no column(s) {', '.join(absent)}; columns are {', '.join(data.column_names)}")
    default_task = task or Path(path).name
    task_column = columns.get("task")

    def rows():
        for i, row in enumerate(data.select_columns(list(set(columns.values())))):
            where = f"{path} row {i}"
            yield where, _field(row, columns["prompt"], where), _field(row, columns["response"], where), row

    return _prompt_response_examples(
        rows(),
        lambda row, where: (row.get(task_column) if task_column else None) or default_task,
        source or _default_source("hf", path),
        path,
    )


def load_examples(fmt: str, path: str | Path, **options) -> Examples:
    """Load `path` in format `fmt` (one of FORMATS); `options` go to that format's loader."""
    loaders = {
        "instruct_jsonl": load_instruct_jsonl,
        "chat_jsonl": load_chat_jsonl,
        "p3": load_p3_jsonl,
        "dolly": load_dolly_jsonl,
        "oasst1": load_oasst1_jsonl,
        "hf": load_hf_dataset,
    }
    if fmt not in loaders:
        raise ValueError(f"unknown SFT data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt != "hf" and hub.repo_id(str(path)):
        # A hub dataset: its files matching `data_files` (options), each read in the format.
        files = hub.dataset_files(str(path), options.pop("data_files", "**/*.jsonl*"), options.pop("revision", None))
        parts = [loaders[fmt](file, **options) for file in files]
        return Examples([ex for part in parts for ex in part], sum((part.skipped for part in parts), Counter()))
    if fmt != "hf" and not Path(path).is_file():
        raise FileNotFoundError(f"{fmt} data file {path} does not exist")
    return loaders[fmt](path, **options)
