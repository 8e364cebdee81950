"""The three kinds of model Pajama trains and serves, each with its prompt style: one table.

A model kind says which DAG stage trains it, the name it is registered under in MLflow, and its
prompt style. A prompt style says how a user prompt is put to the model (base: as is; instruct:
``Q: ...\\nA:``; chat: ``<human>: ...\\n<bot>:``, see `pajama.sft.templates`), which chat template
renders a conversation for it, and where its output stops: a reply ends where the model starts
the next user turn (`reply_stops`: in chat requests and the check-set comparison), and a raw
completion of a fine-tuned model stops there too, while a base model's text runs on as it likes
(`completion_stops`). Fine-tuning, serving, the comparison and the CLI all read this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pajama.sft import templates

KindName = Literal["base", "instruct", "chat"]


@dataclass(frozen=True)
class PromptStyle:
    name: Literal["plain", "instruct", "chat"]
    chat_template: str
    reply_stops: tuple[str, ...]
    completion_stops: tuple[str, ...]

    def render_prompt(self, prompt: str) -> str:
        """A single user prompt as this style puts it to the model."""
        if self.name == "instruct":
            return templates.render_instruct(prompt)
        if self.name == "chat":
            return templates.render_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return prompt


# A base model has seen no turns: stopping a chat reply where a turn would start only shortens
# what it rambles on with, and its conversations are rendered in the chat format.
PLAIN = PromptStyle("plain", templates.CHAT_TEMPLATE, reply_stops=(templates.HUMAN_PREFIX,), completion_stops=())
INSTRUCT = PromptStyle("instruct", templates.INSTRUCT_CHAT_TEMPLATE,
                       reply_stops=(templates.INSTRUCT_TURN_STOP, templates.HUMAN_PREFIX),
                       completion_stops=(templates.INSTRUCT_TURN_STOP, templates.HUMAN_PREFIX))
CHAT = PromptStyle("chat", templates.CHAT_TEMPLATE, reply_stops=(templates.HUMAN_PREFIX,),
                   completion_stops=(templates.HUMAN_PREFIX,))


@dataclass(frozen=True)
class ModelKind:
    name: KindName
    stage: str  # the DAG stage that trains it
    registered_name: str  # its name in the MLflow model registry
    style: PromptStyle


KINDS: dict[str, ModelKind] = {k.name: k for k in (
    ModelKind("base", "pretrain", "pajama-base", PLAIN),
    ModelKind("instruct", "instruct", "pajama-instruct", INSTRUCT),
    ModelKind("chat", "chat", "pajama-chat", CHAT),
)}


def kind(name: str) -> ModelKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown model kind {name!r}; expected one of {', '.join(KINDS)}") from None


def kind_of_stage(stage: str) -> ModelKind | None:
    """The kind a stage trains, or None for a stage that trains no model."""
    return next((k for k in KINDS.values() if k.stage == stage), None)


def kind_named(name: str) -> ModelKind | None:
    """The kind called `name` or registered as `name` (`chat`, `pajama-chat`), if any."""
    return next((k for k in KINDS.values() if name in (k.name, k.registered_name)), None)
