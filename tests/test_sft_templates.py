"""Prompt formats, the Jinja chat template through a real tokenizer, and loss masks of tokenize_example."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pajama.config import resolve_path
from pajama.sft import CHAT_TEMPLATE, IGNORE_INDEX, load_examples, render_chat, render_instruct, tokenize_example

CONVERSATION = [
    {"role": "system", "content": "You answer questions about Python."},
    {"role": "user", "content": "  What does `json.dumps` do?\n"},
    {"role": "assistant", "content": "Serialize ``obj`` to a JSON formatted ``str``."},
    {"role": "user", "content": "And json.loads?"},
    {"role": "assistant", "content": "Deserialize a JSON document to a Python object. "},
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here on a few sentences, with GPT-NeoX's special tokens."""
    sentences = [message["content"] for message in CONVERSATION] + [
        "<human>: hi\n<bot>: hello there, how can I help?",
        "Q: The capital of France is?\nA: Paris",
        "Return the number of items in a container.",
    ]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        sentences,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>", "<|padding|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|padding|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_render_instruct_matches_the_model_card_prompt():
    assert render_instruct("The capital of France is?") == "Q: The capital of France is?\nA:"
    assert render_instruct("  padded \n") == "Q: padded\nA:"


def test_render_chat_multi_turn():
    assert render_chat(CONVERSATION[1:4], add_generation_prompt=True) == (
        "<human>: What does `json.dumps` do?\n"
        "<bot>: Serialize ``obj`` to a JSON formatted ``str``.<|endoftext|>"
        "<human>: And json.loads?\n"
        "<bot>:"
    )
    assert render_chat(CONVERSATION) == (
        "You answer questions about Python.\n"
        "<human>: What does `json.dumps` do?\n"
        "<bot>: Serialize ``obj`` to a JSON formatted ``str``.<|endoftext|>"
        "<human>: And json.loads?\n"
        "<bot>: Deserialize a JSON document to a Python object.<|endoftext|>"
    )
    with pytest.raises(ValueError, match="unknown chat role 'tool'"):
        render_chat([{"role": "tool", "content": "x"}])


@pytest.mark.parametrize("upto", [1, 2, 4, 5])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_through_transformers_equals_render_chat(tokenizer, upto, add_generation_prompt):
    messages = CONVERSATION[:upto]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert rendered == render_chat(messages, add_generation_prompt=add_generation_prompt)


def test_chat_template_survives_save_and_load(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    hi = [{"role": "user", "content": "hi"}]
    assert reloaded.apply_chat_template(hi, tokenize=False, add_generation_prompt=True) == "<human>: hi\n<bot>:"
    ids = reloaded.apply_chat_template(hi, add_generation_prompt=True)
    assert reloaded.decode(ids) == "<human>: hi\n<bot>:"


def test_chat_template_rejects_unknown_roles(tokenizer):
    with pytest.raises(Exception, match="unknown chat role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def _scored_text(tokenizer, encoded) -> list[str]:
    """The decoded runs of consecutive scored tokens."""
    runs, current = [], []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        if label == IGNORE_INDEX:
            if current:
                runs.append(tokenizer.decode(current))
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_tokenize_chat_masks_everything_but_replies_and_eos(tokenizer):
    encoded = tokenize_example(tokenizer, {"messages": CONVERSATION}, style="chat")
    assert len(encoded["input_ids"]) == len(encoded["labels"])
    assert tokenizer.decode(encoded["input_ids"]) == render_chat(CONVERSATION)
    assert _scored_text(tokenizer, encoded) == [
        " Serialize ``obj`` to a JSON formatted ``str``.<|endoftext|>",
        " Deserialize a JSON document to a Python object.<|endoftext|>",
    ]
    eos_positions = [i for i, t in enumerate(encoded["input_ids"]) if t == tokenizer.eos_token_id]
    assert [encoded["labels"][i] for i in eos_positions] == [tokenizer.eos_token_id] * 2


def test_tokenize_instruct(tokenizer):
    example = {"messages": [{"role": "user", "content": "The capital of France is?"}, {"role": "assistant", "content": "Paris"}]}
    encoded = tokenize_example(tokenizer, example, style="instruct")
    assert tokenizer.decode(encoded["input_ids"]) == "Q: The capital of France is?\nA: Paris<|endoftext|>"
    prompt_ids = tokenizer("Q: The capital of France is?\nA:", add_special_tokens=False)["input_ids"]
    assert encoded["labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert _scored_text(tokenizer, encoded) == [" Paris<|endoftext|>"]
    with pytest.raises(ValueError, match="style='chat'"):
        tokenize_example(tokenizer, {"messages": CONVERSATION}, style="instruct")


@pytest.mark.parametrize(("fmt", "name", "style"), [("instruct_jsonl", "instruct.jsonl", "instruct"), ("chat_jsonl", "chat.jsonl", "chat")])
def test_piecewise_ids_equal_whole_text_ids_on_bundled_data(tokenizer, fmt, name, style):
    """Tokenizing prompt and reply apart gives the ids the served model sees for the whole text."""
    for example in load_examples(fmt, resolve_path(f"bundled:sft/{name}")):
        encoded = tokenize_example(tokenizer, example, style=style)
        if style == "chat":
            text = render_chat(example["messages"])
        else:
            text = render_instruct(example["messages"][0]["content"]) + " " + example["messages"][1]["content"].strip() + "<|endoftext|>"
        assert encoded["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
