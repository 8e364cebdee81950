"""Prompt formats of the RedPajama-INCITE fine-tunes, and tokenization with loss masks.

Two styles, both ending every model turn with the tokenizer's EOS (`<|endoftext|>`) so that
generation stops there:

* instruct (RedPajama-INCITE-Instruct): ``Q: <prompt>\\nA: <response><|endoftext|>``. The
  model card's Quick Start prompts the model with ``prompt = "Q: The capital of France is?\\nA:"``
  (https://huggingface.co/togethercomputer/RedPajama-INCITE-Instruct-3B-v1, README "GPU Inference").
* chat (RedPajama-INCITE-Chat): ``<human>: <message>\\n<bot>: <reply><|endoftext|>`` repeated per
  exchange; the model card's "Prompt Template" is ``<human>: [Instruction]\\n<bot>:``
  (https://huggingface.co/togethercomputer/RedPajama-INCITE-Chat-3B-v1). The format has no system
  slot: a system message is rendered as a plain line before the turns that follow it.

Message contents are stripped of surrounding whitespace (Python `str.strip`, which is also what
Jinja's `trim` filter does), so that the template's own separators are the only whitespace at a
turn boundary and a reply always starts a fresh token after ``<bot>:``.

`CHAT_TEMPLATE` is the same chat format as a Jinja chat template, to be stored in the exported
tokenizer (`tokenizer.chat_template = CHAT_TEMPLATE`): `tokenizer.apply_chat_template(messages,
add_generation_prompt=True)` then yields ``...<human>: hi\\n<bot>:`` exactly as `render_chat` does.

`tokenize_example` tokenizes a conversation piece by piece so that labels are exact: -100 on
every prompt token (system lines, ``<human>:`` turns, the ``<bot>:`` marker, ``Q:``/``A:``) and
the token ids of each reply followed by EOS. Pieces are split where the template itself starts a
new word or special token (after ``<bot>:``/``A:`` and after EOS), so the concatenated ids equal
the ids of the whole rendered text for byte-level BPE tokenizers (tested).
"""

from __future__ import annotations

from typing import Literal

EOS_TOKEN = "<|endoftext|>"
IGNORE_INDEX = -100  # the label value transformers' causal-LM loss skips

HUMAN_PREFIX = "<human>:"
BOT_PREFIX = "<bot>:"
INSTRUCT_TEMPLATE = "Q: {prompt}\nA:"
# Where an instruct model's answer ends if it runs past EOS into a next question
# (pajama.kinds holds every style's stops).
INSTRUCT_TURN_STOP = "\nQ:"

ROLES = ("system", "user", "assistant")

# Keep in step with render_chat; tests render both and compare.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ message['content'] | trim }}{{ '\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ '<human>: ' }}{{ message['content'] | trim }}{{ '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '<bot>: ' }}{{ message['content'] | trim }}{{ eos_token }}"
    "{%- else -%}"
    "{{ raise_exception('unknown chat role ' ~ message['role'] ~ '; expected system, user or assistant') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<bot>:' }}{%- endif -%}"
)

# The instruct format as a chat template, so `apply_chat_template` also works for instruct models:
# earlier exchanges become Q/A pairs and the generation prompt is the answer marker.
INSTRUCT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ 'Q: ' }}{{ message['content'] | trim }}{{ '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'A: ' }}{{ message['content'] | trim }}{{ eos_token }}{{ '\\n' }}"
    "{%- else -%}"
    "{{ message['content'] | trim }}{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'A:' }}{%- endif -%}"
)


def _check_role(message: dict) -> str:
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"unknown chat role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def render_instruct(prompt: str) -> str:
    """The instruct prompt the model completes: ``Q: <prompt>\\nA:``."""
    return INSTRUCT_TEMPLATE.format(prompt=prompt.strip())


def render_chat(messages: list[dict], add_generation_prompt: bool = False, eos_token: str = EOS_TOKEN) -> str:
    """The chat format as text; with `add_generation_prompt` it ends with ``<bot>:`` for the model."""
    parts = []
    for message in messages:
        role, content = _check_role(message), message["content"].strip()
        if role == "system":
            parts.append(f"{content}\n")
        elif role == "user":
            parts.append(f"{HUMAN_PREFIX} {content}\n")
        else:
            parts.append(f"{BOT_PREFIX} {content}{eos_token}")
    if add_generation_prompt:
        parts.append(BOT_PREFIX)
    return "".join(parts)


def _chat_pieces(messages: list[dict]) -> list[tuple[str, bool]]:
    """(text, is_response) pieces whose concatenation (+EOS after each response) is render_chat."""
    pieces, prompt = [], ""
    for message in messages:
        role, content = _check_role(message), message["content"].strip()
        if role == "system":
            prompt += f"{content}\n"
        elif role == "user":
            prompt += f"{HUMAN_PREFIX} {content}\n"
        else:
            pieces.append((prompt + BOT_PREFIX, False))
            pieces.append((f" {content}", True))
            prompt = ""
    if prompt:  # a trailing user turn without reply: context only
        pieces.append((prompt, False))
    return pieces


def _instruct_pieces(messages: list[dict]) -> list[tuple[str, bool]]:
    roles = [_check_role(m) for m in messages]
    if roles != ["user", "assistant"]:
        raise ValueError(
            f"the instruct style takes one user prompt and one assistant response, got roles {roles}; "
            "use style='chat' for multi-turn conversations"
        )
    return [(render_instruct(messages[0]["content"]), False), (f" {messages[1]['content'].strip()}", True)]


def tokenize_example(tokenizer, example: dict, style: Literal["instruct", "chat"]) -> dict:
    """Token ids and labels of one example: -100 on prompt tokens, reply ids + EOS kept.

    `tokenizer` is a transformers tokenizer with an EOS token; `example["messages"]` is the
    conversation. No BOS or other special tokens are added besides the EOS after each reply.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token (e.g. '<|endoftext|>')")
    if style == "chat":
        pieces = _chat_pieces(example["messages"])
    elif style == "instruct":
        pieces = _instruct_pieces(example["messages"])
    else:
        raise ValueError(f"unknown style {style!r}; expected 'instruct' or 'chat'")
    input_ids: list[int] = []
    labels: list[int] = []
    for text, is_response in pieces:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if is_response:
            ids = ids + [tokenizer.eos_token_id]
            labels.extend(ids)
        else:
            labels.extend([IGNORE_INDEX] * len(ids))
        input_ids.extend(ids)
    return {"input_ids": input_ids, "labels": labels}
