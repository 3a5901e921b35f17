"""The one writer of `metadata.json` and `lineage.json` that every stage output carries.

`metadata.json` says what a directory holds (counts, format, tokenizer fingerprint, inputs with
content hashes) so the next stage can refuse mismatched inputs before spending compute.
`lineage.json` says where it came from: the resolved config, inputs with hashes, tokenizer,
parent checkpoint and code version. Neither holds a timestamp, so identical inputs and config
give byte-identical files (the basis of data-prep cache hits).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemotron_core.utils.atomic import atomic_write_json

METADATA_FILE = "metadata.json"
LINEAGE_FILE = "lineage.json"
_HASH_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def describe_inputs(paths: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """[{path, bytes, sha256}] for each input file, in the order given."""
    out = []
    for p in paths:
        p = Path(p)
        out.append({"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)})
    return out


def describe_dataset(directory: str | os.PathLike) -> dict[str, Any]:
    """A prepared data directory as a lineage input: {path, kind, cache_key, metadata_sha256,
    lineage_sha256}. The cache key hashes everything its rows depend on (inputs' content,
    tokenizer, config), so it identifies the content without reading every shard."""
    directory = Path(directory)
    meta = json.loads((directory / METADATA_FILE).read_text())
    out = {"path": str(directory), "kind": meta.get("kind"), "cache_key": meta.get("cache_key"),
           "metadata_sha256": file_sha256(directory / METADATA_FILE)}
    if (directory / LINEAGE_FILE).is_file():
        out["lineage_sha256"] = file_sha256(directory / LINEAGE_FILE)
    return out


def code_version() -> dict[str, Any]:
    """Package version and, in a git checkout, the commit and whether the tree is dirty."""
    from nemotron_core import __version__

    info: dict[str, Any] = {"nemotron_core": __version__}
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root, capture_output=True, text=True, timeout=10,
            )
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


@dataclass
class Lineage:
    stage: str
    config: dict[str, Any]  # the resolved config
    inputs: list[dict[str, Any]] = field(default_factory=list)  # describe_inputs(...)
    tokenizer: dict[str, Any] | None = None  # TokenizerFingerprint.to_dict()
    parent: dict[str, Any] | None = None  # e.g. {"checkpoint": path, "lineage": <its lineage.json>}
    code: dict[str, Any] = field(default_factory=code_version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "config": self.config,
            "inputs": self.inputs,
            "tokenizer": self.tokenizer,
            "parent": self.parent,
            "code": self.code,
        }


def write_metadata(directory: str | os.PathLike, metadata: dict[str, Any], *, lineage: Lineage) -> None:
    """Write `metadata.json` (with the lineage's tokenizer and inputs) and `lineage.json`."""
    directory = Path(directory)
    meta = dict(metadata)
    meta.setdefault("stage", lineage.stage)
    meta.setdefault("tokenizer", lineage.tokenizer)
    meta.setdefault("inputs", lineage.inputs)
    atomic_write_json(directory / METADATA_FILE, meta)
    atomic_write_json(directory / LINEAGE_FILE, lineage.to_dict())


def read_metadata(directory: str | os.PathLike, *, config_key: str = "data.path") -> dict[str, Any]:
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{config_key}={os.fspath(directory)!r} has no {METADATA_FILE}: run this stage's data_prep.py first"
        )
    return json.loads(path.read_text())


def read_lineage(directory: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(directory) / LINEAGE_FILE).read_text())
