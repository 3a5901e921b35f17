"""Reading and validating OpenAI-format chat records before any expensive work.

Input forms (`data.input`): a path, a glob, a list of them, or a blend file (a `.json` file
holding a list of `{"path": ..., "weight": w}` or `{"path": ..., "max_records": n}`; paths
relative to the blend file). JSONL is parsed one line at a time with `json.loads`, so each
record keeps its own tool schemas and arguments exactly as written (nothing is unified across
records, unlike columnar readers that invent `None` keys). Parquet is read with pyarrow; a
`messages`/`tools` column holding JSON strings is parsed the same way.

Record shapes (`RecordSchema`, from the `data.*` keys named below):

- chat (`data.record_format=chat`, the default): `{messages_key: [{role, content, ...}], tools_key:
  [...]}` (keys `messages` / `tools` by default);
- prompt-response (`data.record_format=prompt_response`, NeMo RL's ResponseDataset): `{input_key:
  str, output_key: str}` (keys `input` / `output` by default), optionally a per-record system text
  under `system_key`. It becomes `[system?, user: input, assistant: output]`, so the loss is on the
  response only.

`data.system_prompt` adds a system message to records that have none. `data.filter_key` /
`data.filter_values` keep only records tagged for this use (a `used_in`-style field holding a
string or a list of strings); the others are counted in `ReadStats.filtered`, not as errors.

Every record is validated (`validate_record`) and any problem is reported as
`file:line: field: what is wrong`; with `on_error="skip"` records are skipped and counted by
reason instead.

Parquet struct columns share one schema across rows: pyarrow fills keys a row lacks with None, so
heterogeneous tool schemas would change. Store `messages` / `tools` as JSON strings in Parquet
(a warning says so when a struct column is read); JSONL keeps every record as written.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")
TOOL_CALL_TEXT = "<tool_call>"
RECORD_FORMATS = ("chat", "prompt_response")


class RecordError(ValueError):
    """A bad input record; `where` is `file:line`, `reason` a short counting key."""

    def __init__(self, where: str, field_name: str, message: str, reason: str):
        super().__init__(f"{where}: {field_name}: {message}")
        self.where, self.field_name, self.reason = where, field_name, reason


@dataclass(frozen=True)
class Source:
    """One input file and how many of its records to take."""

    path: str
    weight: float | None = None  # fraction (or multiple) of its records, seeded sampling
    max_records: int | None = None  # the first N records


@dataclass(frozen=True)
class RecordSchema:
    """Where a record keeps its fields (the `data.*` keys of the same names) and which to keep."""

    record_format: str = "chat"  # chat | prompt_response
    messages_key: str = "messages"
    tools_key: str = "tools"
    input_key: str = "input"
    output_key: str = "output"
    system_key: str | None = None
    system_prompt: str | None = None
    filter_key: str | None = None
    filter_values: tuple[str, ...] = ()

    def __post_init__(self):
        if self.record_format not in RECORD_FORMATS:
            raise ValueError(f"data.record_format must be one of {list(RECORD_FORMATS)}, got {self.record_format!r}")
        for key in ("messages_key", "tools_key", "input_key", "output_key"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ValueError(f"data.{key} must be a non-empty string, got {getattr(self, key)!r}")
        if self.record_format == "prompt_response" and self.input_key == self.output_key:
            raise ValueError(f"data.input_key and data.output_key are both {self.input_key!r}: give two fields")
        if self.filter_key is not None and not self.filter_values:
            raise ValueError(f"data.filter_key={self.filter_key!r} needs data.filter_values (the tag values to keep)")
        if self.filter_values and self.filter_key is None:
            raise ValueError("data.filter_values is set but data.filter_key is not (the record field holding the tag)")
        object.__setattr__(self, "filter_values", tuple(str(v) for v in self.filter_values))

    def keeps(self, obj: Any) -> bool:
        """Whether a parsed record passes the tag filter (always, without `filter_key`)."""
        if self.filter_key is None:
            return True
        if not isinstance(obj, dict):
            return True  # not a record: validation reports it
        tag = obj.get(self.filter_key)
        tags = tag if isinstance(tag, list) else [tag]
        return any(_tag_text(t) in self.filter_values for t in tags if t is not None)


DEFAULT_SCHEMA = RecordSchema()


def _tag_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
class Record:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    where: str  # file:line


@dataclass
class ReadStats:
    records: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    skipped_examples: list[str] = field(default_factory=list)  # first few messages
    filtered: Counter = field(default_factory=Counter)  # "<filter_key>_filter" -> records left out


def resolve_inputs(spec: Any, *, config_key: str = "data.input") -> list[Source]:
    """Expand a path / glob / list / blend file into sources, in a deterministic order."""
    if spec is None or spec == "" or spec == []:
        raise ValueError(f"{config_key} is empty: give a JSONL/Parquet path, a glob, a list or a blend file")
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    sources: list[Source] = []
    for item in items:
        item = os.fspath(item)
        if item.endswith(".json") and os.path.isfile(item):
            sources.extend(_read_blend(item, config_key=config_key))
            continue
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches:
            raise FileNotFoundError(f"{config_key}: no file matches {item!r}")
        for m in matches:
            if not os.path.isfile(m):
                raise FileNotFoundError(f"{config_key}: {m!r} does not exist")
            sources.append(Source(path=m))
    return sources


def _read_blend(path: str, *, config_key: str) -> list[Source]:
    try:
        entries = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: blend file is not valid JSON: {e.msg}") from e
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: a blend file is a non-empty JSON list of {{'path', 'weight'|'max_records'}}")
    base = Path(path).parent
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "path" not in e or set(e) - {"path", "weight", "max_records"}:
            raise ValueError(f"{path}: entry {i}: expected keys path and weight or max_records, got {e!r}")
        if ("weight" in e) == ("max_records" in e):
            raise ValueError(f"{path}: entry {i}: give exactly one of weight or max_records")
        p = Path(e["path"]) if os.path.isabs(e["path"]) else base / e["path"]
        if not p.is_file():
            raise FileNotFoundError(f"{path}: entry {i}: {p} does not exist")
        w, n = e.get("weight"), e.get("max_records")
        if w is not None and not (isinstance(w, (int, float)) and w > 0):
            raise ValueError(f"{path}: entry {i}: weight must be a positive number, got {w!r}")
        if n is not None and not (isinstance(n, int) and n > 0):
            raise ValueError(f"{path}: entry {i}: max_records must be a positive integer, got {n!r}")
        out.append(Source(path=str(p), weight=w, max_records=n))
    return out


def _iter_raw(path: str, json_keys: tuple[str, ...] = ("messages", "tools")) -> Iterator[tuple[str, Any]]:
    """(file:line, parsed object or a RecordError) for each record of a JSONL or Parquet file.

    In Parquet, `json_keys` columns holding strings are parsed as JSON."""
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        structs = [k for k in json_keys if k in table.schema.names and _has_struct(table.schema.field(k).type, pa)]
        if structs:
            log.warning(
                "%s: column(s) %s are Parquet structs: pyarrow gives every row the union of all rows' keys "
                "(missing ones as None), so tool schemas and arguments may not be as written; store them "
                "as JSON strings instead", path, structs,
            )
        for i, row in enumerate(table.to_pylist()):
            where = f"{path}:row {i}"
            for key in json_keys:
                if isinstance(row.get(key), str):
                    try:
                        row[key] = json.loads(row[key])
                    except json.JSONDecodeError as e:
                        row = RecordError(where, key, f"invalid JSON string: {e.msg}", "invalid_json")
                        break
            yield where, row
        return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, RecordError(where, "line", f"not valid UTF-8 ({e.reason} at byte {e.start})", "invalid_utf8")
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as e:
                yield where, RecordError(where, "line", f"invalid JSON: {e.msg} (column {e.colno})", "invalid_json")


def _has_struct(t, pa) -> bool:
    while pa.types.is_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return pa.types.is_struct(t) or pa.types.is_map(t)


def _text_field(value: Any, where: str, name: str, *, optional: bool) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise RecordError(where, name, f"must be a string, got {type(value).__name__}", "non_string_content")
    return value


def validate_record(obj: Any, where: str, schema: RecordSchema = DEFAULT_SCHEMA) -> Record:
    """Check one parsed record; return it as messages with tool-call arguments parsed to dicts.

    Raises RecordError for: a non-object record, missing/empty `messages` (`schema.messages_key`),
    an unknown role, non-string content or reasoning, tool-call arguments that are not a JSON
    object, a conversation without an assistant turn (nothing to train), and literal `<tool_call>`
    text in content or reasoning while the record declares no tools. A prompt-response record
    needs string `input_key` / `output_key` fields (and `system_key`, when present); the response
    must not be empty. Fields are named as the record spells them.
    """
    if isinstance(obj, RecordError):
        raise obj
    if not isinstance(obj, dict):
        raise RecordError(where, "record", f"must be a JSON object, got {type(obj).__name__}", "not_an_object")
    if schema.record_format == "prompt_response":
        return _prompt_response_record(obj, where, schema)
    mk, tk = schema.messages_key, schema.tools_key
    messages = obj.get(mk)
    if not isinstance(messages, list) or not messages:
        raise RecordError(where, mk, f"missing or empty (expected a list of {{role, content}}; data.messages_key={mk!r})",
                          "missing_messages")
    tools = obj.get(tk)
    if tools is not None and not isinstance(tools, list):
        raise RecordError(where, tk, f"must be a list, got {type(tools).__name__}", "bad_tools")
    has_tools = bool(tools)
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        f = f"{mk}[{i}]"
        if not isinstance(m, dict):
            raise RecordError(where, f, "must be an object", "bad_message")
        role = m.get("role")
        if role not in ROLES:
            raise RecordError(where, f"{f}.role", f"unknown role {role!r} (allowed: {', '.join(ROLES)})", "unknown_role")
        msg = dict(m)
        content = _text_field(m.get("content"), where, f"{f}.content", optional=role == "assistant")
        msg["content"] = content
        reasoning = m.get("reasoning_content")
        if reasoning is not None:
            _text_field(reasoning, where, f"{f}.reasoning_content", optional=False)
        if not has_tools:
            for name, text in (("content", content), ("reasoning_content", reasoning or "")):
                if TOOL_CALL_TEXT in text:
                    raise RecordError(
                        where, f"{f}.{name}", "literal <tool_call> text while the record declares no tools",
                        "tool_call_text_without_tools",
                    )
        if m.get("tool_calls") is not None:
            if role != "assistant":
                raise RecordError(where, f"{f}.tool_calls", f"only assistant messages carry tool_calls, not {role}", "bad_tool_calls")
            msg["tool_calls"] = [_parse_tool_call(tc, where, f"{f}.tool_calls[{j}]") for j, tc in enumerate(m["tool_calls"])]
        out.append(msg)
    if not any(m["role"] == "assistant" for m in out):
        raise RecordError(where, mk, "no assistant message: nothing to train", "nothing_to_train")
    if schema.system_prompt is not None and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": schema.system_prompt})
    return Record(messages=out, tools=tools if has_tools else None, where=where)


def _prompt_response_record(obj: dict[str, Any], where: str, schema: RecordSchema) -> Record:
    """[system?, user: input, assistant: output]; errors name the record's own fields."""
    fields = {}
    for key, config_key, kind in ((schema.input_key, "input_key", "prompt"), (schema.output_key, "output_key", "response")):
        if key not in obj:
            raise RecordError(where, key, f"missing (the {kind} field, data.{config_key}={key!r})", f"missing_{kind}")
        fields[key] = _text_field(obj[key], where, key, optional=False)
    if not fields[schema.output_key]:
        raise RecordError(where, schema.output_key, "empty response: nothing to train", "nothing_to_train")
    system = schema.system_prompt
    if schema.system_key is not None and obj.get(schema.system_key) is not None:
        system = _text_field(obj[schema.system_key], where, schema.system_key, optional=False)
    for key, text in ((schema.system_key or "system_prompt", system or ""), *fields.items()):
        if TOOL_CALL_TEXT in text:
            raise RecordError(where, key, "literal <tool_call> text in a prompt-response record (no tools declared)",
                              "tool_call_text_without_tools")
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages += [{"role": "user", "content": fields[schema.input_key]},
                 {"role": "assistant", "content": fields[schema.output_key]}]
    return Record(messages=messages, tools=None, where=where)


