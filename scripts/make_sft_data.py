"""Generate Pajama's bundled fine-tuning data from the running Python's standard library.

Writes to platform/pajama/resources/sft/ (or --out):

* instruct.jsonl: prompt/response pairs with a `task` (instruct_jsonl format)
* chat.jsonl: conversations of 1-3 exchanges (chat_jsonl format)
* eval.jsonl: held-out prompt/response pairs (instruct_jsonl format) on modules and reference
  topics that the training files never mention, for held-out loss and decontamination
* p3_sample.jsonl, dolly_sample.jsonl, oasst1_sample.jsonl: small samples of the P3,
  databricks-dolly-15k and OpenAssistant oasst1 formats, for the loaders' tests

The text is real documentation: the first paragraph of docstrings (functions, classes, modules,
built-ins, exceptions) and of the language reference topics in `pydoc_data.topics`; the few
connective sentences around it ("For example: ...") are templates here. The output is a pure
function of the Python version (the committed files come from CPython 3.11): lists are sorted and
every choice uses `random.Random(SEED)`.

Usage: python scripts/make_sft_data.py [--out DIR]
"""

from __future__ import annotations

import argparse
import builtins
import importlib
import inspect
import json
import random
import re
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import pydoc_data.topics

SEED = 20230505  # RedPajama-INCITE release date
OUT_DIR = Path(__file__).resolve().parents[1] / "platform" / "pajama" / "resources" / "sft"

TRAIN_MODULES = (
    "base64 binascii calendar codecs collections contextlib copy csv dataclasses email.utils enum functools "
    "getpass glob hashlib html inspect io ipaddress itertools json linecache logging math mimetypes operator "
    "os.path pickle platform plistlib pprint re reprlib secrets shutil signal socket sqlite3 stat string struct "
    "subprocess sys sysconfig tempfile threading time timeit tokenize traceback types typing unicodedata "
    "unittest urllib.parse urllib.request uuid warnings weakref webbrowser xml.etree.ElementTree zipfile zlib"
).split()
# Held out: only eval.jsonl asks about these.
EVAL_MODULES = "bisect colorsys difflib filecmp fnmatch gzip heapq quopri shlex statistics textwrap".split()

MAX_ANSWER_CHARS = 420
SYSTEM_PROMPT = "You answer questions about the Python standard library."


def unwrap(text: str) -> str:
    return " ".join(text.split())


def own_doc(obj) -> str | None:
    """The object's own docstring, cleaned (inspect.getdoc would fall back to a base class's)."""
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else None


def first_paragraph(doc: str | None) -> str | None:
    """The first paragraph of `doc`, unwrapped, cut at a sentence end to MAX_ANSWER_CHARS."""
    if not doc:
        return None
    paragraph = unwrap(re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0])
    if len(paragraph) > MAX_ANSWER_CHARS:
        sentences = re.split(r"(?<=[.!?])\s+", paragraph)
        paragraph = ""
        for sentence in sentences:
            if len(paragraph) + len(sentence) + 1 > MAX_ANSWER_CHARS:
                break
            paragraph = f"{paragraph} {sentence}".strip()
    # Docstrings that are a bare signature, a fragment or an address are no answer.
    if len(paragraph) < 15 or not paragraph[0].isupper() or " at 0x" in paragraph or re.match(r"[\w.]+\(", paragraph):
        return None
    return paragraph


