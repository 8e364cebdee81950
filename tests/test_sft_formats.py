"""Loaders: each format on its bundled sample, bad records, and OASST1 trees to conversation paths."""

import json

import pytest

from pajama.config import resolve_path
from pajama.sft import FORMATS, SFTDataError, load_examples, oasst1_conversations


def bundled(name: str) -> str:
    return resolve_path(f"bundled:sft/{name}")


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def check_shape(examples):
    assert examples
    for ex in examples:
        assert set(ex) == {"messages", "task", "source"}
        assert ex["task"] and ex["source"]
        assert ex["messages"][-1]["role"] == "assistant"
        for message in ex["messages"]:
            assert message["role"] in ("system", "user", "assistant") and message["content"].strip()


def test_bundled_instruct_chat_and_eval():
    instruct = load_examples("instruct_jsonl", bundled("instruct.jsonl"))
    check_shape(instruct)
    assert 300 <= len(instruct) <= 600 and not instruct.skipped
    assert all(len(ex["messages"]) == 2 for ex in instruct)
    assert "stdlib_function_doc" in {ex["task"] for ex in instruct}
    chat = load_examples("chat_jsonl", bundled("chat.jsonl"))
    check_shape(chat)
    assert 200 <= len(chat) <= 400 and not chat.skipped
    exchanges = {sum(m["role"] == "assistant" for m in ex["messages"]) for ex in chat}
    assert exchanges == {1, 2, 3}
    assert any(ex["messages"][0]["role"] == "system" for ex in chat)
    evaluation = load_examples("instruct_jsonl", bundled("eval.jsonl"))
    check_shape(evaluation)
    train_prompts = {ex["messages"][0]["content"] for ex in instruct}
    assert not train_prompts & {ex["messages"][0]["content"] for ex in evaluation}


def test_bundled_files_are_small():
    from pathlib import Path

    files = {f.name: f.stat().st_size for f in Path(bundled("")).glob("*.jsonl")}
    assert set(files) == {"instruct.jsonl", "chat.jsonl", "eval.jsonl", "checks.jsonl", "p3_sample.jsonl",
                          "dolly_sample.jsonl", "oasst1_sample.jsonl"}
    assert all(size < 1_000_000 for size in files.values()), files


def test_p3_sample():
    examples = load_examples("p3", bundled("p3_sample.jsonl"))
    check_shape(examples)
    assert {ex["task"] for ex in examples} == {"stdlib_name_from_doc", "stdlib_function_in_module", "python_reference_section"}
    assert examples[0]["source"] == "p3:p3_sample.jsonl"


def test_p3_task_fields_and_natural_instructions_definition(tmp_path):
    path = write_jsonl(tmp_path / "ni_task.jsonl", [
        {"inputs": "2+2", "targets": "4", "_task_name": "arith"},
        {"inputs": "Paris is in", "targets": "France", "definition": "Complete the sentence.", "task_name": "complete"},
        {"inputs": "no task", "targets": "x"},
        {"inputs": "blank target", "targets": "  "},
    ])
    examples = load_examples("p3", path)
    assert [ex["task"] for ex in examples] == ["arith", "complete", "ni_task"]
    assert examples[1]["messages"][0]["content"] == "Complete the sentence.\n\nParis is in"
    assert dict(examples.skipped) == {"empty_response": 1}
    assert [ex["task"] for ex in load_examples("p3", path, task="default")] == ["arith", "complete", "default"]


def test_dolly_sample_and_context():
    examples = load_examples("dolly", bundled("dolly_sample.jsonl"))
    check_shape(examples)
    assert dict(examples.skipped) == {"empty_prompt": 1}
    assert {ex["task"] for ex in examples} == {"open_qa", "summarization", "information_extraction", "classification"}
    extraction = next(ex for ex in examples if ex["task"] == "information_extraction")
    instruction, context = extraction["messages"][0]["content"].split("\n\nInput:\n")
    assert instruction.startswith("List the parameter names") and "(" in context
    open_qa = next(ex for ex in examples if ex["task"] == "open_qa")
    assert "Input:" not in open_qa["messages"][0]["content"]


def test_oasst1_sample():
    examples = load_examples("oasst1", bundled("oasst1_sample.jsonl"))
    check_shape(examples)
    # Four English trees, each with two answered questions under the best root answer.
    assert len(examples) == 8
    assert dict(examples.skipped) == {"lower_ranked_branch": 16, "deleted": 4, "unanswered_prompt": 4, "lang": 2}
    assert sorted({len(ex["messages"]) for ex in examples}) == [4, 6]
    everything = load_examples("oasst1", bundled("oasst1_sample.jsonl"), lang=None)
    assert len(everything) == 9 and "lang" not in everything.skipped


def msg(message_id, parent_id, role, text, rank=None, **extra):
    return {"message_id": message_id, "parent_id": parent_id, "role": role, "text": text, "lang": "en", "rank": rank, **extra}


