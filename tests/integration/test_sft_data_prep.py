"""Stage 1 data prep end to end on the shipped conversations.

The property test decodes every trained span of every packed row and compares it with the
assistant text computed here, independently of the template and chunking code, from the records.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nemotron_core.config import SFTDataConfig
from nemotron_core.data.packed import PackedDataset
from nemotron_core.data.records import RecordError, read_records, resolve_inputs
from nemotron_core.data.sft_prep import prepare_sft_data
from nemotron_core.paths import PACKAGE_DIR, asset_path
from nemotron_core.tokenization import load_tokenizer

CHAT = str(asset_path("data/tiny_chat.jsonl"))
TOK = str(asset_path("tokenizer"))
ROOT = PACKAGE_DIR.parent


def cfg(tmp_path, **kw) -> SFTDataConfig:
    base = dict(name="t", input=CHAT, output_dir=str(tmp_path / "out"), path=str(tmp_path / "out"), pack_size=4096, num_workers=1)
    base.update(kw)
    return SFTDataConfig(**base)


def run(data: SFTDataConfig) -> dict:
    return prepare_sft_data(data, tokenizer_path=TOK, tokenizer_name="tiny", resolved_config={"data": "test"}, progress=False)


def tree_digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- the oracle
def _value(v) -> str:
    return json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else str(v)


def expected_assistant_text(m: dict, *, thinking_prompt: bool) -> str:
    """What the model must learn for one assistant turn (nano3.md section 4), written out here."""
    content = m.get("content") or ""
    if thinking_prompt:  # context ended in "<think>\n": reasoning, </think>, stripped content
        text = f"{m['reasoning_content']}\n</think>\n{content.strip()}"
    else:  # context ended in "<think></think>"
        text = content
    if m.get("tool_calls"):
        text += "\n"
        for tc in m["tool_calls"]:
            fn = tc["function"]
            text += f"<tool_call>\n<function={fn['name']}>\n"
            for k, v in fn["arguments"].items():
                text += f"<parameter={k}>\n{_value(v)}\n</parameter>\n"
            text += "</function>\n</tool_call>\n"
    return text + "<|im_end|>\n"


def expected_sequences(records) -> Counter:
    """Multiset of per-sequence trained-span tuples."""
    out = Counter()
    for r in records:
        msgs = r.messages
        if any(m["role"] == "assistant" and m.get("reasoning_content") for m in msgs):
            users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
            for u, end in zip(users, users[1:] + [len(msgs)]):
                spans = tuple(
                    expected_assistant_text(m, thinking_prompt=bool(m.get("reasoning_content")))
                    for m in msgs[u + 1 : end] if m["role"] == "assistant"
                )
                if spans:
                    out[spans] += 1
        else:
            out[tuple(expected_assistant_text(m, thinking_prompt=False) for m in msgs if m["role"] == "assistant")] += 1
    return out


def decoded_sequences(ds: PackedDataset, tokenizer) -> Counter:
    out = Counter()
    for i in range(len(ds)):
        row = ds[i]
        ids, mask, starts = row["input_ids"], row["loss_mask"], list(row["seq_start_id"]) + [len(row["input_ids"])]
        for s, e in zip(starts[:-1], starts[1:]):
            m = mask[s:e]
            assert m[-1] == 0  # no label crosses the document boundary
            # trained label positions j+1 for mask[j] == 1, grouped into contiguous runs
            pos = np.flatnonzero(m) + 1 + s
            runs = np.split(pos, np.flatnonzero(np.diff(pos) != 1) + 1) if len(pos) else []
            out[tuple(tokenizer.decode(ids[r].tolist()) for r in runs)] += 1
    return out


def check_property(tmp_path, sample=None):
    data = cfg(tmp_path, sample=sample, split=[1.0, 0.0, 0.0])
    meta = run(data)
    assert meta["num_truncated"] == 0 and meta["num_filtered"] == {}
    records, _ = read_records(resolve_inputs(CHAT), sample=sample)
    tok = load_tokenizer(TOK)
    got = decoded_sequences(PackedDataset(data.output_dir, split="train"), tok)
    want = expected_sequences(records)
    assert sum(got.values()) == meta["num_sequences"] > 0
    assert got == want
    return meta


def test_trained_spans_are_exactly_the_assistant_text_subset(tmp_path):
    meta = check_property(tmp_path, sample=300)
    assert meta["num_packed_sequences"] < meta["num_sequences"]  # rows really hold several documents


@pytest.mark.slow
def test_trained_spans_are_exactly_the_assistant_text_all_shipped_data(tmp_path):
    check_property(tmp_path)


# --------------------------------------------------------------------------- behaviour
def test_output_identical_for_any_worker_count(tmp_path):
    a = run(cfg(tmp_path / "a", sample=400, num_workers=1, pack_size=1024))
    b = run(cfg(tmp_path / "b", sample=400, num_workers=2, pack_size=1024))
    assert a["cache_key"] == b["cache_key"]
    assert tree_digest(tmp_path / "a" / "out") == tree_digest(tmp_path / "b" / "out")


def test_rerun_is_a_cache_hit_unless_forced(tmp_path, caplog):
    data = cfg(tmp_path, sample=100)
    first = run(data)
    before = {p: p.stat().st_mtime_ns for p in Path(data.output_dir).rglob("*")}
    with caplog.at_level("INFO"):
        again = run(data)
    assert again == first and "cache hit" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in Path(data.output_dir).rglob("*")} == before
    forced = run(replace(data, force=True))
    assert forced == first  # same content, rebuilt
    changed = run(replace(data, seed=7))
    assert changed["cache_key"] != first["cache_key"]


def test_metadata_has_every_promised_field(tmp_path):
    meta = run(cfg(tmp_path, sample=200, pack_size=512, on_error="skip"))
    for key in ["pack_size", "packing_algorithm", "seed", "tokenizer", "inputs", "splits", "num_sequences",
                "num_packed_sequences", "packing_factor", "packing_efficiency", "num_truncated", "num_filtered",
                "total_tokens", "trainable_tokens"]:
        assert key in meta, key
    assert meta["tokenizer"]["name"] == "tiny" and len(meta["tokenizer"]["vocab_hash"]) == 64
    assert meta["inputs"][0]["sha256"] == hashlib.sha256(Path(CHAT).read_bytes()).hexdigest()
    assert set(meta["splits"]) == {"train", "valid", "test"}
    assert sum(s["rows"] for s in meta["splits"].values()) == meta["num_packed_sequences"]
    assert sum(s["sequences"] for s in meta["splits"].values()) == meta["num_sequences"]
    assert meta["num_truncated"] > 0  # pack 512 cuts the long tail
    assert 0 < meta["packing_efficiency"] <= 1
    assert meta["trainable_tokens"] == sum(s["trainable_tokens"] for s in meta["splits"].values())
    lineage = json.loads((tmp_path / "out" / "lineage.json").read_text())
    assert lineage["inputs"] == meta["inputs"] and lineage["config"] == {"data": "test"}


def test_npy_format_is_the_reference_layout(tmp_path):
    data = cfg(tmp_path, sample=150, format="npy", pack_size=1024)
    run(data)
    out = Path(data.output_dir)
    assert {p.name for p in out.iterdir()} >= {"training.npy", "validation.npy", "test.npy", "metadata.json", "blend.json"}
    rows = np.load(out / "training.npy", allow_pickle=True)
    assert set(rows[0]) == {"input_ids", "loss_mask", "seq_start_id"}
    parquet = cfg(tmp_path / "pq", sample=150, pack_size=1024)
    run(parquet)
    a, b = PackedDataset(out, split="train"), PackedDataset(parquet.output_dir, split="train")
    assert len(a) == len(b) and all((a[i]["input_ids"] == b[i]["input_ids"]).all() for i in range(len(a)))


def test_bad_record_fails_before_any_output(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = Path(CHAT).read_text().splitlines()[:5]
    bad.write_text("\n".join(good + ['{"messages": [{"role": "robot", "content": "x"}]}']) + "\n")
    data = cfg(tmp_path, input=str(bad))
    with pytest.raises(RecordError, match=rf"{bad}:6: messages\[0\]\.role: unknown role 'robot'"):
        run(data)
    assert not Path(data.output_dir).exists()
    meta = run(replace(data, on_error="skip"))
    assert meta["num_filtered"] == {"unknown_role": 1} and meta["num_records"] == 5
    assert meta["skipped_examples"][0].startswith(f"{bad}:6:")


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    data = cfg(tmp_path, sample=10)
    Path(data.output_dir).mkdir(parents=True)
    (Path(data.output_dir) / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="data.output_dir"):
        run(data)
    assert (Path(data.output_dir) / "mine.txt").read_text() == "keep"


def test_recipe_runs_and_dry_runs(tmp_path):
    script = ROOT / "recipes/nano3/stage1_sft/data_prep.py"
    out = tmp_path / "packed"
    cmd = [sys.executable, str(script), f"data.output_dir={out}", "data.sample=60", "logging=quiet", "run_name=test", f"hydra.run.dir={tmp_path}/run"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sequences ->" in proc.stdout and (out / "metadata.json").is_file()
    dry = subprocess.run([sys.executable, str(script), "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "pack_size: 2048" in dry.stdout
    typo = subprocess.run([sys.executable, str(script), "data.pack_sise=3"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert typo.returncode != 0 and "data.pack_sise" in typo.stderr


def test_inspect_packed_shows_trained_spans(tmp_path):
    data = cfg(tmp_path, sample=40, pack_size=1024)
    run(data)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/inspect_packed.py"), data.output_dir, "--plain"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "document boundary" in out and "[[" in out
    # every highlighted span ends the assistant turn it belongs to
    spans = [s.split("]]")[0] for s in out.split("[[")[1:]]
    assert spans and all(s.endswith("<|im_end|>\n") for s in spans)
