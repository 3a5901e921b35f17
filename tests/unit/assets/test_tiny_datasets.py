"""The tiny datasets shipped in nemotron_core/assets/data: schema, coverage, answers, reproducibility."""

from __future__ import annotations

import ast
import importlib.util
import json
import operator
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "nemotron_core" / "assets" / "data"
SCRIPT = ROOT / "scripts" / "make_tiny_datasets.py"
FILES = ("tiny_chat.jsonl", "tiny_text.jsonl", "tiny_rl.jsonl")
ROLES = {"system", "user", "assistant", "tool"}


def read_jsonl(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def chat() -> list[dict]:
    return read_jsonl("tiny_chat.jsonl")


@pytest.fixture(scope="module")
def text() -> list[dict]:
    return read_jsonl("tiny_text.jsonl")


@pytest.fixture(scope="module")
def rl() -> list[dict]:
    return read_jsonl("tiny_rl.jsonl")


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("make_tiny_datasets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def n_users(record: dict) -> int:
    return sum(m["role"] == "user" for m in record["messages"])


def chat_chars(record: dict) -> int:
    total = 0
    for m in record["messages"]:
        total += len(m["content"]) + len(m.get("reasoning_content", ""))
        total += sum(len(json.dumps(c["function"])) for c in m.get("tool_calls", []))
    return total


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,count,max_bytes",
    [
        ("tiny_chat.jsonl", 3000, 4_000_000),
        ("tiny_text.jsonl", 4000, 3_000_000),
        ("tiny_rl.jsonl", 500, 500_000),
    ],
)
def test_files_parse_with_expected_counts_and_sizes(name, count, max_bytes):
    raw = (DATA / name).read_bytes()
    assert len(raw) < max_bytes
    assert raw.endswith(b"\n") and b"\r" not in raw
    records = read_jsonl(name)
    assert len(records) == count
    assert all(isinstance(r, dict) for r in records)


def test_no_literal_tool_call_text(chat, text):
    for i, r in enumerate(chat):
        for m in r["messages"]:
            assert "<tool_call>" not in m["content"], i
            assert "<tool_call>" not in m.get("reasoning_content", ""), i
    assert not any("<tool_call>" in d["text"] for d in text)


# ---------------------------------------------------------------------------------------------
# tiny_chat.jsonl: schema
# ---------------------------------------------------------------------------------------------


def check_tool_decl(tool: dict) -> str:
    assert tool["type"] == "function"
    f = tool["function"]
    assert set(f) == {"name", "description", "parameters"}
    assert isinstance(f["name"], str) and isinstance(f["description"], str) and f["description"]
    params = f["parameters"]
    assert params["type"] == "object"
    for arg, spec in params["properties"].items():
        assert set(spec) == {"type", "description"}, arg
        assert spec["type"] in {"string", "integer", "number", "boolean", "array", "object"}
    assert set(params["required"]) <= set(params["properties"])
    return f["name"]


def check_conversation(r: dict) -> None:
    assert set(r) <= {"messages", "tools"}
    declared = {}
    if "tools" in r:
        assert r["tools"], "an empty tools list should be omitted"
        for t in r["tools"]:
            declared[check_tool_decl(t)] = t["function"]["parameters"]
        assert len(declared) == len(r["tools"]), "duplicate tool names"
    msgs = r["messages"]
    assert any(m["role"] == "assistant" for m in msgs)
    assert msgs[-1]["role"] == "assistant"
    open_calls: dict[str, str] = {}  # ids of the latest tool-call turn not yet answered
    all_ids: set[str] = set()
    for i, m in enumerate(msgs):
        assert m["role"] in ROLES
        assert isinstance(m["content"], str)
        if m["role"] == "system":
            assert i == 0 and set(m) == {"role", "content"}
        elif m["role"] == "user":
            assert set(m) == {"role", "content"} and m["content"]
            assert not open_calls, "user turn before every tool call was answered"
        elif m["role"] == "tool":
            assert set(m) == {"role", "content", "tool_call_id"}
            assert msgs[i - 1]["role"] == "tool" or msgs[i - 1].get("tool_calls"), (
                "tool message must follow a call"
            )
            assert m["tool_call_id"] in open_calls, "tool_call_id must match an earlier call"
            del open_calls[m["tool_call_id"]]
        else:
            assert set(m) <= {"role", "content", "reasoning_content", "tool_calls"}
            assert not open_calls, "assistant turn before every tool call was answered"
            assert isinstance(m.get("reasoning_content", ""), str)
            calls = m.get("tool_calls")
            if calls is None:
                assert m["content"].strip(), "empty content only on tool-call turns"
                continue
            assert calls and msgs[i + 1]["role"] == "tool"
            for c in calls:
                assert set(c) == {"type", "id", "function"} and c["type"] == "function"
                assert c["id"].startswith("call_") and c["id"] not in all_ids
                all_ids.add(c["id"])
                open_calls[c["id"]] = c["function"]["name"]
                args = c["function"]["arguments"]
                if isinstance(args, str):
                    args = json.loads(args)
                assert isinstance(args, dict)
                name = c["function"]["name"]
                assert name in declared, f"call to undeclared tool {name}"
                assert set(declared[name]["required"]) <= set(args) <= set(declared[name]["properties"])
    assert not open_calls


def test_chat_schema(chat):
    for i, r in enumerate(chat):
        try:
            check_conversation(r)
        except (AssertionError, KeyError, IndexError, json.JSONDecodeError) as e:
            raise AssertionError(f"tiny_chat.jsonl:{i + 1}: {e!r}") from e


def test_chat_schema_rejects_bad_records():
    ok = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    check_conversation(ok)
    bad = [
        {"messages": [{"role": "user", "content": "Hi"}]},  # no assistant
        {"messages": ok["messages"] + [{"role": "user", "content": "Bye"}]},  # ends with user
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "tool", "tool_call_id": "call_x", "content": "1"},
                {"role": "assistant", "content": "ok"},
            ]
        },  # tool without a call
        {
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]
        },  # empty answer
    ]
    for r in bad:
        with pytest.raises((AssertionError, KeyError, IndexError)):
            check_conversation(r)


