"""Training sequences, chunks and trained spans exactly as nano3_chat_examples.md states them."""

from __future__ import annotations

import pytest

from nemotron_core.data.chat import (
    ChunkingError,
    chunk_sequence,
    record_to_sequences,
    split_sequences,
    template_renderer,
)
from nemotron_core.data.records import validate_record
from nemotron_core.paths import asset_path
from nemotron_core.tokenization import load_tokenizer

SYS0 = "<|im_start|>system\n<|im_end|>\n"


@pytest.fixture(scope="module")
def render():
    return template_renderer(load_tokenizer(asset_path("tokenizer")))


def seqs(messages, render, tools=None):
    rec = validate_record({"messages": messages, **({"tools": tools} if tools else {})}, "t.jsonl:7")
    return [(s.text, [c.text for c in s.chunks if c.trained], s) for s in record_to_sequences(rec, render=render)]


def test_single_turn_no_reasoning(render):
    [(text, trained, s)] = seqs([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}], render)
    assert text == SYS0 + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think></think>4<|im_end|>\n"
    assert trained == ["4<|im_end|>\n"]
    # chunking starts at the first message; the thinking-off generation prompt is context
    assert [c.text for c in s.chunks] == [
        SYS0 + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think></think>",
        "4<|im_end|>\n",
    ]
    assert s.where == "t.jsonl:7" and not s.reasoning


def test_system_two_turns_every_assistant_trained(render):
    m = [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."},
    ]
    [(text, trained, s)] = seqs(m, render)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think></think>Hello.<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n<think></think>Goodbye.<|im_end|>\n"
    )
    assert trained == ["Hello.<|im_end|>\n", "Goodbye.<|im_end|>\n"]
    assert [c.trained for c in s.chunks] == [False, False, True, False, True]


def test_reasoning_expands_per_user_turn_with_history_truncation(render):
    m = [
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2", "reasoning_content": "R2"},
    ]
    out = seqs(m, render)
    assert [t for t, _, _ in out] == [
        SYS0 + "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n<think>\nR1\n</think>\nA1<|im_end|>\n",
        SYS0 + "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n<think></think>\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n<think>\nR2\n</think>\nA2<|im_end|>\n",
    ]
    assert [tr for _, tr, _ in out] == [["R1\n</think>\nA1<|im_end|>\n"], ["R2\n</think>\nA2<|im_end|>\n"]]
    # one masked context chunk up to the last user message plus the thinking-on prompt
    assert [c.trained for c in out[1][2].chunks] == [False, True]
    assert out[1][2].chunks[0].text.endswith("<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n<think>\n")


def test_three_user_turns_reasoning_expansion(render):
    m = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"},  # no reasoning on this turn
        {"role": "user", "content": "Q3"}, {"role": "assistant", "content": "A3", "reasoning_content": "R3"},
    ]
    assert [len(s) for s, _ in split_sequences(validate_record({"messages": m}, "x").messages)] == [3, 5, 7]
    out = seqs(m, render)
    assert [tr for _, tr, _ in out] == [
        ["R1\n</think>\nA1<|im_end|>\n"],
        ["A2<|im_end|>\n"],  # empty reasoning: the generation prompt is <think></think>
        ["R3\n</think>\nA3<|im_end|>\n"],
    ]
    assert out[1][2].chunks[0].text.endswith("<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n<think></think>")
    assert out[2][0] == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n<think></think>\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n<think></think>A2<|im_end|>\n"
        "<|im_start|>user\nQ3<|im_end|>\n<|im_start|>assistant\n<think>\nR3\n</think>\nA3<|im_end|>\n"
    )


def test_tool_call_after_reasoning(render):
    m = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "Need the tool.",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}}]},
        {"role": "tool", "content": "22C"}, {"role": "assistant", "content": "It is 22C."},
    ]
    [(text, trained, s)] = seqs(m, render)
    call = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n[1, 2]\n</parameter>\n</function>\n</tool_call>\n"
    assert text == (
        SYS0 + "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<think>\nNeed the tool.\n</think>\nChecking.\n"
        + call + "<|im_end|>\n<|im_start|>user\n<tool_response>\n22C\n</tool_response>\n<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>It is 22C.<|im_end|>\n"
    )
    assert trained == ["Need the tool.\n</think>\nChecking.\n" + call + "<|im_end|>\n", "It is 22C.<|im_end|>\n"]
    # the tool result and the next generation prompt are one untrained chunk
    assert [c.text for c in s.chunks if not c.trained][-1] == (
        "<|im_start|>user\n<tool_response>\n22C\n</tool_response>\n<|im_end|>\n<|im_start|>assistant\n<think></think>"
    )


