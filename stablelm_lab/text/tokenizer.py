"""The tokenizer stored in a GGUF file's ``tokenizer.ggml.*`` keys, rebuilt as a ``tokenizers.Tokenizer``.

llama.cpp's converter writes a byte-level BPE ("gpt2" model) as: every token string in id order (the
byte-level alphabet form, "Ġthe"), each token's type (NORMAL, CONTROL for special tokens, USER_DEFINED for
added tokens such as GPT-NeoX's whitespace runs, UNUSED for padding rows), the merges ("Ġ t"), the special
ids, and a pre-tokenizer name. We put those pieces back into the tokenizer.json the converter read.

What the file does not say: GPT-NeoX-20B's tokenizer (StableLM-3B-4E1T's) normalizes text to NFC first.
We restore that for the GPT-NeoX family of ``tokenizer.ggml.pre`` names; llama.cpp itself skips it, so on
text that is not already NFC it can tokenize differently from the original.
"""

from __future__ import annotations

import json

from gguf import TokenType
from tokenizers import Tokenizer

from ..container.gguf_file import GGUFError, GGUFFile, PathLike

GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN2_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# tokenizer.ggml.pre -> (regex of the pre-tokenizer split, NFC normalization?)
# "default" (absent): files converted before the key existed, which for StableLM-3B means GPT-NeoX's.
PRE_TOKENIZERS = {
    "olmo": (GPT2_REGEX, True),  # GPT-NeoX-20B's tokenizer, as llama.cpp's converter names it
    "mpt": (GPT2_REGEX, True),  # the same tokenizer, via MPT
    "default": (GPT2_REGEX, True),
    "gpt-2": (GPT2_REGEX, False),
    "stablelm2": (QWEN2_REGEX, False),  # StableLM 2's Arcade100k
    "qwen2": (QWEN2_REGEX, False),
}


def load_tokenizer(path_or_file: PathLike | GGUFFile) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` built from the file's tokenizer.ggml.* metadata (byte-level BPE only)."""
    g = path_or_file if isinstance(path_or_file, GGUFFile) else GGUFFile(path_or_file)
    meta = g.metadata
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFError(f"{g.path} has a {model!r} tokenizer; only byte-level BPE ('gpt2') is supported")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise GGUFError(f"{g.path} names the pre-tokenizer {pre!r}; known: {', '.join(PRE_TOKENIZERS)}")
    if "tokenizer.ggml.tokens" not in meta:
        raise GGUFError(f"{g.path} has no tokenizer.ggml.tokens: it carries no vocabulary")
    try:
        tokenizer = Tokenizer.from_str(json.dumps(tokenizer_json(meta, pre)))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # a bad vocabulary makes the Rust library panic: pyo3's PanicException
        raise GGUFError(
            f"{g.path}: its tokenizer.ggml.* metadata do not form a valid BPE tokenizer "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from e
    tokenizer.special_ids = special_ids(meta)  # bos/eos/unk/padding, for generate
    return tokenizer


def tokenizer_json(meta: dict, pre: str) -> dict:
    """The tokenizer.json (the format ``tokenizers`` reads) that these metadata came from."""
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type", [TokenType.NORMAL] * len(tokens))
    regex, nfc = PRE_TOKENIZERS[pre]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {
        "version": "1.0",
        "added_tokens": [
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": kind == TokenType.USER_DEFINED,
                "special": kind == TokenType.CONTROL,
            }
            for i, (t, kind) in enumerate(zip(tokens, types))
            if kind in (TokenType.CONTROL, TokenType.USER_DEFINED)
        ],
        "normalizer": {"type": "NFC"} if nfc else None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
                byte_level,
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind != TokenType.UNUSED},
            "merges": [m.split(" ", 1) for m in meta.get("tokenizer.ggml.merges", [])],
        },
    }


def special_ids(meta: dict) -> dict[str, int]:
    keys = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "padding": "padding_token_id"}
    return {name: int(meta[f"tokenizer.ggml.{key}"]) for name, key in keys.items() if f"tokenizer.ggml.{key}" in meta}
