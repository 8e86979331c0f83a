"""load_tokenizer against the original tokenizer: a GPT-NeoX-style byte-level BPE trained with `tokenizers`,
written into a GGUF the way llama.cpp's converter writes it, must give the very same ids and text back."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from stablelm_lab import GGUFError, GGUFFile, load_tokenizer
from stablelm_lab.testing import TinySpec, train_neox_tokenizer, write_gguf

TEXTS = [
    "",
    " ",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "It's 2024 and we'll see what they've done; I'd say you're right.",
    "café naïve résumé",  # precomposed (NFC)
    unicodedata.normalize("NFD", "café naïve résumé Ångström"),  # decomposed: the original normalizes to NFC
    "Å vs Å (U+212B angstrom sign)",
    "ﬁne ligatures ﬀ",
    "日本語のテキスト 中文 한국어 русский ελληνικά עברית العربية",
    "emoji 😀🚀🎉 👩‍👩‍👧 flags 🇫🇷",
    "    four spaces, then     five\tone tab\t\ttwo tabs",
    " " * 30 + "thirty spaces",
    "trailing spaces   ",
    "\n\n\nnewlines\r\nand CRLF\n",
    "def forward(self, x):\n    return self.proj(x) + 1\n\tif x is None:\n\t\tpass\n",
    "1234567890 3.14159 2,718 1e-5 0x1F 100% $42.00",
    "<|endoftext|>between<|endoftext|>",
    "a<|padding|>b",
    "mixed   \t \n  whitespace",
    "\u200b zero width \ufeff bom",
]


@pytest.fixture(scope="module")
def original():
    return train_neox_tokenizer(vocab_size=1000)


@pytest.fixture(scope="module")
def gguf_path(original, tmp_path_factory):
    spec = TinySpec(n_vocab=1024)
    return write_gguf(tmp_path_factory.mktemp("tok") / "tok.gguf", spec, tokenizer=original)


@pytest.fixture(scope="module")
def ours(gguf_path):
    return load_tokenizer(gguf_path)


@pytest.mark.parametrize("text", TEXTS)
def test_same_ids_as_the_original(original, ours, text):
    assert ours.encode(text).ids == original.encode(text).ids


@pytest.mark.parametrize("text", TEXTS)
def test_decoding_round_trips(original, ours, text):
    ids = ours.encode(text).ids
    decoded = ours.decode(ids, skip_special_tokens=False)
    assert decoded == original.decode(ids, skip_special_tokens=False)
    assert decoded == unicodedata.normalize("NFC", text)


def test_whitespace_runs_are_single_added_tokens(original, ours):
    ids = ours.encode("x" + " " * 24 + "y").ids
    assert original.id_to_token(ids[1]) == " " * 24
    assert ours.encode(" " * 7).ids == [original.token_to_id(" " * 7)]


def test_special_ids_and_vocabulary(original, ours, gguf_path):
    assert ours.special_ids == {"bos": 0, "eos": 0, "unk": 0, "padding": 1}
    assert ours.get_vocab(with_added_tokens=True) == original.get_vocab(with_added_tokens=True)
    meta = GGUFFile(gguf_path).metadata
    assert len(meta["tokenizer.ggml.tokens"]) == 1024  # padded to the embedding rows, as the converter does
    assert meta["tokenizer.ggml.tokens"][1023] == "[PAD1023]"


def test_accepts_an_open_file(gguf_path, original):
    assert load_tokenizer(GGUFFile(gguf_path)).encode("Hello").ids == original.encode("Hello").ids


def test_file_without_pre_key_is_read_as_gpt_neox(original, tmp_path):
    path = write_gguf(tmp_path / "old.gguf", TinySpec(n_vocab=1024), tokenizer=original, tokenizer_pre=None)
    assert "tokenizer.ggml.pre" not in GGUFFile(path).metadata
    text = unicodedata.normalize("NFD", "Zürich   \tcafé")
    assert load_tokenizer(path).encode(text).ids == original.encode(text).ids


def test_a_file_without_a_bpe_tokenizer_is_refused(tmp_path):
    path = write_gguf(tmp_path / "none.gguf")
    with pytest.raises(GGUFError, match="only byte-level BPE"):
        load_tokenizer(path)


def test_unknown_pre_tokenizer_is_refused(original, tmp_path):
    path = write_gguf(tmp_path / "odd.gguf", TinySpec(n_vocab=1024), tokenizer=original, tokenizer_pre="no-such-pre")
    with pytest.raises(GGUFError, match="names the pre-tokenizer 'no-such-pre'"):
        load_tokenizer(path)


def test_a_vocabulary_the_library_cannot_build_is_a_gguf_error(tmp_path):
    # merges naming pieces that are not byte-level tokens make tokenizers' Rust code panic
    path = write_gguf(tmp_path / "placeholder.gguf", tokenizer="placeholder")
    with pytest.raises(GGUFError, match="do not form a valid BPE tokenizer"):
        load_tokenizer(path)


# ---- the stablelm2/qwen2 branch: llama.cpp's own test vectors (made by Hugging Face tokenizers) -------------
QWEN2 = Path(__file__).parent / "golden" / "qwen2_vocab" / "vocab.gguf"  # tools/make_qwen2_vocab.py


def qwen2_vectors() -> list[tuple[str, list[int]]]:
    """The .inp texts and .out ids, split as llama.cpp's tests/test-tokenizer-0.cpp splits them."""
    raw, sep = QWEN2.with_suffix(".gguf.inp").read_bytes(), b"\n__ggml_vocab_test__\n"
    texts = raw.split(sep)
    texts = texts[:-1] if raw.endswith(sep) else texts
    ids = [[int(i) for i in line.split()] for line in QWEN2.with_suffix(".gguf.out").read_text().split("\n")]
    return list(zip((t.decode() for t in texts), ids, strict=False))


def test_qwen2_pre_tokenizer_gives_llama_cpp_test_ids():
    vectors = qwen2_vectors()
    assert len(vectors) == 46
    g = GGUFFile(QWEN2)
    assert g.metadata["tokenizer.ggml.pre"] == "qwen2"
    original_id = g.metadata["stablelm_lab.original_ids"]
    tok = load_tokenizer(g)
    for text, expected in vectors:
        assert [original_id[i] for i in tok.encode(text).ids] == expected, repr(text)
