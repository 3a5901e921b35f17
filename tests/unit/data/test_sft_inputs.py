"""Stage 1 input kinds, each with exact chunks and masks on hand-written records: prompt-response
records, the three chat-template modes, heterogeneous tool schemas, configurable keys and the
`used_in`-style tag filter (nemotron_core/data/records.py, chat.py, sft_prep.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nemotron_core.config import SFTDataConfig
from nemotron_core.data.chat import (
    PASSTHROUGH_TEMPLATE,
    ChunkingError,
    record_to_sequences,
    resolve_chat_template,
    set_chat_template,
    template_renderer,
)
from nemotron_core.data.masks import align_loss_mask
from nemotron_core.data.records import (
    RecordError,
    RecordSchema,
    read_records,
    resolve_inputs,
    validate_record,
)
from nemotron_core.data.sft_prep import cache_key, open_sft_source, tokenize_sequences
from nemotron_core.paths import asset_path
from nemotron_core.tokenization import load_tokenizer

TOK = str(asset_path("tokenizer"))
SYS0 = "<|im_start|>system\n<|im_end|>\n"
CUSTOM = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def tokenizer(mode="default"):
    return set_chat_template(load_tokenizer(TOK), mode)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tokens_and_mask(record, tok):
    """[(decoded token, role mask)] of each training sequence of `record`."""
    seqs, errors = tokenize_sequences([record], tok, truncate_history_thinking=True, on_error="raise")
    assert not errors
    return [list(zip([tok.decode([t]) for t in s.input_ids], s.role_mask.tolist())) for s in seqs]


def chunks(record, tok):
    return [[(c.text, c.trained) for c in s.chunks] for s in record_to_sequences(record, render=template_renderer(tok))]


# --------------------------------------------------------------------------- 1. prompt-response
PR = RecordSchema(record_format="prompt_response", input_key="question", output_key="answer", system_key="sys")


def test_prompt_response_trains_the_response_only():
    rec = validate_record({"question": "What is 2+2?", "answer": "4", "id": 7}, "pr.jsonl:1", PR)
    assert rec.messages == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    tok = tokenizer()
    assert chunks(rec, tok) == [[
        (SYS0 + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think></think>", False),
        ("4<|im_end|>\n", True),
    ]]
    [seq] = tokens_and_mask(rec, tok)
    assert seq == [
        ("<|im_start|>", 0), ("s", 0), ("y", 0), ("st", 0), ("em", 0), ("\n", 0), ("<|im_end|>", 0), ("\n", 0),
        ("<|im_start|>", 0), ("us", 0), ("er", 0), ("\n", 0), ("What", 0), (" is", 0), (" ", 0), ("2", 0), ("+", 0),
        ("2", 0), ("?", 0), ("<|im_end|>", 0), ("\n", 0), ("<|im_start|>", 0), ("as", 0), ("sistant", 0), ("\n", 0),
        ("<think>", 0), ("</think>", 0), ("4", 1), ("<|im_end|>", 1), ("\n", 1),
    ]  # fmt: skip
    # aligned per document: loss_mask[j] says whether label ids[j+1] counts; the last position is 0
    role = np.array([m for _, m in seq], dtype=np.uint8)
    assert align_loss_mask(role, seq_start_id=[0]).tolist() == [0] * 26 + [1, 1, 1, 0]


def test_prompt_response_system_from_the_record_or_the_config():
    tok = tokenizer()
    rec = validate_record({"question": "Hi", "answer": "Hello there.", "sys": "Be brief."}, "pr.jsonl:2", PR)
    assert chunks(rec, tok) == [[
        ("<|im_start|>system\nBe brief.<|im_end|>\n", False),
        ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think></think>", False),
        ("Hello there.<|im_end|>\n", True),
    ]]
    [seq] = tokens_and_mask(rec, tok)
    assert [t for t, m in seq if m] == ["Hello", " there", ".", "<|im_end|>", "\n"]
    assert [m for _, m in seq] == [0] * 24 + [1] * 5
    # data.system_prompt fills in where the record has no system text; the record's own wins
    with_default = replace(PR, system_prompt="Be kind.")
    assert validate_record({"question": "Hi", "answer": "Yo"}, "x", with_default).messages[0] == {"role": "system", "content": "Be kind."}
    assert validate_record({"question": "Hi", "answer": "Yo", "sys": "Mine."}, "x", with_default).messages[0]["content"] == "Mine."


@pytest.mark.parametrize(
    ("obj", "match", "reason"),
    [
        ({"question": "q"}, r"^pr\.jsonl:3: answer: missing \(the response field, data\.output_key='answer'\)", "missing_response"),
        ({"answer": "a"}, r"^pr\.jsonl:3: question: missing \(the prompt field, data\.input_key='question'\)", "missing_prompt"),
        ({"question": ["q"], "answer": "a"}, r"^pr\.jsonl:3: question: must be a string, got list", "non_string_content"),
        ({"question": "q", "answer": ""}, r"^pr\.jsonl:3: answer: empty response", "nothing_to_train"),
        ({"question": "q", "answer": "<tool_call>x"}, r"^pr\.jsonl:3: answer: literal <tool_call>", "tool_call_text_without_tools"),
        ({"question": "q", "answer": "a", "sys": 3}, r"^pr\.jsonl:3: sys: must be a string", "non_string_content"),
    ],
)  # fmt: skip
def test_prompt_response_errors_name_the_record_field(obj, match, reason):
    with pytest.raises(RecordError, match=match) as exc:
        validate_record(obj, "pr.jsonl:3", PR)
    assert exc.value.reason == reason


def test_prompt_response_file_defaults_are_input_and_output(tmp_path):
    p = write_jsonl(tmp_path / "pr.jsonl", [{"input": "a", "output": "b"}, {"input": "c"}])
    with pytest.raises(RecordError, match=rf"^{p}:2: output: missing"):
        read_records(resolve_inputs(str(p)), schema=RecordSchema(record_format="prompt_response"))
    records, stats = read_records(resolve_inputs(str(p)), schema=RecordSchema(record_format="prompt_response"), on_error="skip")
    assert [r.messages[-1]["content"] for r in records] == ["b"] and stats.skipped == {"missing_response": 1}


# --------------------------------------------------------------------------- 2. chat-template modes
CONVERSATION = {"messages": [
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
    {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"},
]}  # fmt: skip


def test_default_mode_is_the_tokenizers_own_template():
    rec = validate_record(CONVERSATION, "c.jsonl:4")
    tok = tokenizer("default")
    assert tok.chat_template == load_tokenizer(TOK).chat_template
    assert chunks(rec, tok) == [[
        ("<|im_start|>system\nBe brief.<|im_end|>\n", False),
        ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think></think>", False),
        ("Yo<|im_end|>\n", True),
        ("<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n<think></think>", False),
        ("Ciao<|im_end|>\n", True),
    ]]
    [seq] = tokens_and_mask(rec, tok)
    assert [t for t, m in seq if m] == ["Y", "o", "<|im_end|>", "\n", "C", "ia", "o", "<|im_end|>", "\n"]
    assert [m for _, m in seq] == [0] * 24 + [1] * 4 + [0] * 15 + [1] * 5


@pytest.mark.parametrize("mode", ["passthrough", None])
def test_passthrough_mode_concatenates_contents_as_they_are(mode):
    rec = validate_record(CONVERSATION, "c.jsonl:4")
    tok = tokenizer(mode)
    assert tok.chat_template == PASSTHROUGH_TEMPLATE
    assert chunks(rec, tok) == [[("Be brief.", False), ("Hi", False), ("Yo", True), ("Bye", False), ("Ciao", True)]]
    [seq] = tokens_and_mask(rec, tok)
    assert seq == [("Be", 0), (" brief", 0), (".", 0), ("Hi", 0), ("Y", 1), ("o", 1), ("B", 0), ("y", 0), ("e", 0),
                   ("C", 1), ("ia", 1), ("o", 1)]  # fmt: skip


def test_passthrough_keeps_offline_templated_text_and_masks_by_role():
    rec = validate_record({"messages": [
        {"role": "user", "content": "<|im_start|>user\nHi<|im_end|>\n"},
        {"role": "assistant", "content": "<|im_start|>assistant\nYo<|im_end|>\n"},
    ]}, "t.jsonl:1")  # fmt: skip
    [seq] = tokens_and_mask(rec, tokenizer("passthrough"))
    assert seq == [("<|im_start|>", 0), ("us", 0), ("er", 0), ("\n", 0), ("Hi", 0), ("<|im_end|>", 0), ("\n", 0),
                   ("<|im_start|>", 1), ("as", 1), ("sistant", 1), ("\n", 1), ("Y", 1), ("o", 1), ("<|im_end|>", 1), ("\n", 1)]  # fmt: skip


@pytest.mark.parametrize("as_file", [False, True])
def test_custom_jinja_template_string_or_file(tmp_path, as_file):
    spec = CUSTOM
    if as_file:
        (tmp_path / "mine.jinja").write_text(CUSTOM)
        spec = str(tmp_path / "mine.jinja")
    rec = validate_record(CONVERSATION, "c.jsonl:4")
    tok = tokenizer(spec)
    assert tok.chat_template == CUSTOM
    # the generation prompt "<assistant>" is context; the assistant's text and closing tag are trained
    assert chunks(rec, tok) == [[
        ("<system>Be brief.</system>\n", False), ("<user>Hi</user>\n<assistant>", False), ("Yo</assistant>\n", True),
        ("<user>Bye</user>\n<assistant>", False), ("Ciao</assistant>\n", True),
    ]]  # fmt: skip
    [seq] = tokens_and_mask(rec, tok)
    assert [t for t, m in seq if m] == ["Y", "o", "</", "as", "sistant", ">", "\n", "C", "ia", "o", "</", "as", "sistant", ">", "\n"]
    assert [m for _, m in seq] == [0] * 30 + [1] * 7 + [0] * 16 + [1] * 8


def test_template_mode_errors_name_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.chat_template='nope\.jinja' is not 'default', 'passthrough'"):
        resolve_chat_template("nope.jinja")
    bad = tmp_path / "bad.jinja"
    bad.write_text("line one\n{% for m in messages %}{{ m['content'] }}\n")
    with pytest.raises(ValueError, match=rf"tokenizer\.chat_template={bad}: line \d: Jinja syntax error"):
        resolve_chat_template(str(bad))
    with pytest.raises(ValueError, match=r"tokenizer\.chat_template: line 1: Jinja syntax error"):
        resolve_chat_template("{{ unclosed")
    assert resolve_chat_template("default") is None
    no_template = load_tokenizer(TOK)
    no_template.chat_template = None
    with pytest.raises(ValueError, match=r"tokenizer\.chat_template=default, but the tokenizer has no chat template"):
        set_chat_template(no_template, "default")


def test_template_whose_renderings_do_not_extend_fails_naming_the_record():
    tok = tokenizer("{% for m in messages %}{{ m['content'] }}{% endfor %}[{{ messages | length }}]")
    with pytest.raises(ChunkingError, match=r"^c\.jsonl:4: rendering of messages\[:2\] does not extend"):
        chunks(validate_record(CONVERSATION, "c.jsonl:4"), tok)


def test_template_mode_changes_the_cache_key(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", [CONVERSATION])
    data = SFTDataConfig(name="t", input=str(p), output_dir=str(tmp_path / "o"))
    keys = {m: open_sft_source(data, tokenizer_path=TOK, tokenizer_name="tiny", chat_template=m).cache_key
            for m in ("default", "passthrough", CUSTOM)}  # fmt: skip
    assert len(set(keys.values())) == 3


# --------------------------------------------------------------------------- 3. tool calling
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "description": "City"}}, "required": ["city"]}}}
CONVERT = {"type": "function", "function": {"name": "convert", "description": "Convert units", "parameters": {
    "type": "object", "properties": {"value": {"type": "number"}, "unit": {"type": "string", "enum": ["cm", "mm"]}},
    "required": ["value"]}}}  # fmt: skip
TOOL_RECORDS = [
    {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."}], "tools": [WEATHER, CONVERT]},
    {"messages": [
        {"role": "user", "content": "5 cm in mm?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "convert", "arguments": '{"value": 5, "unit": "cm"}'}}]},
        {"role": "tool", "content": "50"},
        {"role": "assistant", "content": "50 mm."}], "tools": [CONVERT]},
]  # fmt: skip
WEATHER_XML = (
    "<function>\n<name>get_weather</name>\n<description>Weather now</description>\n<parameters>\n<parameter>\n"
    "<name>city</name>\n<type>string</type>\n<description>City</description>\n</parameter>\n"
    '<required>["city"]</required>\n</parameters>\n</function>\n'
)
CONVERT_XML = (
    "<function>\n<name>convert</name>\n<description>Convert units</description>\n<parameters>\n<parameter>\n"
    "<name>value</name>\n<type>number</type>\n</parameter>\n<parameter>\n<name>unit</name>\n<type>string</type>\n"
    '<enum>["cm", "mm"]</enum>\n</parameter>\n<required>["value"]</required>\n</parameters>\n</function>\n'
)


def _render_raw(obj, tok):
    """The template applied to the record exactly as written (arguments parsed, as the format says)."""
    msgs = json.loads(json.dumps(obj["messages"]))
    for m in msgs:
        for tc in m.get("tool_calls") or []:
            if isinstance(tc["function"]["arguments"], str):
                tc["function"]["arguments"] = json.loads(tc["function"]["arguments"])
    return tok.apply_chat_template(msgs, tools=obj["tools"], tokenize=False, enable_thinking=False)


def test_heterogeneous_tool_schemas_render_exactly_as_written(tmp_path):
    p = write_jsonl(tmp_path / "tools.jsonl", TOOL_RECORDS)
    records, _ = read_records(resolve_inputs(str(p)))
    tok = tokenizer()
    render = template_renderer(tok)
    texts = [record_to_sequences(r, render=render)[0].text for r in records]
    assert texts == [_render_raw(obj, tok) for obj in TOOL_RECORDS]
    assert [r.tools for r in records] == [[WEATHER, CONVERT], [CONVERT]]
    assert f"<tools>\n{WEATHER_XML}{CONVERT_XML}</tools>" in texts[0]
    assert f"<tools>\n{CONVERT_XML}</tools>" in texts[1]
    assert all("None" not in t and "null" not in t for t in texts)
    # what a schema-unifying reader gives (Parquet struct columns: missing keys come back as None) is
    # another text: get_weather would gain value/unit parameters and convert a city one
    table = pa.Table.from_pylist([{"tools": r["tools"]} for r in TOOL_RECORDS])
    pq.write_table(table, tmp_path / "unified.parquet")
    unified = pq.read_table(tmp_path / "unified.parquet").to_pylist()[0]["tools"]
    assert unified[0]["function"]["parameters"]["properties"]["value"] is None
    assert _render_raw(dict(TOOL_RECORDS[0], tools=unified), tok) != texts[0]


def test_tool_call_masks_train_the_calls_and_answers_only():
    rec = validate_record(TOOL_RECORDS[1], "tools.jsonl:2")
    tok = tokenizer()
    [seq] = chunks(rec, tok)
    assert [(t, tr) for t, tr in seq[1:]] == [
        ("\n<tool_call>\n<function=convert>\n<parameter=value>\n5\n</parameter>\n<parameter=unit>\ncm\n</parameter>\n"
         "</function>\n</tool_call>\n<|im_end|>\n", True),
        ("<|im_start|>user\n<tool_response>\n50\n</tool_response>\n<|im_end|>\n<|im_start|>assistant\n<think></think>", False),
        ("50 mm.<|im_end|>\n", True),
    ]  # fmt: skip
    context, trained = seq[0]
    assert not trained
    assert context.startswith(f"<|im_start|>system\n# Tools\n\nYou can call the functions listed below.\n\n<tools>\n{CONVERT_XML}</tools>")
    assert context.endswith("<|im_end|>\n<|im_start|>user\n5 cm in mm?<|im_end|>\n<|im_start|>assistant\n<think></think>")
    [toks] = tokens_and_mask(rec, tok)
    trained = "".join(t for t, m in toks if m)
    assert trained == "".join(t for t, tr in seq if tr)
    # one contiguous trained run per assistant turn
    mask = [m for _, m in toks]
    assert sum(1 for a, b in zip([0] + mask, mask) if (a, b) == (0, 1)) == 2


# --------------------------------------------------------------------------- 4. keys and tag filter
def test_messages_and_tools_keys_are_configurable(tmp_path):
    rows = [{"conversation": r["messages"], "functions": r["tools"]} for r in TOOL_RECORDS]
    p = write_jsonl(tmp_path / "k.jsonl", rows)
    schema = RecordSchema(messages_key="conversation", tools_key="functions")
    records, _ = read_records(resolve_inputs(str(p)), schema=schema)
    default = [validate_record(r, f"x:{i}") for i, r in enumerate(TOOL_RECORDS)]
    assert [(r.messages, r.tools) for r in records] == [(r.messages, r.tools) for r in default]
    with pytest.raises(RecordError, match=rf"^{p}:1: messages: missing or empty .*data\.messages_key='messages'"):
        read_records(resolve_inputs(str(p)))  # the default key "messages" is not there
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"conversation": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(RecordError, match=r":1: conversation\[0\]\.role: unknown role 'robot'"):
        read_records(resolve_inputs(str(bad)), schema=schema)
    # Parquet: the configured keys are the JSON-string columns
    pq.write_table(pa.table({"conversation": [json.dumps(r["messages"]) for r in TOOL_RECORDS],
                             "functions": [json.dumps(r["tools"]) for r in TOOL_RECORDS]}), tmp_path / "k.parquet")  # fmt: skip
    from_parquet, _ = read_records(resolve_inputs(str(tmp_path / "k.parquet")), schema=schema)
    assert [(r.messages, r.tools) for r in from_parquet] == [(r.messages, r.tools) for r in default]


def test_parquet_struct_columns_warn(tmp_path, caplog):
    rows = [{"messages": json.dumps(r["messages"]), "tools": r["tools"]} for r in TOOL_RECORDS]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s.parquet")
    with caplog.at_level("WARNING"):
        records, _ = read_records(resolve_inputs(str(tmp_path / "s.parquet")))
    assert "are Parquet structs" in caplog.text and "['tools']" in caplog.text
    assert records[0].tools != TOOL_RECORDS[0]["tools"]  # what the warning is about: None keys added


def test_used_in_tag_filter(tmp_path):
    ok = CONVERSATION["messages"]
    rows = [
        {"messages": ok, "used_in": ["nano_v3", "super_v1"]},  # kept
        {"messages": ok, "used_in": "nano_v3"},  # kept
        {"messages": ok, "used_in": ["super_v1"]},
        {"messages": ok},
        {"messages": [{"role": "robot"}], "used_in": ["other"]},  # left out before validation: no error
        {"messages": ok, "used_in": []},
    ]
    p = write_jsonl(tmp_path / "u.jsonl", rows)
    schema = RecordSchema(filter_key="used_in", filter_values=("nano_v3",))
    records, stats = read_records(resolve_inputs(str(p)), schema=schema)
    assert [r.where for r in records] == [f"{p}:1", f"{p}:2"]
    assert stats.filtered == {"used_in_filter": 4} and not stats.skipped
    with pytest.raises(ValueError, match=r"data\.filter_key='used_in' needs data\.filter_values"):
        RecordSchema(filter_key="used_in")
    with pytest.raises(ValueError, match=r"data\.filter_values is set but data\.filter_key is not"):
        RecordSchema(filter_values=("x",))
    with pytest.raises(ValueError, match=r"data\.record_format must be one of \['chat', 'prompt_response'\]"):
        RecordSchema(record_format="sharegpt")


def test_system_prompt_for_chat_records_without_one():
    schema = RecordSchema(system_prompt="Be kind.")
    plain = validate_record({"messages": CONVERSATION["messages"][1:]}, "x:1", schema)
    assert plain.messages[0] == {"role": "system", "content": "Be kind."} and len(plain.messages) == 5
    own = validate_record(CONVERSATION, "x:2", schema)
    assert own.messages[0]["content"] == "Be brief." and len(own.messages) == 5


def test_new_fields_at_their_defaults_keep_the_cache_key():
    data = SFTDataConfig(name="t", input="x", output_dir="o")
    inputs, fp = [{"sha256": "a"}], {"vocab_hash": "v", "chat_template_hash": "c"}
    key = cache_key(data, inputs=inputs, tokenizer_fp=fp)
    assert cache_key(replace(data, online=True), inputs=inputs, tokenizer_fp=fp) == key  # how, not what
    for change in ({"record_format": "prompt_response"}, {"messages_key": "conv"}, {"filter_key": "u", "filter_values": ["a"]},
                   {"system_prompt": "s"}):  # fmt: skip
        assert cache_key(replace(data, **change), inputs=inputs, tokenizer_fp=fp) != key
