"""Tokenizer fingerprints: the vocab hash sees vocab, merges and added tokens and nothing else;
the chat-template hash sees the template; a vocab mismatch refuses, a template mismatch warns."""

from __future__ import annotations

import logging

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from nemotron_core.tokenization import (
    TokenizerMismatchError,
    chat_template_hash,
    check_tokenizer_match,
    fingerprint,
    load_tokenizer,
    vocab_hash,
)

CORPUS = ["the cat sat on the mat", "a dog ate the bone", "cats and dogs"] * 20


def _tok(vocab_size=270, extra_special=(), template="{{ messages }}"):
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", *extra_special], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    t.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>")
    fast.chat_template = template
    return fast


def test_vocab_hash_is_stable_and_ignores_the_template(tmp_path):
    a, b = _tok(), _tok(template="other")
    assert vocab_hash(a) == vocab_hash(b)
    assert chat_template_hash(a) != chat_template_hash(b)
    a.save_pretrained(tmp_path / "a")
    loaded = load_tokenizer(tmp_path / "a")
    assert vocab_hash(loaded) == vocab_hash(a)
    assert chat_template_hash(loaded) == chat_template_hash(a)


def test_vocab_hash_sees_merges_and_added_tokens():
    base = _tok()
    assert vocab_hash(_tok(vocab_size=280)) != vocab_hash(base)  # more merges
    assert vocab_hash(_tok(extra_special=("<|im_end|>",))) != vocab_hash(base)  # an added token
    added = _tok()
    added.add_tokens(["<new>"])
    assert vocab_hash(added) != vocab_hash(base)


def test_check_refuses_vocab_mismatch_naming_both(tmp_path):
    data_side = fingerprint(_tok(), name="tiny", path="/data/tok").to_dict()
    model_side = fingerprint(_tok(vocab_size=280), name="other", path="/ckpt/tok")
    with pytest.raises(TokenizerMismatchError, match=r"'tiny'.*'other'"):
        check_tokenizer_match(data_side, model_side, expected_from="data.path", actual_from="the checkpoint")


def test_check_warns_on_template_mismatch(caplog):
    data_side = fingerprint(_tok(), name="tiny", path="/a").to_dict()
    model_side = fingerprint(_tok(template="changed"), name="tiny", path="/b")
    with caplog.at_level(logging.WARNING):
        check_tokenizer_match(data_side, model_side, expected_from="data", actual_from="model")
    assert "chat template differs" in caplog.text


def test_load_tokenizer_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.path="):
        load_tokenizer(tmp_path / "nope")