def _parse_tool_call(tc: Any, where: str, f: str) -> dict[str, Any]:
    fn = tc.get("function") if isinstance(tc, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise RecordError(where, f, "expected {type: function, function: {name, arguments}}", "bad_tool_calls")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise RecordError(where, f"{f}.function.arguments", f"not valid JSON: {e.msg}", "invalid_tool_arguments") from e
    if not isinstance(args, dict):
        raise RecordError(where, f"{f}.function.arguments", f"must be a JSON object, got {type(args).__name__}", "invalid_tool_arguments")
    return {**tc, "function": {**fn, "arguments": args}}


def read_records(
    sources: list[Source], *, on_error: str = "raise", sample: int | None = None, seed: int = 0,
    schema: RecordSchema = DEFAULT_SCHEMA,
) -> tuple[list[Record], ReadStats]:
    """Read and validate all sources; apply each source's weight/max_records, then `sample`.

    `on_error="raise"` stops at the first bad record with its file:line; `"skip"` counts it.
    Records that `schema`'s tag filter leaves out are counted in `stats.filtered` and never
    validated. A weight w takes round(w x records) of the file's valid records: a seeded sample
    without replacement for w <= 1, whole copies plus a sample of the rest for w > 1.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
    stats = ReadStats()
    records: list[Record] = []
    json_keys = (schema.messages_key, schema.tools_key)
    for si, src in enumerate(sources):
        taken: list[Record] = []
        for where, obj in _iter_raw(src.path, json_keys):
            if src.max_records is not None and len(taken) >= src.max_records:
                break
            if not schema.keeps(obj):
                stats.filtered[f"{schema.filter_key}_filter"] += 1
                continue
            try:
                taken.append(validate_record(obj, where, schema))
            except RecordError as e:
                if on_error == "raise":
                    raise
                stats.skipped[e.reason] += 1
                if len(stats.skipped_examples) < 20:
                    stats.skipped_examples.append(str(e))
        if src.weight is not None:
            taken = _weighted(taken, src.weight, random.Random(f"{seed}:{si}:{src.path}"))
        records.extend(taken)
    if sample is not None:
        records = records[:sample]
    stats.records = len(records)
    return records, stats


def _weighted(items: list[Record], weight: float, rng: random.Random) -> list[Record]:
    n = round(weight * len(items))
    whole, rest = divmod(n, len(items)) if items else (0, 0)
    return items * whole + rng.sample(items, rest) if items else []