def test_chat_tool_schemas_are_heterogeneous(chat):
    names, arg_sets, str_args, calls = set(), set(), 0, 0
    for r in chat:
        for t in r.get("tools", []):
            names.add(t["function"]["name"])
            arg_sets.add(tuple(sorted(t["function"]["parameters"]["properties"])))
        for m in r["messages"]:
            for c in m.get("tool_calls", []):
                calls += 1
                str_args += isinstance(c["function"]["arguments"], str)
    assert {"get_capital", "get_weather", "calculator", "convert_units"} <= names
    assert len(arg_sets) >= 6
    assert 0.1 < str_args / calls < 0.3
    tool_sets = {tuple(sorted(t["function"]["name"] for t in r["tools"])) for r in chat if "tools" in r}
    assert len(tool_sets) >= 20


# ---------------------------------------------------------------------------------------------
# tiny_chat.jsonl: coverage
# ---------------------------------------------------------------------------------------------


def test_chat_coverage(chat):
    n = len(chat)

    def frac(pred) -> float:
        return sum(1 for r in chat if pred(r)) / n

    def has_system(r):
        return r["messages"][0]["role"] == "system"

    def reasoning_turns(r):
        return sum(bool(m.get("reasoning_content")) for m in r["messages"])

    def any_pair(r, pred):
        return any(pred(a, b) for a, b in zip(r["messages"], r["messages"][1:]))

    assert 0.3 < frac(has_system) < 0.7
    assert frac(lambda r: not has_system(r)) > 0.3
    assert frac(lambda r: has_system(r) and r["messages"][0]["content"] == "") > 0.01
    assert len({r["messages"][0]["content"] for r in chat if has_system(r)}) >= 5
    assert frac(lambda r: n_users(r) == 1) > 0.15
    assert frac(lambda r: n_users(r) >= 2) > 0.5
    assert frac(lambda r: n_users(r) >= 4) > 0.1
    assert 0.3 < frac(lambda r: reasoning_turns(r) > 0) < 0.5
    assert frac(lambda r: reasoning_turns(r) >= 2 and n_users(r) >= 2) > 0.1
    assert 0.2 < frac(lambda r: "tools" in r) < 0.3
    assert frac(lambda r: "tools" in r and not any(m.get("tool_calls") for m in r["messages"])) > 0.005
    assert frac(lambda r: any(len(m.get("tool_calls", [])) >= 2 for m in r["messages"])) > 0.03
    assert frac(lambda r: any_pair(r, lambda a, b: a["role"] == b["role"] == "tool")) > 0.03
    # multi-step loop: call, result, another call
    assert frac(lambda r: any_pair(r, lambda a, b: a["role"] == "tool" and b.get("tool_calls"))) > 0.03
    assert (
        sum(
            1
            for r in chat
            for m in r["messages"]
            if m.get("tool_calls") and m.get("reasoning_content") and m["content"] == ""
        )
        > 20
    )
    # long tail
    lengths = [chat_chars(r) for r in chat]
    assert max(lengths) >= 5 * statistics.median(lengths)
    assert sum(x > 1500 for x in lengths) / n >= 0.01


def test_chat_answers_are_correct_for_plain_arithmetic(chat):
    pattern = re.compile(r"^(?:What is|Compute|Calculate) (\d+) ([-+*]) (\d+)(?:, please)?[?.]$")
    checked = 0
    for r in chat:
        msgs = r["messages"]
        for q, a in zip(msgs, msgs[1:]):
            m = pattern.match(q["content"]) if q["role"] == "user" else None
            if m and a["role"] == "assistant" and not a.get("tool_calls"):
                value = {"+": operator.add, "-": operator.sub, "*": operator.mul}[m[2]](int(m[1]), int(m[3]))
                assert re.findall(r"-?\d+", a["content"])[-1] == str(value), (q, a)
                checked += 1
    assert checked > 200


