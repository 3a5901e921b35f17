"""Build the tiny byte-level BPE tokenizer shipped in nemotron_core/assets/tokenizer/.

    python scripts/build_tiny_tokenizer.py                  # rewrites nemotron_core/assets/tokenizer/
    python scripts/build_tiny_tokenizer.py --out /tmp/tok   # elsewhere (the reproducibility test does this)

Trains on the shipped tiny corpora (nemotron_core/assets/data/tiny_chat.jsonl: message texts, reasoning,
tool-call text and tool schemas; tiny_text.jsonl: field `text`) and saves a Hugging Face tokenizer
directory with transformers (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`).
Rerun it whenever the corpora or the template change; the tests compare the shipped files with a rebuild.

Guarantees (tests/unit/data/test_chat_template.py):
- exactly VOCAB_SIZE = 4096 ids, special tokens included (the tiny model's vocab_size); the corpus is too
  small to yield that many merges (about 2,400 with digits split), so `<|reserved_N|>` special tokens fill
  the top ids (about 1,400; never produced from text that does not spell them);
- ids 0..10 are SPECIAL_TOKENS + CONTROL_TOKENS in that order, each encodes to one id;
- byte-level, digits split one by one, no prefix space, no normalizer: decode(encode(text)) == text for any
  text, also when it is encoded in chunks with add_special_tokens=False;
- the same inputs give the same bytes in every output file (about 2.5 s on one core);
- chat_template.jinja is nemotron_core/assets/nano3_chat_template.jinja byte for byte.

`<pad>`, `<s>`, `</s>`, `<|im_start|>`, `<|im_end|>` are special tokens (dropped by
decode(skip_special_tokens=True)). The think / tool markers are added tokens with special=False: one id
each, never split, and decoded as text even with skip_special_tokens=True (the released Nano3 tokenizer
decodes them as text too), so a generated `<think>...</think>` or `<tool_call>` block survives decoding.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = REPO_ROOT / "nemotron_core" / "assets"
TEMPLATE_PATH = ASSETS / "nano3_chat_template.jinja"
DEFAULT_OUT = ASSETS / "tokenizer"
DEFAULT_CHAT = ASSETS / "data" / "tiny_chat.jsonl"
DEFAULT_TEXT = ASSETS / "data" / "tiny_text.jsonl"

VOCAB_SIZE = 4096  # the tiny model's vocab_size; a multiple of 8
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]  # ids 0..4
CONTROL_TOKENS = [  # ids 5..10, added tokens decoded as text
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
]
MAX_TOKEN_CHARS = 16  # keeps merges word-sized on a corpus this small
MODEL_MAX_LENGTH = 1_048_576


# --------------------------------------------------------------------------- corpus
def _arguments_text(arguments: object) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    if not isinstance(arguments, dict):
        return json.dumps(arguments, ensure_ascii=False)
    parts = []
    for name, value in arguments.items():
        value_text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
        parts.append(f"<parameter={name}>\n{value_text}\n</parameter>\n")
    return "".join(parts)


def _message_texts(message: dict) -> Iterator[str]:
    content = message.get("content")
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):  # content parts
        yield "".join(part.get("text", "") for part in content if isinstance(part, dict))
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        yield reasoning
    for call in message.get("tool_calls") or []:
        function = call.get("function", call)
        arguments = _arguments_text(function.get("arguments", {}))
        yield f"<function={function.get('name', '')}>\n{arguments}</function>\n"


def _tool_texts(tools: list) -> Iterator[str]:
    for tool in tools or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else {}
        yield json.dumps(function, ensure_ascii=False)


def iter_corpus(chat_path: Path, text_path: Path) -> Iterator[str]:
    """Yield training texts in file order (the order fixes nothing in BPE, but keeps runs identical)."""
    with chat_path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            yield from _tool_texts(record.get("tools"))
            for message in record.get("messages", []):
                yield from _message_texts(message)
    with text_path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)["text"]


# --------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: Iterator[str]) -> Tokenizer:
    """Byte-level BPE with exactly VOCAB_SIZE ids; reserved tokens fill what the corpus cannot merge."""
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = None
    # Digits one by one (as the released Nano3 tokenizer does): the tiny data is full of arithmetic, and
    # whole-number tokens would fill the vocabulary with numbers the model must learn one by one.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS + CONTROL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=MAX_TOKEN_CHARS,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)

    # The trainer registers every listed token as special; control tokens decode as text (special=False).
    state = json.loads(tokenizer.to_str())
    for added in state["added_tokens"]:
        added["normalized"] = False
        added["special"] = added["content"] in SPECIAL_TOKENS
    tokenizer = Tokenizer.from_str(json.dumps(state))

    missing = VOCAB_SIZE - tokenizer.get_vocab_size(with_added_tokens=True)
    if missing > 0:  # a small corpus can run out of pairs seen twice
        tokenizer.add_special_tokens([f"<|reserved_{i}|>" for i in range(missing)])
    return tokenizer


def build_tokenizer(chat_path: Path, text_path: Path) -> PreTrainedTokenizerFast:
    tokenizer = train_tokenizer(iter_corpus(chat_path, text_path))
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    assert vocab_size == VOCAB_SIZE, f"vocab has {vocab_size} ids, expected {VOCAB_SIZE}"
    for expected_id, token in enumerate(SPECIAL_TOKENS + CONTROL_TOKENS):
        assert tokenizer.token_to_id(token) == expected_id, f"{token} has id {tokenizer.token_to_id(token)}"
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="<|im_end|>",  # chat turns end with it
        pad_token="<pad>",
        unk_token=None,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,  # decode must give back the exact text
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=TEMPLATE_PATH.read_text(encoding="utf-8"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--chat", type=Path, default=DEFAULT_CHAT)
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    args = parser.parse_args(argv)

    tokenizer = build_tokenizer(args.chat, args.text)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(args.out)
    written = (args.out / "chat_template.jinja").read_bytes()
    assert written == TEMPLATE_PATH.read_bytes(), "chat_template.jinja differs from the source template"
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out}: {len(tokenizer)} ids, {size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