def public_members(module_name: str) -> list[tuple[str, object]]:
    """(name, object) of the module's own public functions and classes, sorted by name."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    top = module_name.split(".")[0]
    members = []
    for name in sorted(set(names)):
        obj = getattr(module, name, None)
        if not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
            continue
        home = (getattr(obj, "__module__", "") or "").lstrip("_").split(".")[0]
        if home == top:
            members.append((name, obj))
    return members


def signature_text(qualname: str, obj) -> str | None:
    try:
        text = f"{qualname}{inspect.signature(obj)}"
    except (TypeError, ValueError):
        return None
    # Defaults such as <object object at 0x...> differ between runs.
    return None if "<" in text or len(text) > 160 else text


class ModuleFacts:
    """What the generator knows about one module: its purpose and documented members."""

    def __init__(self, name: str):
        self.name = name
        self.purpose = first_paragraph(own_doc(importlib.import_module(name)))
        self.functions: list[tuple[str, str, str | None]] = []  # (qualname, doc, signature)
        self.classes: list[tuple[str, str]] = []  # (qualname, doc)
        for member, obj in public_members(name):
            qualname = f"{name}.{member}"
            doc = first_paragraph(own_doc(obj))
            if doc is None:
                continue
            if inspect.isclass(obj):
                self.classes.append((qualname, doc))
            else:
                self.functions.append((qualname, doc, signature_text(qualname, obj)))


def reference_topics() -> list[tuple[str, str, str]]:
    """(title, first prose paragraph, passage of up to three paragraphs) of pydoc's reference topics.

    Several topic keys share one section (`if` and `else`); each title is kept once.
    """
    topics, titles = [], set()
    for key in sorted(pydoc_data.topics.topics):
        lines = pydoc_data.topics.topics[key].strip().splitlines()
        title = lines[0].strip()
        if len(lines) < 2 or not set(lines[1].strip()) <= {"*", "=", "-"}:
            continue
        # Prose paragraphs start at column 0 (grammar and code blocks are indented, sub-headings are
        # underlined); one that ends in ":" introduces a block and reads as a sentence without it,
        # unless it only announces "the following" definitions; version notes are no answer.
        paragraphs = [
            p.strip() for p in re.split(r"\n\s*\n", "\n".join(lines[2:]))
            if p.strip() and not p.startswith(" ") and not re.search(r"^[=*-]{3,}$", p, re.MULTILINE)
        ]
        paragraphs = [
            p[:-1] + "." if p.endswith(":") else p
            for p in paragraphs
            if not (p.endswith(":") and "following" in p)
            and not re.search(r"following lexical definitions|^(New|Changed) in version|^Deprecated since", p)
        ]
        answer = first_paragraph(paragraphs[0]) if paragraphs else None
        if answer and title not in titles:
            titles.add(title)
            passage = unwrap(" ".join(paragraphs[:3]))[:1200]
            topics.append((title.replace('"', "`"), answer, passage))
    return topics


def lower_title(title: str) -> str:
    """A section title as running text: lower case except inside `code`."""
    return "`".join(part if i % 2 else part.lower() for i, part in enumerate(title.split("`")))


def topic_prompt(title: str) -> str:
    return f"Explain {lower_title(title)} in Python."


def builtin_docs() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(name, doc) of the documented built-in functions and of the built-in exceptions."""
    functions, exceptions = [], []
    for name in sorted(dir(builtins)):
        obj = getattr(builtins, name)
        if name.startswith("_"):
            continue
        doc = first_paragraph(own_doc(obj))
        if doc is None:
            continue
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            exceptions.append((name, doc))
        elif inspect.isbuiltin(obj):
            functions.append((name, doc))
    return functions, exceptions


def row(prompt: str, response: str, task: str) -> dict:
    return {"prompt": prompt, "response": response, "task": task}


FUNCTION_PROMPTS = ("What does `{q}` do?", "Explain what the function `{q}` does.", "What is `{q}` used for in Python?")
CLASS_PROMPTS = ("What is `{q}`?", "Describe the class `{q}`.")
MODULE_PROMPTS = ("What is the `{m}` module for?", "What does the Python `{m}` module do?")
SIGNATURE_PROMPTS = ("What is the signature of `{q}`?", "How do I call `{q}`? Give its signature.")


def instruction_rows(facts: list[ModuleFacts], rng: random.Random, sizes: dict[str, int]) -> list[dict]:
    """Instruction pairs about `facts`, at most sizes[task] of each task (all when None)."""
    candidates: dict[str, list[dict]] = defaultdict(list)
    owners: dict[str, list[str]] = {}
    for module in facts:
        if module.purpose:
            candidates["stdlib_module_purpose"].append(row(rng.choice(MODULE_PROMPTS).format(m=module.name), module.purpose, "stdlib_module_purpose"))
        for qualname, doc, signature in module.functions:
            candidates["stdlib_function_doc"].append(row(rng.choice(FUNCTION_PROMPTS).format(q=qualname), doc, "stdlib_function_doc"))
            if signature:
                candidates["stdlib_signature"].append(row(rng.choice(SIGNATURE_PROMPTS).format(q=qualname), f"`{signature}`", "stdlib_signature"))
            owners.setdefault(qualname.rsplit(".", 1)[1], []).append(module.name)
        for qualname, doc in module.classes:
            candidates["stdlib_class_doc"].append(row(rng.choice(CLASS_PROMPTS).format(q=qualname), doc, "stdlib_class_doc"))
    if "stdlib_which_module" in sizes:
        for name, modules in sorted(owners.items()):
            if len(modules) == 1:
                candidates["stdlib_which_module"].append(row(
                    f"Which module of the Python standard library provides the function `{name}`?",
                    f"The `{modules[0]}` module: `from {modules[0]} import {name}`.",
                    "stdlib_which_module",
                ))
    rows = []
    for task, size in sizes.items():
        pool = candidates[task]
        rows += pool if size is None or size >= len(pool) else rng.sample(pool, size)
    return rows