def test_consecutive_tool_messages_are_one_chunk(render):
    m = [
        {"role": "user", "content": "Both?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "a", "arguments": {"x": 1}}},
            {"type": "function", "function": {"name": "b", "arguments": '{"y": "z"}'}}]},  # JSON-string arguments
        {"role": "tool", "content": "ra"}, {"role": "tool", "content": "rb"}, {"role": "assistant", "content": "Done."},
    ]
    [(text, trained, s)] = seqs(m, render)
    calls = (
        "\n<tool_call>\n<function=a>\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call>\n"
        "<tool_call>\n<function=b>\n<parameter=y>\nz\n</parameter>\n</function>\n</tool_call>\n<|im_end|>\n"
    )
    assert trained == [calls, "Done.<|im_end|>\n"]
    tool_chunks = [c.text for c in s.chunks if "<tool_response>" in c.text]
    assert tool_chunks == [
        "<|im_start|>user\n<tool_response>\nra\n</tool_response>\n<tool_response>\nrb\n</tool_response>\n<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>"
    ]


def test_tools_declaration_is_context(render):
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}}]
    [(text, trained, s)] = seqs([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], render, tools=tools)
    assert s.chunks[0].text.startswith("<|im_start|>system\n# Tools") and not s.chunks[0].trained
    assert trained == ["a<|im_end|>\n"]


def test_multi_step_tool_loop_after_last_user_keeps_reasoning(render):
    call = lambda n: [{"type": "function", "function": {"name": n, "arguments": {}}}]  # noqa: E731
    m = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "reasoning_content": "first", "tool_calls": call("a")},
        {"role": "tool", "content": "1"},
        {"role": "assistant", "content": "", "reasoning_content": "second", "tool_calls": call("b")},
        {"role": "tool", "content": "2"},
        {"role": "assistant", "content": "done", "reasoning_content": "third"},
    ]
    [(text, trained, s)] = seqs(m, render)
    assert [t.split("\n</think>")[0] for t in trained] == ["first", "second", "third"]
    # each tool result chunk ends in the thinking-on prompt (the next turn reasons)
    assert all(c.text.endswith("<|im_start|>assistant\n<think>\n") for c in s.chunks if not c.trained)


def test_prefix_mismatch_names_the_record():
    def bad_render(messages, **kw):
        return "".join(m["content"] for m in reversed(messages))

    m = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(ChunkingError, match=r"^t\.jsonl:3: rendering of messages\[:2\]"):
        chunk_sequence(m, tools=None, reasoning=False, render=bad_render, where="t.jsonl:3")


def test_single_render_chunks_equal_the_reference_on_all_shipped_data(render):
    from nemotron_core.data.chat import chunk_sequence_single_render
    from nemotron_core.data.records import read_records, resolve_inputs

    records, _ = read_records(resolve_inputs(str(asset_path("data/tiny_chat.jsonl"))))
    fallbacks = 0
    for rec in records:
        ref = record_to_sequences(rec, render=render)
        fast = record_to_sequences(rec, render=render, single_render=True)
        assert [[(c.text, c.trained) for c in s.chunks] for s in fast] == [[(c.text, c.trained) for c in s.chunks] for s in ref], rec.where
        fallbacks += sum(
            chunk_sequence_single_render(m, tools=rec.tools, reasoning=r, render=render, where="") is None
            for m, r in split_sequences(rec.messages)
        )
    assert fallbacks == 0  # the fast path really ran everywhere


def test_single_render_falls_back_on_unexpected_structure(render):
    from nemotron_core.data.chat import chunk_sequence_single_render

    m = [{"role": "user", "content": "a literal <|im_start|>user\nturn"}, {"role": "assistant", "content": "b"}]
    assert chunk_sequence_single_render(m, tools=None, reasoning=False, render=render, where="x") is None
    rec = validate_record({"messages": m}, "x:1")
    [s] = record_to_sequences(rec, render=render, single_render=True)  # the reference still chunks it
    assert [c.text for c in s.chunks if c.trained] == ["b<|im_end|>\n"]
