"""The tiny tokenizer and the Nano3 chat template: exact renderings, byte for byte.

Renderings go through `AutoTokenizer.from_pretrained(nemotron_core/assets/tokenizer).apply_chat_template`, the
path every stage uses. Expected strings come from /work/shared/docs/nano3_chat_examples.md (the public Nano3
template's output) and from the rules in nano3.md section 4.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jinja2
import pytest
from transformers import AutoTokenizer

REPO = Path(__file__).parents[3]
TOKENIZER_DIR = REPO / "nemotron_core/assets/tokenizer"
TEMPLATE_SRC = REPO / "nemotron_core/assets/nano3_chat_template.jinja"
BUILD_SCRIPT = REPO / "scripts/build_tiny_tokenizer.py"

SPECIAL_IDS = {
    "<pad>": 0,
    "<s>": 1,
    "</s>": 2,
    "<|im_start|>": 3,
    "<|im_end|>": 4,
    "<think>": 5,
    "</think>": 6,
    "<tool_call>": 7,
    "</tool_call>": 8,
    "<tool_response>": 9,
    "</tool_response>": 10,
}

EMPTY_SYSTEM = "<|im_start|>system\n<|im_end|>\n"
GEN_ON = "<|im_start|>assistant\n<think>\n"
GEN_OFF = "<|im_start|>assistant\n<think></think>"

# The tools block of the get_weather tool below, then the fixed call-format instructions.
WEATHER_TOOLS_BLOCK = (
    "# Tools\n\nYou can call the functions listed below.\n\n<tools>\n"
    "<function>\n<name>get_weather</name>\n<description>Current weather and forecast.</description>\n"
    "<parameters>\n"
    "<parameter>\n<name>city</name>\n<type>string</type>\n<description>City name</description>\n</parameter>\n"
    "<parameter>\n<name>days</name>\n<type>array</type>\n<description>Days ahead</description>\n"
    '<items>{"type": "integer"}</items>\n</parameter>\n'
    "<parameter>\n<name>unit</name>\n<type>string</type>\n"
    '<enum>["C", "F"]</enum>\n</parameter>\n'
    '<required>["city"]</required>\n'
    "</parameters>\n</function>\n</tools>\n\n"
    "To call a function, answer with one or more blocks in exactly this form:\n\n"
    "<tool_call>\n<function=name_of_the_function>\n<parameter=first_argument>\nvalue of the first argument\n"
    "</parameter>\n<parameter=second_argument>\na value may span\nseveral lines\n</parameter>\n</function>\n"
    "</tool_call>\n\n"
    "Rules:\n"
    "- Each call is one <tool_call></tool_call> block holding exactly one <function=...></function> block.\n"
    "- Give every required parameter; lists and objects are written as JSON.\n"
    "- Text may come before the calls, never after them: the turn ends after the last </tool_call>.\n"
    "- When no function is needed, answer directly without any <tool_call> block."
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather and forecast.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "days": {"type": "array", "description": "Days ahead", "items": {"type": "integer"}},
                "unit": {"type": "string", "enum": ["C", "F"]},
            },
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def render(tok, messages, **kwargs) -> str:
    return tok.apply_chat_template(messages, tokenize=False, **kwargs)


def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


# --------------------------------------------------------------------------- nano3_chat_examples.md

SINGLE = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
SYSTEM_TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye."},
]
TWO_REASONING = [
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
    {"role": "user", "content": "Q2"},
    {"role": "assistant", "content": "A2", "reasoning_content": "R2"},
]
TOOL_AFTER_REASONING = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "Checking.",
        "reasoning_content": "Need the tool.",
        "tool_calls": [call("get_weather", {"city": "Paris", "days": [1, 2]})],
    },
    {"role": "tool", "content": "22C"},
    {"role": "assistant", "content": "It is 22C."},
]
TWO_TOOL_RESPONSES = [
    {"role": "user", "content": "Both?"},
    {"role": "assistant", "content": "", "tool_calls": [call("a", {"x": 1}), call("b", {"y": "z"})]},
    {"role": "tool", "content": "ra"},
    {"role": "tool", "content": "rb"},
    {"role": "assistant", "content": "Done."},
]

EXAMPLE_SEQUENCES = [
    (
        "single_turn",
        SINGLE,
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>4<|im_end|>\n",
    ),
    (
        "system_two_turns",
        SYSTEM_TWO_TURNS,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>Hello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>Goodbye.<|im_end|>\n",
    ),
    (
        "reasoning_first_sequence",
        TWO_REASONING[:2],
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nR1\n</think>\nA1<|im_end|>\n",
    ),
    (
        "reasoning_history_truncated",
        TWO_REASONING,
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nR2\n</think>\nA2<|im_end|>\n",
    ),
    (
        "tool_after_reasoning",
        TOOL_AFTER_REASONING,
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nNeed the tool.\n</think>\nChecking.\n<tool_call>\n<function=get_weather>\n"
        "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n[1, 2]\n</parameter>\n</function>\n</tool_call>\n"
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n22C\n</tool_response>\n<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>It is 22C.<|im_end|>\n",
    ),
    (
        "two_tool_responses",
        TWO_TOOL_RESPONSES,
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nBoth?<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>\n<tool_call>\n<function=a>\n<parameter=x>\n1\n</parameter>\n"
        "</function>\n</tool_call>\n<tool_call>\n<function=b>\n<parameter=y>\nz\n</parameter>\n</function>\n"
        "</tool_call>\n<|im_end|>\n<|im_start|>user\n<tool_response>\nra\n</tool_response>\n<tool_response>\n"
        "rb\n</tool_response>\n<|im_end|>\n<|im_start|>assistant\n<think></think>Done.<|im_end|>\n",
    ),
]


@pytest.mark.parametrize("name,messages,expected", EXAMPLE_SEQUENCES, ids=[e[0] for e in EXAMPLE_SEQUENCES])
def test_example_sequences(tok, name, messages, expected):
    assert render(tok, messages) == expected


EXAMPLE_PROMPTS = [  # (first user turn and any system message before it, prompt thinking on, prompt thinking off)
    (
        SINGLE[:1],
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n",
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think></think>",
    ),
    (
        SYSTEM_TWO_TURNS[:2],
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n",
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think></think>",
    ),
    (
        TWO_REASONING[:1],
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n<think>\n",
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n<think></think>",
    ),
    (
        TOOL_AFTER_REASONING[:1],
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<think>\n",
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<think></think>",
    ),
    (
        TWO_TOOL_RESPONSES[:1],
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nBoth?<|im_end|>\n<|im_start|>assistant\n<think>\n",
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nBoth?<|im_end|>\n<|im_start|>assistant\n<think></think>",
    ),
]


@pytest.mark.parametrize(
    "prefix,prompt_on,prompt_off", EXAMPLE_PROMPTS, ids=[p[0][-1]["content"] for p in EXAMPLE_PROMPTS]
)
def test_example_generation_prompts(tok, prefix, prompt_on, prompt_off):
    assert render(tok, prefix, add_generation_prompt=True) == prompt_on
    assert render(tok, prefix, add_generation_prompt=True, enable_thinking=True) == prompt_on
    assert render(tok, prefix, add_generation_prompt=True, enable_thinking=False) == prompt_off


def test_example_reasoning_budget(tok):
    out = render(tok, [{"role": "user", "content": "Q"}], add_generation_prompt=True, reasoning_budget=64)
    assert out == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQ\n\n{thinking token budget: 64}<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )


# --------------------------------------------------------------------------- system and tools


def test_system_turn_always_emitted_even_without_messages_before_user(tok):
    assert (
        render(tok, [{"role": "user", "content": "Hi"}])
        == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


def test_empty_system_message_renders_like_none(tok):
    msgs = [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}]
    assert render(tok, msgs) == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_system_with_tools(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"}]
    assert render(tok, msgs, tools=[WEATHER_TOOL]) == (
        "<|im_start|>system\nBe brief.\n\n"
        + WEATHER_TOOLS_BLOCK
        + "<|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n"
    )


def test_tools_without_system(tok):
    msgs = [{"role": "user", "content": "Weather?"}]
    assert render(tok, msgs, tools=[WEATHER_TOOL], add_generation_prompt=True) == (
        "<|im_start|>system\n"
        + WEATHER_TOOLS_BLOCK
        + "<|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n"
        + GEN_ON
    )


def test_tool_without_function_wrapper_or_parameters(tok):
    tool = {"name": "ping", "description": "  Ping the server.\n"}
    out = render(tok, [{"role": "user", "content": "x"}], tools=[tool])
    assert out.startswith(
        "<|im_start|>system\n# Tools\n\nYou can call the functions listed below.\n\n<tools>\n"
        "<function>\n<name>ping</name>\n<description>Ping the server.</description>\n<parameters>\n</parameters>\n"
        "</function>\n</tools>\n\nTo call a function"
    )


def test_empty_tool_list_adds_no_tools_section(tok):
    msgs = [{"role": "user", "content": "Hi"}]
    assert render(tok, msgs, tools=[]) == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


# --------------------------------------------------------------------------- assistant turns and tool calls


def test_assistant_content_stripped_only_with_reasoning(tok):
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "  A \n", "reasoning_content": "R"},
    ]
    assert render(tok, msgs).endswith("<|im_start|>assistant\n<think>\nR\n</think>\nA<|im_end|>\n")
    msgs[1] = {"role": "assistant", "content": " A \n"}
    assert render(tok, msgs).endswith("<|im_start|>assistant\n<think></think> A \n<|im_end|>\n")


def test_empty_reasoning_renders_as_no_reasoning(tok):
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "reasoning_content": ""}]
    assert render(tok, msgs).endswith("<|im_start|>assistant\n<think></think>A<|im_end|>\n")


def test_assistant_content_none_or_missing(tok):
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "tool_calls": [call("f", {"k": "v"})]},
    ]
    expected_call = "<tool_call>\n<function=f>\n<parameter=k>\nv\n</parameter>\n</function>\n</tool_call>\n"
    assert render(tok, msgs).endswith(
        "<|im_start|>assistant\n<think></think>\n" + expected_call + "<|im_end|>\n"
    )
    msgs[1] = {"role": "assistant", "reasoning_content": "R", "tool_calls": [call("f", {"k": "v"})]}
    assert render(tok, msgs).endswith(
        "<|im_start|>assistant\n<think>\nR\n</think>\n\n" + expected_call + "<|im_end|>\n"
    )
    msgs[1] = {"role": "assistant", "reasoning_content": "R"}
    assert render(tok, msgs).endswith("<|im_start|>assistant\n<think>\nR\n</think>\n<|im_end|>\n")


def test_tool_call_argument_values(tok):
    args = {"n": 3, "x": 0.5, "flag": True, "opts": {"a": [1, "b"]}, "s": "two\nlines é", "l": ["p", "q"]}
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "", "tool_calls": [call("f", args)]},
    ]
    assert render(tok, msgs).endswith(
        "<|im_start|>assistant\n<think></think>\n<tool_call>\n<function=f>\n"
        "<parameter=n>\n3\n</parameter>\n"
        "<parameter=x>\n0.5\n</parameter>\n"
        "<parameter=flag>\nTrue\n</parameter>\n"
        '<parameter=opts>\n{"a": [1, "b"]}\n</parameter>\n'
        "<parameter=s>\ntwo\nlines é\n</parameter>\n"
        '<parameter=l>\n["p", "q"]\n</parameter>\n'
        "</function>\n</tool_call>\n<|im_end|>\n"
    )


def test_tool_call_without_function_wrapper_and_without_arguments(tok):
    msgs = [
        {"role": "user", "content": "Q"},
        {
            "role": "assistant",
            "content": "ok",
            "tool_calls": [{"name": "g", "arguments": {"a": 1}}, {"name": "h"}],
        },
    ]
    assert render(tok, msgs).endswith(
        "<|im_start|>assistant\n<think></think>ok\n"
        "<tool_call>\n<function=g>\n<parameter=a>\n1\n</parameter>\n</function>\n</tool_call>\n"
        "<tool_call>\n<function=h>\n</function>\n</tool_call>\n<|im_end|>\n"
    )


def test_tool_call_json_string_arguments_raise_and_parsed_dict_renders(tok):
    # Jinja has no JSON parser (transformers' sandbox offers no fromjson): callers json.loads first.
    raw = '{"city": "Paris", "days": [1, 2]}'
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "", "tool_calls": [call("w", raw)]},
    ]
    with pytest.raises(jinja2.exceptions.TemplateError, match="arguments must be a dict"):
        render(tok, msgs)
    msgs[1]["tool_calls"] = [call("w", json.loads(raw))]
    assert render(tok, msgs).endswith(
        "<|im_start|>assistant\n<think></think>\n<tool_call>\n<function=w>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n[1, 2]\n</parameter>\n</function>\n</tool_call>\n<|im_end|>\n"
    )


def test_tool_response_content_and_generation_prompt_after_tool(tok):
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "", "tool_calls": [call("f", {})]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"ok": true}'},
    ]
    assert render(tok, msgs, add_generation_prompt=True) == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>\n<tool_call>\n<function=f>\n</function>\n</tool_call>\n<|im_end|>\n"
        '<|im_start|>user\n<tool_response>\n{"ok": true}\n</tool_response>\n<|im_end|>\n' + GEN_ON
    )


def test_content_parts_are_joined(tok):
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]
    assert render(tok, msgs) == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"


# --------------------------------------------------------------------------- history truncation


def test_truncation_off_keeps_history_reasoning(tok):
    expected = (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nR1\n</think>\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nR2\n</think>\nA2<|im_end|>\n"
    )
    assert render(tok, TWO_REASONING, truncate_history_thinking=False) == expected


def test_truncation_keeps_tool_calls_and_inline_think_content(tok):
    msgs = [
        {"role": "user", "content": "Q1"},
        {
            "role": "assistant",
            "content": "A1",
            "reasoning_content": "R1",
            "tool_calls": [call("f", {"a": 1})],
        },
        {"role": "tool", "content": "r"},
        {"role": "assistant", "content": "<think>\nR2\n</think>\nA2"},  # reasoning inline in the content
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "<think>\nR3\n</think>\nA3"},
    ]
    assert render(tok, msgs) == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>\nA1\n<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n"
        "</function>\n</tool_call>\n<|im_end|>\n<|im_start|>user\n<tool_response>\nr\n</tool_response>\n<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>\nA2<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nR3\n</think>\nA3<|im_end|>\n"
    )


def test_multi_step_tool_loop_after_last_user_keeps_reasoning(tok):
    msgs = [
        {"role": "user", "content": "Q0"},
        {"role": "assistant", "content": "A0", "reasoning_content": "R0"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "", "reasoning_content": "R1", "tool_calls": [call("f", {"a": 1})]},
        {"role": "tool", "content": "r1"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "R2",
            "tool_calls": [call("g", {"b": "x"})],
        },
        {"role": "tool", "content": "r2"},
        {"role": "assistant", "content": "Final.", "reasoning_content": "R3"},
    ]
    assert render(tok, msgs) == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQ0<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>\nA0<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nR1\n</think>\n\n<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n"
        "</function>\n</tool_call>\n<|im_end|>\n<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nR2\n</think>\n\n<tool_call>\n<function=g>\n<parameter=b>\nx\n</parameter>\n"
        "</function>\n</tool_call>\n<|im_end|>\n<|im_start|>user\n<tool_response>\nr2\n</tool_response>\n<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nR3\n</think>\nFinal.<|im_end|>\n"
    )


# --------------------------------------------------------------------------- switches


def test_reasoning_budget_only_on_last_user_message(tok):
    msgs = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "", "tool_calls": [call("f", {})]},
        {"role": "tool", "content": "r"},
    ]
    assert render(tok, msgs, add_generation_prompt=True, enable_thinking=False, reasoning_budget=0) == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>A1<|im_end|>\n"
        "<|im_start|>user\nQ2\n\n{thinking token budget: 0}<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>\n<tool_call>\n<function=f>\n</function>\n</tool_call>\n<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nr\n</tool_response>\n<|im_end|>\n" + GEN_OFF
    )


def test_chat_template_kwargs_fallback(tok):
    q = [{"role": "user", "content": "Q"}]
    head = "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQ"
    kw = {"enable_thinking": False, "reasoning_budget": 8}
    assert render(tok, q, add_generation_prompt=True, chat_template_kwargs=kw) == (
        head + "\n\n{thinking token budget: 8}<|im_end|>\n" + GEN_OFF
    )
    kw = {"truncate_history_thinking": False}
    assert render(tok, TWO_REASONING, chat_template_kwargs=kw) == render(
        tok, TWO_REASONING, truncate_history_thinking=False
    )


def test_top_level_switches_win_over_chat_template_kwargs(tok):
    q = [{"role": "user", "content": "Q"}]
    kw = {"enable_thinking": False, "reasoning_budget": 8, "truncate_history_thinking": False}
    out = render(
        tok, q, add_generation_prompt=True, enable_thinking=True, reasoning_budget=5, chat_template_kwargs=kw
    )
    assert (
        out
        == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQ\n\n{thinking token budget: 5}<|im_end|>\n"
        + GEN_ON
    )
    kw = {"truncate_history_thinking": False}
    assert render(tok, TWO_REASONING, truncate_history_thinking=True, chat_template_kwargs=kw) == render(
        tok, TWO_REASONING
    )


def test_no_bos_and_turn_ids(tok):
    ids = tok.apply_chat_template(SINGLE, tokenize=True, return_dict=False)
    assert ids[0] == SPECIAL_IDS["<|im_start|>"]
    assert ids[-2:] == [SPECIAL_IDS["<|im_end|>"], tok.encode("\n", add_special_tokens=False)[0]]
    assert SPECIAL_IDS["<s>"] not in ids and SPECIAL_IDS["</s>"] not in ids


# --------------------------------------------------------------------------- the tokenizer


def test_special_tokens_are_single_ids(tok):
    for token, token_id in SPECIAL_IDS.items():
        assert tok.convert_tokens_to_ids(token) == token_id
        assert tok.encode(token, add_special_tokens=False) == [token_id], token
        assert tok.encode(f"a{token}b", add_special_tokens=False).count(token_id) == 1, token


def test_vocab_size_and_special_token_roles(tok):
    assert len(tok) == 4096 and len(tok) % 8 == 0
    assert tok.backend_tokenizer.get_vocab_size(with_added_tokens=True) == 4096
    assert max(tok.get_vocab().values()) == 4095
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<s>",
        "<|im_end|>",
        "<pad>",
        None,
    )
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 4, 0)
    assert tok.model_max_length >= 1_000_000
    assert not getattr(tok, "add_bos_token", False) and not getattr(tok, "add_eos_token", False)
    assert tok("hello world").input_ids == tok.encode("hello world", add_special_tokens=False)
    pre_tokenizer = json.loads(tok.backend_tokenizer.to_str())["pre_tokenizer"]
    assert pre_tokenizer == {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    assert tok.convert_ids_to_tokens(tok.encode("Hi 2026", add_special_tokens=False)) == [
        "Hi",
        "Ġ",
        "2",
        "0",
        "2",
        "6",
    ]


def _conversation_text(tok) -> str:
    msgs = [
        {"role": "system", "content": "Sé breve. 日本語 😀 tabs\tand  spaces  "},
        {"role": "user", "content": "  What's the weather in Paris?\n\n"},
        *TOOL_AFTER_REASONING[1:],
        {"role": "user", "content": "<think> literal </tool_call> in text"},
    ]
    text = render(
        tok, msgs, tools=[WEATHER_TOOL], add_generation_prompt=True, truncate_history_thinking=False
    )
    assert "<think>\nNeed the tool.\n</think>" in text and "日本語 😀" in text  # what the round trips cover
    return text


def test_encode_decode_round_trip_is_exact(tok):
    text = _conversation_text(tok)
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.apply_chat_template(
        [{"role": "user", "content": "x  y\n"}], tokenize=True, return_dict=False
    ) == tok.encode(render(tok, [{"role": "user", "content": "x  y\n"}]), add_special_tokens=False)


def test_chunkwise_encoding_decodes_to_the_whole_text(tok):
    text = _conversation_text(tok)
    cuts = [
        0,
        17,
        text.index("<|im_start|>user"),
        text.index("Need"),
        text.index("\n<tool_call>\n<function=get_weather>"),
        len(text),
    ]
    assert cuts == sorted(cuts)
    ids = [i for a, b in zip(cuts, cuts[1:]) for i in tok.encode(text[a:b], add_special_tokens=False)]
    assert tok.decode(ids) == text


def test_skip_special_tokens_keeps_think_and_tool_markers(tok):
    text = (
        "<|im_start|>assistant\n<think>\nR\n</think>\nA\n<tool_call>\nx\n</tool_call>\n<|im_end|>\n<pad></s>"
    )
    ids = tok.encode(text, add_special_tokens=False)
    assert (
        tok.decode(ids, skip_special_tokens=True)
        == "assistant\n<think>\nR\n</think>\nA\n<tool_call>\nx\n</tool_call>\n\n"
    )


def test_directory_chat_template_equals_source():
    assert (TOKENIZER_DIR / "chat_template.jinja").read_bytes() == TEMPLATE_SRC.read_bytes()


def test_loaded_chat_template_equals_source(tok):
    assert tok.chat_template == TEMPLATE_SRC.read_text(encoding="utf-8")


def test_tokenizer_directory_is_small():
    files = sorted(p.name for p in TOKENIZER_DIR.iterdir())
    assert files == ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]
    assert sum(p.stat().st_size for p in TOKENIZER_DIR.iterdir()) < 1_000_000


def test_rebuild_gives_identical_files(tmp_path):
    start = time.monotonic()
    subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True
    )
    for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        assert (tmp_path / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes(), name
    assert time.monotonic() - start < 60