def chat_rows(facts: list[ModuleFacts], rng: random.Random, count: int) -> list[dict]:
    """Conversations of 1-3 exchanges about modules and their functions."""
    documented = [m for m in facts if m.purpose and len(m.functions) >= 3]
    functions = [(m, f) for m in facts for f in m.functions]
    conversations = []
    for i in range(count):
        kind = i % 4
        if kind in (0, 1):  # module purpose, a few functions, then one of them
            module = rng.choice(documented)
            picked = sorted(rng.sample(module.functions, 3))
            messages = [
                {"role": "user", "content": rng.choice(MODULE_PROMPTS).format(m=module.name)},
                {"role": "assistant", "content": module.purpose},
                {"role": "user", "content": "Name a few functions it provides."},
                {"role": "assistant", "content": "For example: " + ", ".join(f"`{q}`" for q, _, _ in picked) + "."},
            ]
            if kind == 1:
                qualname, doc, _ = rng.choice(picked)
                messages += [
                    {"role": "user", "content": f"What does `{qualname}` do?"},
                    {"role": "assistant", "content": doc},
                ]
        else:  # one function: what it does, then maybe its signature and where to import it from
            module, (qualname, doc, signature) = rng.choice(functions)
            messages = [
                {"role": "user", "content": rng.choice(FUNCTION_PROMPTS).format(q=qualname)},
                {"role": "assistant", "content": doc},
            ]
            if kind == 3 and signature:
                module_name, name = qualname.rsplit(".", 1)
                messages += [
                    {"role": "user", "content": "What is its signature?"},
                    {"role": "assistant", "content": f"`{signature}`"},
                    {"role": "user", "content": "How do I import it?"},
                    {"role": "assistant", "content": f"`from {module_name} import {name}`"},
                ]
        if rng.random() < 0.25:
            messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
        conversations.append({"messages": messages, "task": "stdlib_chat"})
    return conversations


def p3_rows(facts: list[ModuleFacts], topics, rng: random.Random) -> list[dict]:
    functions = sorted((m.name, q, d) for m in facts for q, d, _ in m.functions)
    rows = []
    for module_name, qualname, doc in rng.sample(functions, 15):
        rows.append({
            "inputs": f"Documentation: {doc}\nWhich Python function does this documentation describe?",
            "targets": qualname,
            "task_name": "stdlib_name_from_doc",
        })
    for k, (module_name, qualname, _) in enumerate(rng.sample(functions, 14)):
        asked = module_name if k % 2 == 0 else rng.choice([m.name for m in facts if m.name != module_name])
        rows.append({
            "inputs": f"Is `{qualname.rsplit('.', 1)[1]}` a function of the Python `{asked}` module? Answer yes or no.",
            "targets": "yes" if asked == module_name else "no",
            "task_name": "stdlib_function_in_module",
        })
    for title, paragraph, _ in rng.sample(topics, 10):
        rows.append({
            "inputs": f"Passage: {paragraph}\nWhich part of the Python language reference is this passage from?",
            "targets": title,
            "task_name": "python_reference_section",
        })
    return rows


def dolly_rows(facts: list[ModuleFacts], topics, rng: random.Random) -> list[dict]:
    functions = sorted((q, d, s) for m in facts for q, d, s in m.functions)
    classes = sorted(q for m in facts for q, _ in m.classes)
    rows = []
    for qualname, doc, _ in rng.sample(functions, 10):
        rows.append({"instruction": f"What does `{qualname}` do in Python?", "context": "", "response": doc, "category": "open_qa"})
    for title, paragraph, passage in rng.sample(topics, 8):
        rows.append({
            "instruction": f"Summarize in a few sentences what this passage of the Python reference says about {lower_title(title)}.",
            "context": passage,
            "response": paragraph,
            "category": "summarization",
        })
    for qualname, _, signature in rng.sample([f for f in functions if f[2]], 10):
        parameters = re.findall(r"[(,]\s*\**([A-Za-z_]\w*)", signature)
        rows.append({
            "instruction": "List the parameter names of this Python function signature, separated by commas.",
            "context": signature,
            "response": ", ".join(parameters) if parameters else "It takes no parameters.",
            "category": "information_extraction",
        })
    for k, qualname in enumerate(rng.sample(classes, 4) + [q for q, _, _ in rng.sample(functions, 4)]):
        kind = "a class" if k < 4 else "a function"
        rows.append({"instruction": f"Is `{qualname}` a class or a function?", "context": "", "response": f"`{qualname}` is {kind}.", "category": "classification"})
    rows.append({"instruction": "   ", "context": "", "response": "A record with an empty instruction, which the loader skips.", "category": "open_qa"})
    return rows


