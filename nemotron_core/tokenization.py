"""Loading tokenizers and fingerprinting them.

Two hashes travel with every dataset and checkpoint:

- `vocab_hash`: sha256 over the tokenizer's model (vocab and merges) and its added tokens.
  Data and model must agree on it: a mismatch refuses to train (`check_vocab_hash`).
- `chat_template_hash`: sha256 of the chat template as loaded. Recorded; a mismatch only warns,
  since users swap templates on purpose.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)


class TokenizerMismatchError(ValueError):
    """The data was tokenized with another vocabulary than the model's tokenizer."""


@dataclass(frozen=True)
class TokenizerFingerprint:
    name: str
    path: str
    vocab_size: int
    vocab_hash: str
    chat_template_hash: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_tokenizer(path: str | os.PathLike, *, config_key: str = "tokenizer.path"):
    """`AutoTokenizer.from_pretrained(path)` (local files only), with an error naming the key."""
    from transformers import AutoTokenizer

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{config_key}={path!r} is not a tokenizer directory")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _sha256_json(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def vocab_hash(tokenizer) -> str:
    """sha256 over vocab, merges and added tokens (content, id, special); not the chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        model = spec.get("model", {})
        added = [
            {"id": t["id"], "content": t["content"], "special": t.get("special", False)}
            for t in spec.get("added_tokens", [])
        ]
    else:  # slow tokenizer: the vocabulary is all we can see
        model = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])}
        added = sorted(
            ({"id": i, "content": str(t)} for i, t in tokenizer.added_tokens_decoder.items()),
            key=lambda d: d["id"],
        )
    return _sha256_json({"model": model, "added_tokens": added})


def chat_template_hash(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        return None
    if isinstance(template, str):
        return hashlib.sha256(template.encode("utf-8")).hexdigest()
    return _sha256_json(template)


def fingerprint(tokenizer, *, name: str, path: str | os.PathLike) -> TokenizerFingerprint:
    return TokenizerFingerprint(
        name=name,
        path=os.fspath(path),
        vocab_size=len(tokenizer),
        vocab_hash=vocab_hash(tokenizer),
        chat_template_hash=chat_template_hash(tokenizer),
    )


def check_tokenizer_match(
    expected: dict[str, Any], actual: TokenizerFingerprint, *, expected_from: str, actual_from: str
) -> None:
    """Refuse a vocab mismatch (naming both sources); warn on a chat-template mismatch.

    `expected` is a fingerprint dict as stored in a `metadata.json` (key `tokenizer`).
    """
    if expected.get("vocab_hash") != actual.vocab_hash:
        raise TokenizerMismatchError(
            f"tokenizer vocabulary mismatch: {expected_from} was made with tokenizer "
            f"{expected.get('name')!r} ({expected.get('path')}, vocab_hash {expected.get('vocab_hash')}), "
            f"but {actual_from} uses {actual.name!r} ({actual.path}, vocab_hash {actual.vocab_hash}). "
            "Re-run the data prep with this tokenizer, or point tokenizer.path at the one the data used."
        )
    if expected.get("chat_template_hash") != actual.chat_template_hash:
        log.warning(
            "chat template differs between %s (%s) and %s (%s); continuing, since templates are "
            "swapped on purpose",
            expected_from,
            expected.get("chat_template_hash"),
            actual_from,
            actual.chat_template_hash,
        )