def test_oasst1_tree_to_exact_paths():
    rows = [
        msg("r", None, "prompter", "root question"),
        msg("a1", "r", "assistant", "second best", rank=1),
        msg("a0", "r", "assistant", "best", rank=0),
        msg("a2", "r", "assistant", "unranked"),
        msg("a1p", "a1", "prompter", "follow-up under a worse answer"),
        msg("a1pa", "a1p", "assistant", "never used"),
        msg("p1", "a0", "prompter", "first follow-up"),
        msg("p2", "a0", "prompter", "second follow-up"),
        msg("p3", "a0", "prompter", "deleted follow-up", deleted=True),
        msg("p4", "a0", "prompter", "follow-up nobody answered"),
        msg("p1a", "p1", "assistant", "answer to first follow-up"),  # only reply, no rank
        msg("p2b", "p2", "assistant", "worse answer to second", rank=1),
        msg("p2a", "p2", "assistant", "best answer to second", rank=0),
        msg("p2aq", "p2a", "prompter", "third question"),
        msg("p2aqx", "p2aq", "assistant", "german answer", rank=0, lang="de"),
        msg("p2aqy", "p2aq", "assistant", "tie, first row"),
        msg("p2aqz", "p2aq", "assistant", "tie, later row"),
        msg("orph", "missing-parent", "assistant", "orphan"),
        msg("r2", None, "prompter", "unanswered root"),
    ]
    examples = oasst1_conversations(rows, source="test")
    paths = [[m["content"] for m in ex["messages"]] for ex in examples]
    assert paths == [
        ["root question", "best", "first follow-up", "answer to first follow-up"],
        ["root question", "best", "second follow-up", "best answer to second", "third question", "tie, first row"],
    ]
    assert [m["role"] for m in examples[1]["messages"]] == ["user", "assistant"] * 3
    assert examples[0]["task"] == "oasst1" and examples[0]["source"] == "test"
    assert dict(examples.skipped) == {
        "lower_ranked_branch": 3 + 1 + 1 + 1,  # a1 with a1p and a1pa, a2, p2b, p2aqz
        "deleted": 1,
        "lang": 1,
        "unanswered_prompt": 2,  # p4, r2
        "orphan": 1,
    }
    used = {"r", "a0", "p1", "p1a", "p2", "p2a", "p2aq", "p2aqy"}
    assert len(used) + sum(examples.skipped.values()) == len(rows)


def test_oasst1_bad_rows_raise():
    with pytest.raises(SFTDataError, match="duplicate message_id 'x'"):
        oasst1_conversations([msg("x", None, "prompter", "a"), msg("x", None, "prompter", "b")])
    with pytest.raises(SFTDataError, match="row 1: field 'role' must be 'prompter' or 'assistant'"):
        oasst1_conversations([msg("x", None, "user", "a")])


def test_hf_dataset_from_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({
        "question": ["What is 2+2?", "Capital of France?", ""],
        "answer": ["4", "Paris", "nothing"],
        "kind": ["math", "geo", "geo"],
    })
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "qa"))
    examples = load_examples("hf", str(tmp_path / "qa"), columns={"prompt": "question", "response": "answer", "task": "kind"})
    assert [(ex["messages"][0]["content"], ex["messages"][1]["content"], ex["task"]) for ex in examples] == [
        ("What is 2+2?", "4", "math"), ("Capital of France?", "Paris", "geo"),
    ]
    assert dict(examples.skipped) == {"empty_prompt": 1}
    untasked = load_examples("hf", str(tmp_path / "qa"), columns={"prompt": "question", "response": "answer"})
    assert {ex["task"] for ex in untasked} == {"qa"}
    with pytest.raises(SFTDataError, match="no column"):
        load_examples("hf", str(tmp_path / "qa"), columns={"prompt": "q", "response": "answer"})
    with pytest.raises(SFTDataError, match="no split 'test'"):
        load_examples("hf", str(tmp_path / "qa"), columns={"prompt": "question", "response": "answer"}, split="test")


def test_bad_records_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "response": "r"}\n\n{"prompt": "p"\n')
    with pytest.raises(SFTDataError, match=r"bad.jsonl:3: not valid JSON"):
        load_examples("instruct_jsonl", path)
    path.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p", "answer": "r"}\n')
    with pytest.raises(SFTDataError, match=r"bad.jsonl:2: missing field 'response'"):
        load_examples("instruct_jsonl", path)
    path.write_text('{"prompt": "p", "response": 3}\n')
    with pytest.raises(SFTDataError, match=r"bad.jsonl:1: field 'response' must be str"):
        load_examples("instruct_jsonl", path)
    path.write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(SFTDataError, match=r"bad.jsonl:1: messages\[0\] must be"):
        load_examples("chat_jsonl", path)
    path.write_text('[1, 2]\n')
    with pytest.raises(SFTDataError, match=r"bad.jsonl:1: expected a JSON object"):
        load_examples("dolly", path)


def test_chat_skips_are_counted(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "task": "greet"},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
    ])
    examples = load_examples("chat_jsonl", path)
    assert len(examples) == 1 and examples[0]["task"] == "greet" and examples[0]["source"] == "chat_jsonl:chat.jsonl"
    assert dict(examples.skipped) == {"no_assistant_turn": 1, "empty_message": 1}


def test_dispatcher_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown SFT data format 'alpaca'"):
        load_examples("alpaca", tmp_path / "x.jsonl")
    with pytest.raises(FileNotFoundError, match="x.jsonl does not exist"):
        load_examples("dolly", tmp_path / "x.jsonl")
    assert FORMATS == ("instruct_jsonl", "chat_jsonl", "p3", "dolly", "oasst1", "hf")
