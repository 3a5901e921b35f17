"""Online SFT data (`data=chat_jsonl`): the rows, batches and first-step loss of the offline packed
path, with no data_prep step (nemotron_core/data/online.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nemotron_core.config import SFTDataConfig
from nemotron_core.data.online import OnlineSFTDataset, load_online_sft
from nemotron_core.data.packed import COLUMNS, PackedDataset, iterate_batches
from nemotron_core.data.records import RecordError
from nemotron_core.data.sft_prep import prepare_sft_data
from nemotron_core.model import build_nano3
from nemotron_core.paths import asset_path
from nemotron_core.train.step import train_step

CHAT = str(asset_path("data/tiny_chat.jsonl"))
TOK = str(asset_path("tokenizer"))


def data_cfg(tmp_path, **kw) -> SFTDataConfig:
    base = dict(name="t", input=CHAT, output_dir=str(tmp_path / "packed"), pack_size=384, sample=100, num_workers=1,
                split=[0.9, 0.1, 0.0])  # fmt: skip
    base.update(kw)
    return SFTDataConfig(**base)


def offline(data: SFTDataConfig, chat_template="default"):
    prepare_sft_data(data, tokenizer_path=TOK, tokenizer_name="tiny", resolved_config={}, progress=False, chat_template=chat_template)
    return {s: PackedDataset(data.output_dir, split=s) for s in ("train", "valid")}


def online(data: SFTDataConfig, chat_template="default"):
    return load_online_sft(replace(data, online=True), tokenizer_path=TOK, tokenizer_name="tiny", chat_template=chat_template)


def assert_same_rows(a, b):
    assert len(a) == len(b) > 0
    assert a.lengths.tolist() == b.lengths.tolist()
    for i in range(len(a)):
        ra, rb = a[i], b[i]
        for c in COLUMNS:
            assert ra[c].dtype == rb[c].dtype and np.array_equal(ra[c], rb[c]), (i, c)


@pytest.fixture(scope="module")
def both_paths(tmp_path_factory):
    """(data, offline packed splits, online metadata, online splits) for the default template."""
    data = data_cfg(tmp_path_factory.mktemp("online"))
    packed = offline(data)
    meta, rows = online(data)
    return data, packed, meta, rows


@pytest.mark.parametrize("template", ["default", "passthrough"])
def test_online_rows_equal_the_offline_packed_rows(tmp_path, both_paths, template):
    if template == "default":
        data, packed, meta, rows = both_paths
    else:
        data = data_cfg(tmp_path)
        packed = offline(data, template)
        meta, rows = online(data, template)
    for split in ("train", "valid"):
        assert_same_rows(rows[split], packed[split])
    written = json.loads((Path(data.output_dir) / "metadata.json").read_text())
    assert meta["cache_key"] == written["cache_key"] and meta["tokenizer"] == written["tokenizer"]
    assert meta["inputs"] == written["inputs"] and meta["kind"] == "sft_online"
    assert meta["splits"]["train"]["num_packed_sequences"] == len(rows["train"])
    assert meta["splits"]["train"]["trainable_tokens"] == written["splits"]["train"]["trainable_tokens"]


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small shared CPU this tiny model is many times faster so."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_first_step_loss_online_equals_offline(both_paths, make_cfg, one_thread):
    data, packed, _, online_rows = both_paths
    losses = []
    for rows in (packed["train"], online_rows["train"]):
        model = build_nano3(make_cfg(vocab_size=4096, chunk_size=64), seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        step, micro = next(iterate_batches(rows, micro_batch_size=2, global_batch_size=4, dp_rank=0, dp_size=1, seed=data.seed))
        assert step == 0 and sum(b.num_trainable_tokens for b in micro) > 100  # a real step, not an empty one
        losses.append(train_step(model, opt, micro).loss)
    assert abs(losses[0] - losses[1]) <= 1e-6
    assert 7.0 < losses[0] < 10.0  # about ln(4096) at init: the loss was computed on real tokens


def test_dataset_interface_is_the_packed_datasets():
    rows = [{"input_ids": np.array([5, 6, 7], np.int32), "loss_mask": np.array([1, 1, 0], np.uint8),
             "seq_start_id": np.array([0], np.int32)}]  # fmt: skip
    ds = OnlineSFTDataset(rows, split="train", source="x.jsonl")
    assert len(ds) == 1 and ds.lengths.tolist() == [3]
    row = ds[0]
    assert row["input_ids"].tolist() == [5, 6, 7] and row["loss_mask"].dtype == np.uint8
    row["input_ids"][0] = 99
    assert ds[-1]["input_ids"].tolist() == [5, 6, 7]  # a fresh copy each time
    with pytest.raises(IndexError, match=r"row 1 out of range for 1 rows \(x\.jsonl, split 'train'\)"):
        ds[1]
    with pytest.raises(TypeError, match="row index must be an integer"):
        ds["0"]
    with pytest.raises(ValueError, match="split must be one of"):
        OnlineSFTDataset(rows, split="dev", source="x")


def test_online_bad_record_fails_with_file_line_before_tokenizing(tmp_path, monkeypatch):
    import nemotron_core.data.sft_prep as sft_prep

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "q", "output": "a"}\n{"input": "q"}\n')

    def no_tokenizing(*a, **k):
        raise AssertionError("tokenized before the records were validated")

    monkeypatch.setattr(sft_prep, "_tokenize_all", no_tokenizing)
    data = data_cfg(tmp_path, input=str(bad), record_format="prompt_response", sample=None)
    with pytest.raises(RecordError, match=rf"^{bad}:2: output: missing"):
        online(data)


def test_online_prompt_response_with_tag_filter(tmp_path):
    p = tmp_path / "pr.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{2 * i}.", "used_in": ["sft"] if i % 3 else ["rl"]} for i in range(40)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = data_cfg(tmp_path, input=str(p), record_format="prompt_response", input_key="question", output_key="answer",
                    filter_key="used_in", filter_values=["sft"], sample=None, split=[1.0, 0.0, 0.0])  # fmt: skip
    meta, ds = online(data, "passthrough")
    assert meta["num_records"] == 26 and meta["num_filtered"] == {"used_in_filter": 14}
    assert len(ds["valid"]) == 0 and meta["splits"]["train"]["num_sequences"] == 26
    from nemotron_core.tokenization import load_tokenizer

    tok = load_tokenizer(TOK)
    row = ds["train"][0]
    trained = [tok.decode(row["input_ids"][j + 1 : j + 2].tolist()) for j in np.flatnonzero(row["loss_mask"])]
    answers = {f"{2 * i}." for i in range(40) if i % 3}
    # passthrough: each document is "question" + "answer"; exactly the answers' tokens are labels
    starts = list(row["seq_start_id"]) + [len(row["input_ids"])]
    spans = []
    for s, e in zip(starts[:-1], starts[1:]):
        idx = [j + 1 for j in np.flatnonzero(row["loss_mask"][s:e]) + s]
        spans.append(tok.decode(row["input_ids"][idx].tolist()))
    assert spans and set(spans) <= answers and "".join(trained) == "".join(spans)