def oasst1_rows(facts: list[ModuleFacts], rng: random.Random) -> list[dict]:
    """Message trees with ranked assistant branches, prompter branches, and rows to leave out.

    Per module tree: the root question has a ranked best answer (rank 0) and a worse one
    (rank 1, with a follow-up that must be dropped); under the best answer, three questions
    about functions (one answered once without rank, one with two ranked answers and a
    follow-up answered without a rank field, one deleted) and a thank-you with no reply.
    One more tree is in German (lang "de").
    """
    rows = []

    def add(tree: str, path: str, parent: str | None, role: str, text: str, rank=None, lang="en", deleted=False, has_rank=True):
        message_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"pajama-sft/oasst1/{tree}/{path}"))
        record = {"message_id": message_id, "parent_id": parent, "message_tree_id": tree, "role": role,
                  "text": text, "lang": lang, "deleted": deleted}
        if has_rank:
            record["rank"] = rank
        rows.append(record)
        return message_id

    modules = rng.sample([m for m in facts if m.purpose and len(m.functions) >= 3], 4)
    for module in modules:
        tree = str(uuid.uuid5(uuid.NAMESPACE_URL, f"pajama-sft/oasst1/{module.name}"))
        f1, f2, f3 = rng.sample(module.functions, 3)
        root = add(tree, "q", None, "prompter", f"What is the `{module.name}` module for?")
        best = add(tree, "q/best", root, "assistant", module.purpose, rank=0)
        worse = add(tree, "q/worse", root, "assistant", f"`{module.name}` is a module of the Python standard library.", rank=1)
        follow = add(tree, "q/worse/q", worse, "prompter", "Can you say more?", rank=0)
        add(tree, "q/worse/q/a", follow, "assistant", module.purpose)
        q1 = add(tree, "q/best/q1", best, "prompter", f"What does `{f1[0]}` do?", rank=0)
        add(tree, "q/best/q1/a", q1, "assistant", f1[1])
        q2 = add(tree, "q/best/q2", best, "prompter", f"And `{f2[0]}`?", rank=1)
        add(tree, "q/best/q2/worse", q2, "assistant", f"It is a function of `{module.name}`.", rank=1)
        a2 = add(tree, "q/best/q2/best", q2, "assistant", f2[1], rank=0)
        if f2[2]:
            q3 = add(tree, "q/best/q2/best/q", a2, "prompter", "What is its signature?")
            add(tree, "q/best/q2/best/q/a", q3, "assistant", f"`{f2[2]}`", has_rank=False)
        add(tree, "q/best/q3", best, "prompter", f"What does `{f3[0]}` do?", rank=2, deleted=True)
        add(tree, "q/best/thanks", best, "prompter", "Thanks!", rank=3)
    tree = str(uuid.uuid5(uuid.NAMESPACE_URL, "pajama-sft/oasst1/de/json"))
    root = add(tree, "q", None, "prompter", "Wofür ist das Modul `json` da?", lang="de")
    add(tree, "q/a", root, "assistant", "Es liest und schreibt JSON.", rank=0, lang="de")
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in rows:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} rows, {path.stat().st_size / 1024:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)

    train = [ModuleFacts(name) for name in sorted(TRAIN_MODULES)]
    held_out = [ModuleFacts(name) for name in sorted(EVAL_MODULES)]
    topics = reference_topics()
    eval_topics, train_topics = topics[::8], [t for i, t in enumerate(topics) if i % 8]
    builtin_functions, exceptions = builtin_docs()

    instruct = instruction_rows(train, rng, {
        "stdlib_function_doc": 170,
        "stdlib_class_doc": 60,
        "stdlib_module_purpose": None,
        "stdlib_which_module": 60,
        "stdlib_signature": 60,
    })
    instruct += [row(f"What does the built-in function `{n}` do?", d, "builtin_function_doc") for n, d in builtin_functions]
    instruct += [row(f"What does the built-in exception `{n}` signal?", d, "builtin_exception_doc") for n, d in exceptions]
    instruct += [row(topic_prompt(title), answer, "python_reference_topic") for title, answer, _ in train_topics]
    rng.shuffle(instruct)

    evaluation = instruction_rows(held_out, rng, {
        "stdlib_function_doc": 40,
        "stdlib_class_doc": None,
        "stdlib_module_purpose": None,
        "stdlib_signature": 20,
    })
    evaluation += [row(topic_prompt(title), answer, "python_reference_topic") for title, answer, _ in eval_topics]

    leaked = {r["prompt"] for r in instruct} & {r["prompt"] for r in evaluation}
    if leaked:
        raise SystemExit(f"eval prompts also in instruct.jsonl: {sorted(leaked)}")
    write_jsonl(args.out / "instruct.jsonl", instruct)
    write_jsonl(args.out / "chat.jsonl", chat_rows(train, rng, 320))
    write_jsonl(args.out / "eval.jsonl", evaluation)
    write_jsonl(args.out / "p3_sample.jsonl", p3_rows(train, train_topics, rng))
    write_jsonl(args.out / "dolly_sample.jsonl", dolly_rows(train, train_topics, rng))
    write_jsonl(args.out / "oasst1_sample.jsonl", oasst1_rows(train, rng))
    print(f"generated with Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
