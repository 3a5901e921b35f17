"""Bad input gets a clear error naming file:line and field, before any expensive work."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nemotron_core.data.records import RecordError, Source, read_records, resolve_inputs

OK = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
TOOL = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}}


def write_jsonl(path, lines):
    path.write_bytes(b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines))
    return path


@pytest.mark.parametrize(
    "bad, field, reason",
    [
        (b'{"messages": [', "line", "invalid_json"),
        (b'\xff\xfe{"a": 1}', "line", "invalid_utf8"),
        ({"conversation": []}, "messages", "missing_messages"),
        ({"messages": []}, "messages", "missing_messages"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "unknown_role"),
        ({"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]}, "messages[0].content", "non_string_content"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": 3}]},
         "messages[1].reasoning_content", "non_string_content"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None,
          "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{x: 1}"}}]}]},
         "messages[1].tool_calls[0].function.arguments", "invalid_tool_arguments"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "",
          "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
         "messages[1].tool_calls[0].function.arguments", "invalid_tool_arguments"),
        ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}, "messages", "nothing_to_train"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<tool_call>x</tool_call>"}]},
         "messages[1].content", "tool_call_text_without_tools"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": "use <tool_call>"}]},
         "messages[1].reasoning_content", "tool_call_text_without_tools"),
    ],
)
def test_bad_record_names_file_line_and_field(tmp_path, bad, field, reason):
    p = write_jsonl(tmp_path / "d.jsonl", [OK, OK, bad])
    with pytest.raises(RecordError) as exc:
        read_records(resolve_inputs(str(p)))
    assert str(exc.value).startswith(f"{p}:3: {field}: ")
    assert exc.value.reason == reason
    # skip mode counts instead
    records, stats = read_records(resolve_inputs(str(p)), on_error="skip")
    assert len(records) == 2 and stats.skipped == {reason: 1}
    assert stats.skipped_examples[0].startswith(f"{p}:3:")


def test_valid_variants_pass(tmp_path):
    rows = [
        # structured tool calls without declared tools are valid; JSON-string arguments are parsed
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None,
          "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": '{"x": [1, 2]}'}}]},
          {"role": "tool", "content": "r"}, {"role": "assistant", "content": "done"}]},
        # literal <tool_call> text is fine when tools are declared
        {"messages": [{"role": "user", "content": "say <tool_call>"}, {"role": "assistant", "content": "ok"}], "tools": [TOOL]},
    ]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    records, stats = read_records(resolve_inputs(str(p)))
    assert len(records) == 2 and not stats.skipped
    assert records[0].messages[1]["tool_calls"][0]["function"]["arguments"] == {"x": [1, 2]}
    assert records[0].messages[1]["content"] == ""
    assert records[1].tools == [TOOL]
    assert records[0].where == f"{p}:1"


def test_heterogeneous_tool_schemas_are_kept_as_written(tmp_path):
    t1 = {"type": "function", "function": {"name": "a", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}
    t2 = {"type": "function", "function": {"name": "b", "parameters": {"type": "object", "properties": {"y": {"type": "string", "enum": ["u"]}}}}}
    rows = [dict(OK, tools=[t1]), dict(OK, tools=[t2])]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    records, _ = read_records(resolve_inputs(str(p)))
    assert [r.tools for r in records] == [[t1], [t2]]


def test_inputs_glob_list_and_blend(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [OK] * 10)
    b = write_jsonl(tmp_path / "b.jsonl", [OK] * 4)
    assert [s.path for s in resolve_inputs(str(tmp_path / "*.jsonl"))] == [str(a), str(b)]
    assert [s.path for s in resolve_inputs([str(b), str(a)])] == [str(b), str(a)]
    blend = tmp_path / "blend.json"
    blend.write_text(json.dumps([{"path": "a.jsonl", "weight": 0.5}, {"path": "b.jsonl", "max_records": 3}]))
    sources = resolve_inputs(str(blend))
    assert sources == [Source(str(a), weight=0.5), Source(str(b), max_records=3)]
    records, _ = read_records(sources, seed=1)
    assert len(records) == 5 + 3
    blend.write_text(json.dumps([{"path": "b.jsonl", "weight": 2.5}]))
    assert len(read_records(resolve_inputs(str(blend)))[0]) == 10
    records, _ = read_records(resolve_inputs(str(blend)), sample=3)
    assert len(records) == 3


@pytest.mark.parametrize(
    "spec, match",
    [
        (None, r"data\.input is empty"),
        ("/nonexistent/x.jsonl", r"data\.input: '/nonexistent/x\.jsonl' does not exist"),
        ("/nonexistent/*.jsonl", r"data\.input: no file matches"),
    ],
)
def test_bad_input_spec(spec, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        resolve_inputs(spec)


def test_bad_blend_file(tmp_path):
    blend = tmp_path / "blend.json"
    blend.write_text('[{"path": "a.jsonl", "weight": 1, "max_records": 2}]')
    with pytest.raises(ValueError, match="exactly one of weight or max_records"):
        resolve_inputs(str(blend))
    blend.write_text('[{"path": "missing.jsonl", "weight": 1}]')
    with pytest.raises(FileNotFoundError, match="entry 0"):
        resolve_inputs(str(blend))


def test_parquet_input_with_json_string_columns(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"messages": [json.dumps(OK["messages"]), "[broken"]}), p)
    with pytest.raises(RecordError, match=r"d\.parquet:row 1: messages: invalid JSON string"):
        read_records(resolve_inputs(str(p)))
    records, stats = read_records(resolve_inputs(str(p)), on_error="skip")
    assert len(records) == 1 and stats.skipped == {"invalid_json": 1}
