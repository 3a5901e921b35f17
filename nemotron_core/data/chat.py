"""Chat records -> training sequences -> role-labelled chunks, as the reference Nano3 SFT prep.

The rendering is always the tokenizer's own chat template (`apply_chat_template`), so the real
Nano3 tokenizer directory works unchanged and the shipped tiny one by default. The template
switches are passed both as top-level variables and inside `chat_template_kwargs` (the
reference's own Nano3 template reads the latter).

Semantics (nano3.md section 5; worked examples in nano3_chat_examples.md):

1. Sequences. A conversation with any non-empty `reasoning_content` becomes one sequence per
   user turn: sequence i = the messages before user turn i+1 (the last = the whole
   conversation), rendered with thinking on; only messages after its last user message are
   trained, so each turn's reasoning is trained exactly once. A conversation without reasoning
   is one sequence, thinking off, every assistant turn trained.
2. Chunks. In a reasoning sequence, everything up to the last user message plus the generation
   prompt is one context chunk; without reasoning, chunking starts at the first message. Each
   later message i gives chunk i = render(messages[:i+1]) minus the previous rendering (with the
   generation prompt when message i is user/tool and the next one is the assistant). The prompt is
   `<|im_start|>assistant\\n<think>\\n`, or `<|im_start|>assistant\\n<think></think>` when the
   next assistant turn has empty reasoning or thinking is off. Consecutive tool messages form
   one chunk. Every rendering must extend the previous one: a mismatch raises ChunkingError
   naming the record.
3. Roles. Assistant chunks are trained (reasoning, `</think>`, content, tool calls, the closing
   `<|im_end|>\\n`); everything else (system, user, tool results, generation prompts) is not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nemotron_core.data.records import Record


class ChunkingError(ValueError):
    """A rendering is not a prefix of the next one: the template cannot be chunked incrementally."""


@dataclass
class Chunk:
    text: str
    trained: bool


@dataclass
class TrainingSequence:
    chunks: list[Chunk]
    where: str  # file:line of the record
    reasoning: bool

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)


# render(messages, *, tools, add_generation_prompt, enable_thinking) -> str
Renderer = Callable[..., str]


def template_renderer(tokenizer, *, truncate_history_thinking: bool = True, reasoning_budget: int | None = None) -> Renderer:
    """A renderer over `tokenizer.apply_chat_template`, switches passed both ways."""

    def render(messages, *, tools, add_generation_prompt, enable_thinking):
        switches = {"enable_thinking": enable_thinking, "truncate_history_thinking": truncate_history_thinking}
        if reasoning_budget is not None:
            switches["reasoning_budget"] = reasoning_budget
        return tokenizer.apply_chat_template(
            messages,
            tools=tools,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            chat_template_kwargs=dict(switches),
            **switches,
        )

    return render


def has_reasoning(messages: list[dict[str, Any]]) -> bool:
    return any(m["role"] == "assistant" and m.get("reasoning_content") for m in messages)


def split_sequences(messages: list[dict[str, Any]]) -> list[tuple[list[dict[str, Any]], bool]]:
    """(messages, reasoning) per training sequence: one per user turn when the conversation has
    reasoning, else the whole conversation once."""
    if not has_reasoning(messages):
        return [(messages, False)]
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        return [(messages, True)]
    ends = users[1:] + [len(messages)]
    return [(messages[:end], True) for end in ends]


def _next_thinks(messages: list[dict[str, Any]], i: int, thinking: bool) -> bool:
    """Generation prompt after message i: thinking on only if the next assistant reasons."""
    nxt = messages[i + 1] if i + 1 < len(messages) else None
    return bool(thinking and nxt is not None and nxt.get("reasoning_content"))


def chunk_sequence(
    messages: list[dict[str, Any]], *, tools, reasoning: bool, render: Renderer, where: str
) -> TrainingSequence:
    """Role-labelled chunks of one training sequence (see the module docstring)."""
    chunks: list[Chunk] = []
    prev = ""
    start = 0
    if reasoning:
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
        if last_user >= 0:
            gen = last_user + 1 < len(messages) and messages[last_user + 1]["role"] == "assistant"
            prev = render(
                messages[: last_user + 1], tools=tools, add_generation_prompt=gen,
                enable_thinking=_next_thinks(messages, last_user, True),
            )
            chunks.append(Chunk(prev, False))
            start = last_user + 1
    for i in range(start, len(messages)):
        role = messages[i]["role"]
        nxt = messages[i + 1]["role"] if i + 1 < len(messages) else None
        if role == "tool" and nxt == "tool":
            continue  # consecutive tool results share one user turn: one chunk at the end of the run
        gen = role in ("user", "tool") and nxt == "assistant"
        text = render(
            messages[: i + 1], tools=tools, add_generation_prompt=gen,
            enable_thinking=_next_thinks(messages, i, reasoning) if gen else reasoning,
        )
        if not text.startswith(prev):
            k = next((j for j, (a, b) in enumerate(zip(prev, text)) if a != b), min(len(prev), len(text)))
            raise ChunkingError(
                f"{where}: rendering of messages[:{i + 1}] does not extend the rendering of the previous "
                f"messages (first difference at character {k}: {prev[k:k + 40]!r} vs {text[k:k + 40]!r}); "
                "this chat template cannot be split into role chunks"
            )
        chunks.append(Chunk(text[len(prev):], role == "assistant"))
        prev = text
    return TrainingSequence(chunks=[c for c in chunks if c.text], where=where, reasoning=reasoning)


def record_to_sequences(record: Record, *, render: Renderer) -> list[TrainingSequence]:
    """All training sequences of one validated record."""
    return [
        chunk_sequence(msgs, tools=record.tools, reasoning=reasoning, render=render, where=record.where)
        for msgs, reasoning in split_sequences(record.messages)
    ]
