from __future__ import annotations

import hashlib

import pytest

from nemotron_core.lineage import (
    Lineage,
    code_version,
    describe_inputs,
    file_sha256,
    read_lineage,
    read_metadata,
    write_metadata,
)


def test_file_sha256_and_inputs(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"x": 1}\n')
    assert file_sha256(p) == hashlib.sha256(b'{"x": 1}\n').hexdigest()
    assert describe_inputs([p]) == [{"path": str(p), "bytes": 9, "sha256": hashlib.sha256(b'{"x": 1}\n').hexdigest()}]


def test_code_version_has_package_and_commit():
    v = code_version()
    assert v["nemotron_core"]
    # the test suite runs from a git checkout
    assert len(v.get("git_commit", "")) == 40


def test_metadata_and_lineage_round_trip(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    lin = Lineage(
        stage="stage1_sft",
        config={"data": {"pack_size": 8}},
        inputs=describe_inputs([src]),
        tokenizer={"name": "tiny", "vocab_hash": "abc", "chat_template_hash": "def"},
        parent={"checkpoint": "/ckpt"},
    )
    out = tmp_path / "out"
    write_metadata(out, {"pack_size": 8, "num_sequences": 3}, lineage=lin)
    meta = read_metadata(out)
    assert meta["pack_size"] == 8 and meta["num_sequences"] == 3
    assert meta["tokenizer"]["vocab_hash"] == "abc"
    assert meta["inputs"][0]["sha256"] == file_sha256(src)
    lineage = read_lineage(out)
    assert lineage["config"] == {"data": {"pack_size": 8}}
    assert lineage["parent"] == {"checkpoint": "/ckpt"}
    assert lineage["code"]["nemotron_core"]
    # no clock in either file: writing again gives the same bytes
    before = [(out / f).read_bytes() for f in ("metadata.json", "lineage.json")]
    write_metadata(out, {"pack_size": 8, "num_sequences": 3}, lineage=lin)
    assert [(out / f).read_bytes() for f in ("metadata.json", "lineage.json")] == before


def test_missing_metadata_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.path=.*has no metadata\.json: run this stage's data_prep\.py first"):
        read_metadata(tmp_path)
