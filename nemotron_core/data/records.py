"""Reading and validating OpenAI-format chat records before any expensive work.

Input forms (`data.input`): a path, a glob, a list of them, or a blend file (a `.json` file
holding a list of `{"path": ..., "weight": w}` or `{"path": ..., "max_records": n}`; paths
relative to the blend file). JSONL is parsed one line at a time with `json.loads`, so each
record keeps its own tool schemas and arguments exactly as written (nothing is unified across
records, unlike columnar readers that invent `None` keys). Parquet is read with pyarrow; a
`messages`/`tools` column holding JSON strings is parsed the same way.

Every record is validated (`validate_record`) and any problem is reported as
`file:line: field: what is wrong`; with `on_error="skip"` records are skipped and counted by
reason instead.
"""

from __future__ import annotations

import glob
import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
TOOL_CALL_TEXT = "<tool_call>"


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


def _iter_raw(path: str) -> Iterator[tuple[str, Any]]:
    """(file:line, parsed object or a RecordError) for each record of a JSONL or Parquet file."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for i, row in enumerate(table.to_pylist()):
            where = f"{path}:row {i}"
            for key in ("messages", "tools"):
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


def _text_field(value: Any, where: str, name: str, *, optional: bool) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise RecordError(where, name, f"must be a string, got {type(value).__name__}", "non_string_content")
    return value


def validate_record(obj: Any, where: str) -> Record:
    """Check one parsed record; return it with tool-call arguments parsed to dicts.

    Raises RecordError for: a non-object record, missing/empty `messages`, an unknown role,
    non-string content or reasoning, tool-call arguments that are not a JSON object, a
    conversation without an assistant turn (nothing to train), and literal `<tool_call>` text in
    content or reasoning while the record declares no tools.
    """
    if isinstance(obj, RecordError):
        raise obj
    if not isinstance(obj, dict):
        raise RecordError(where, "record", f"must be a JSON object, got {type(obj).__name__}", "not_an_object")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecordError(where, "messages", "missing or empty (expected a list of {role, content})", "missing_messages")
    tools = obj.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise RecordError(where, "tools", f"must be a list, got {type(tools).__name__}", "bad_tools")
    has_tools = bool(tools)
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        f = f"messages[{i}]"
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
        raise RecordError(where, "messages", "no assistant message: nothing to train", "nothing_to_train")
    return Record(messages=out, tools=tools if has_tools else None, where=where)


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
    sources: list[Source], *, on_error: str = "raise", sample: int | None = None, seed: int = 0
) -> tuple[list[Record], ReadStats]:
    """Read and validate all sources; apply each source's weight/max_records, then `sample`.

    `on_error="raise"` stops at the first bad record with its file:line; `"skip"` counts it.
    A weight w takes round(w x records) of the file's valid records: a seeded sample without
    replacement for w <= 1, whole copies plus a sample of the rest for w > 1.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
    stats = ReadStats()
    records: list[Record] = []
    for si, src in enumerate(sources):
        taken: list[Record] = []
        for where, obj in _iter_raw(src.path):
            if src.max_records is not None and len(taken) >= src.max_records:
                break
            try:
                taken.append(validate_record(obj, where))
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