# ---------------------------------------------------------------------------------------------
# tiny_text.jsonl
# ---------------------------------------------------------------------------------------------


def test_text_corpus(text):
    assert all(set(d) == {"text"} and isinstance(d["text"], str) and d["text"].strip() for d in text)
    lengths = [len(d["text"]) for d in text]
    assert max(lengths) >= 5 * statistics.median(lengths)
    assert len({d["text"] for d in text}) > 0.9 * len(text)
    joined = "\n".join(d["text"] for d in text)
    for marker in ("Once upon a time", "Multiplication table", "def ", "Q: ", "capital", "- "):
        assert marker in joined


# ---------------------------------------------------------------------------------------------
# tiny_rl.jsonl
# ---------------------------------------------------------------------------------------------

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def eval_int_expr(expr: str) -> int:
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        raise ValueError(f"unexpected expression {expr!r}")

    return ev(ast.parse(expr, mode="eval"))


def expected_math(q: str) -> int:
    if m := re.fullmatch(r"(?:What is|Compute|Calculate) ([\d+\-*() ]+)[?.]", q):
        return eval_int_expr(m[1])
    if m := re.fullmatch(r"\w+ has (\d+) \w+ and buys (\d+) more\. How many \w+ does \w+ have now\?", q):
        return int(m[1]) + int(m[2])
    if m := re.fullmatch(r"\w+ has (\d+) \w+ and gives away (\d+)\. How many \w+ are left\?", q):
        return int(m[1]) - int(m[2])
    if m := re.fullmatch(r"A box holds (\d+) \w+\. How many are in (\d+) boxes\?", q):
        return int(m[1]) * int(m[2])
    raise AssertionError(f"unrecognised math prompt {q!r}")


def test_rl_answers_check_against_prompts(rl, gen):
    tasks = {"math": 0, "multiple_choice": 0, "json": 0}
    for i, r in enumerate(rl):
        assert set(r) == {"prompt", "answer", "task"}, i
        assert len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user"
        assert isinstance(r["answer"], str) and r["answer"] == r["answer"].strip()
        content = r["prompt"][0]["content"]
        assert content.endswith("\nGive the final answer on the last line as 'Answer: <answer>'.")
        body = content.rsplit("\n", 1)[0]
        tasks[r["task"]] += 1
        if r["task"] == "math":
            assert r["answer"] == str(expected_math(body)), (i, body)
        elif r["task"] == "multiple_choice":
            lines = body.split("\n")
            question, options = lines[0], dict(line.split(". ", 1) for line in lines[1:5])
            assert list(options) == ["A", "B", "C", "D"] and lines[5] == "Choose one letter."
            if m := re.fullmatch(r"Which city is the capital of (.+)\?", question):
                right = gen.COUNTRIES[m[1]][0]
            else:
                right = str(eval_int_expr(re.fullmatch(r"What is (.+)\?", question)[1]))
            assert [k for k, v in options.items() if v == right] == [r["answer"]], (i, body)
        else:
            assert r["task"] == "json"
            obj = json.loads(r["answer"])
            assert r["answer"] == json.dumps(obj, sort_keys=True)
            stated = {k: json.loads(v) for k, v in re.findall(r'"(\w+)" set to ("[^"]*"|\d+)', body)}
            assert stated == obj, (i, body)
    assert tasks["math"] > 300 and tasks["multiple_choice"] > 30 and tasks["json"] > 20


# ---------------------------------------------------------------------------------------------
# Reproducibility
# ---------------------------------------------------------------------------------------------


def test_regenerating_gives_identical_bytes(tmp_path):
    doc = SCRIPT.read_text()
    assert "python scripts/make_tiny_datasets.py --out-dir nemotron_core/assets/data --seed 1234" in doc
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--out-dir",
            str(tmp_path),
            "--seed",
            "1234",
            "--n-chat",
            "3000",
            "--n-text",
            "4000",
            "--n-rl",
            "500",
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_defaults_regenerate_shipped_files(tmp_path):
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out-dir", str(tmp_path / "d")],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    assert all((tmp_path / "d" / n).read_bytes() == (DATA / n).read_bytes() for n in FILES)


def test_seed_changes_the_data(tmp_path):
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--out-dir",
            str(tmp_path),
            "--seed",
            "7",
            "--n-chat",
            "50",
            "--n-text",
            "50",
            "--n-rl",
            "50",
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    records = [json.loads(x) for x in (tmp_path / "tiny_chat.jsonl").read_text().splitlines()]
    assert len(records) == 50
    assert records != read_jsonl("tiny_chat.jsonl")[:50]
    for r in records:
        check_conversation(r)
