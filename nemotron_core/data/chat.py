"""Chat records -> training sequences -> role-labelled chunks, as the reference Nano3 SFT prep.

The rendering is the tokenizer's chat template (`apply_chat_template`), so the real Nano3
tokenizer directory works unchanged and the shipped tiny one by default. The template
switches are passed both as top-level variables and inside `chat_template_kwargs` (the
reference's own Nano3 template reads the latter).

Template modes (`tokenizer.chat_template`, NeMo RL's convention; `set_chat_template`):
    default             the tokenizer's own template
    passthrough / null  messages' contents concatenated as they are (`PASSTHROUGH_TEMPLATE`), for
                        data templated offline: each message is its own chunk, assistant ones trained
    <file path>         a Jinja template file (e.g. `my_template.jinja`)
    <Jinja string>      the template itself (anything holding `{{` or `{%`)
Chunking (below) works the same in every mode: a template whose renderings do not extend each
other raises ChunkingError naming the record.

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

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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

DEFAULT_TEMPLATE = "default"
PASSTHROUGH = "passthrough"
# NeMo RL's passthrough template: the contents, nothing added (no roles, no generation prompt).
PASSTHROUGH_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def resolve_chat_template(spec: str | None, *, config_key: str = "tokenizer.chat_template") -> str | None:
    """The template text `spec` selects, or None for "default" (keep the tokenizer's own).

    Raises FileNotFoundError when `spec` looks like a path (no `{{` / `{%`) and no such file exists;
    ValueError naming the key and line for a Jinja syntax error. Nothing is rendered here.
    """
    if spec == DEFAULT_TEMPLATE:
        return None
    if spec is None or spec == PASSTHROUGH:
        return PASSTHROUGH_TEMPLATE
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"{config_key} must be 'default', 'passthrough', null, a Jinja file or a Jinja string, got {spec!r}")
    if "{{" in spec or "{%" in spec:
        text, source = spec, config_key
    else:
        path = Path(os.path.expanduser(spec))
        if not path.is_file():
            raise FileNotFoundError(
                f"{config_key}={spec!r} is not 'default', 'passthrough', an existing template file or a Jinja "
                "string (one holding '{{' or '{%')"
            )
        text, source = path.read_text(encoding="utf-8"), f"{config_key}={spec}"
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"{source}: line {e.lineno}: Jinja syntax error: {e.message}") from e
    return text


def with_chat_template(tokenizer_fp, spec: str | None, *, config_key: str = "tokenizer.chat_template"):
    """`tokenizer_fp` (a TokenizerFingerprint of the tokenizer as loaded) with the chat-template hash
    of the template `spec` selects, i.e. the fingerprint `set_chat_template` would give."""
    import dataclasses
    from types import SimpleNamespace

    from nemotron_core.tokenization import chat_template_hash

    text = resolve_chat_template(spec, config_key=config_key)
    if text is None:
        return tokenizer_fp
    return dataclasses.replace(tokenizer_fp, chat_template_hash=chat_template_hash(SimpleNamespace(chat_template=text)))


def set_chat_template(tokenizer, spec: str | None, *, config_key: str = "tokenizer.chat_template"):
    """Put the template `spec` selects (see the module docstring) on `tokenizer`, in place; returns it.

    Raises ValueError for "default" when the tokenizer has no template of its own, and whatever
    `resolve_chat_template` raises.
    """
    text = resolve_chat_template(spec, config_key=config_key)
    if text is not None:
        tokenizer.chat_template = text
    elif not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{config_key}=default, but the tokenizer has no chat template: set {config_key} to 'passthrough', "
            "a Jinja file or a Jinja string"
        )
    return tokenizer


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


_IM_START = "<|im_start|>"
_PROMPT_THINK = "<|im_start|>assistant\n<think>\n"
_PROMPT_NO_THINK = "<|im_start|>assistant\n<think></think>"


def chunk_sequence_single_render(
    messages: list[dict[str, Any]], *, tools, reasoning: bool, render: Renderer, where: str
) -> TrainingSequence | None:
    """The chunks of `chunk_sequence` from ONE rendering of the whole sequence, or None.

    Renders once and cuts at the turn boundaries of the Nano3 format (every turn starts with
    `<|im_start|>`; consecutive tool results share one user turn; a generation prompt is the
    start of the next assistant turn). Returns None, so the caller falls back to the reference
    algorithm, whenever the rendering does not have exactly the expected turns with the expected
    headers (another template, literal `<|im_start|>` in a message, content with its own think
    block). Where it returns chunks they equal the reference's (tested on all shipped data).
    """
    full = render(messages, tools=tools, add_generation_prompt=False, enable_thinking=reasoning)
    starts = list(_find_all(full, _IM_START))
    if not starts or starts[0] != 0:
        return None
    ends = starts[1:] + [len(full)]
    # turn 0 is the system turn (always emitted); then one turn per message, tool runs shared
    first = 1 if messages and messages[0]["role"] == "system" else 0
    turn_of: list[int] = [0] * len(messages)
    t = 0
    for i in range(first, len(messages)):
        if not (messages[i]["role"] == "tool" and i > 0 and messages[i - 1]["role"] == "tool"):
            t += 1
        turn_of[i] = t
    if t + 1 != len(starts):
        return None
    for i in range(first, len(messages)):
        role = "user" if messages[i]["role"] == "tool" else messages[i]["role"]
        if not full.startswith(f"{_IM_START}{role}\n", starts[turn_of[i]]):
            return None

    def end_of(i: int) -> int | None:
        end = ends[turn_of[i]]
        nxt = messages[i + 1] if i + 1 < len(messages) else None
        if messages[i]["role"] in ("user", "tool") and nxt is not None and nxt["role"] == "assistant":
            prompt = _PROMPT_THINK if (reasoning and nxt.get("reasoning_content")) else _PROMPT_NO_THINK
            if not full.startswith(prompt, end):
                return None
            end += len(prompt)
        return end

    chunks: list[Chunk] = []
    prev = 0
    start = 0
    if reasoning:
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
        if last_user >= 0:
            prev = end_of(last_user)
            if prev is None:
                return None
            chunks.append(Chunk(full[:prev], False))
            start = last_user + 1
    for i in range(start, len(messages)):
        if messages[i]["role"] == "tool" and i + 1 < len(messages) and messages[i + 1]["role"] == "tool":
            continue
        end = end_of(i)
        if end is None:
            return None
        chunks.append(Chunk(full[prev:end], messages[i]["role"] == "assistant"))
        prev = end
    if prev != len(full):
        return None
    return TrainingSequence(chunks=[c for c in chunks if c.text], where=where, reasoning=reasoning)


def _find_all(text: str, needle: str):
    i = text.find(needle)
    while i >= 0:
        yield i
        i = text.find(needle, i + len(needle))


def record_to_sequences(record: Record, *, render: Renderer, single_render: bool = False) -> list[TrainingSequence]:
    """All training sequences of one validated record.

    `single_render=True` tries `chunk_sequence_single_render` first (one rendering per sequence
    instead of one per message) and falls back to the reference `chunk_sequence` per sequence.
    """
    out = []
    for msgs, reasoning in split_sequences(record.messages):
        seq = None
        if single_render:
            seq = chunk_sequence_single_render(msgs, tools=record.tools, reasoning=reasoning, render=render, where=record.where)
        if seq is None:
            seq = chunk_sequence(msgs, tools=record.tools, reasoning=reasoning, render=render, where=record.where)
        out.append(seq)
    return out
