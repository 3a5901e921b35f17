"""Checkpoint fixtures: the tiny config and the shipped tiny tokenizer's fingerprint."""

from __future__ import annotations

import pytest
from ckpt_helpers import TOKENIZER_DIR, tiny_config

from nemotron_core.config.model import ModelConfig


@pytest.fixture(scope="session")
def tokenizer_fp() -> dict:
    from nemotron_core.tokenization import fingerprint, load_tokenizer

    return fingerprint(load_tokenizer(TOKENIZER_DIR), name="tiny", path=TOKENIZER_DIR).to_dict()


@pytest.fixture
def cfg() -> ModelConfig:
    return tiny_config()
