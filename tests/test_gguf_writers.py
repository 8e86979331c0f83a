"""The package's GGUF writer (stablelm_lab.train.export, which wrote the embedded default) and the tests'
(stablelm_lab.testing) agree: the same model and tokenizer through both give the same keys and the same
bytes, read back with gguf-py's GGUFReader, a reader independent of ours. And the rules they share are
llama.cpp's converter's."""

from __future__ import annotations

import pytest
from gguf import GGUFReader, TokenType
from tokenizers import AddedToken

from stablelm_lab import StableLM, embedded_gguf, load_tokenizer
from stablelm_lab.container.default_model import MODEL_NAME
from stablelm_lab.testing import TinySpec, converter_f16, train_neox_tokenizer, write_gguf
from stablelm_lab.train.__main__ import DESCRIPTION
from stablelm_lab.train.export import looks_special, token_types
from stablelm_lab.train.export import write_gguf as export_gguf

#: What only the package's writer says about a file (the tests' files carry a fixed name only).
DESCRIPTIVE = {"general.type", "general.name", "general.description", "general.license"}


def fields(path) -> dict[str, list[bytes]]:
    """Every key of the file with its bytes as stored (key, type and value), in the file's order."""
    return {
        name: [bytes(part) for part in field.parts]
        for name, field in GGUFReader(str(path)).fields.items()
        if not name.startswith("GGUF.") and name not in DESCRIPTIVE
    }


def tensors(path) -> dict[str, tuple[int, list[int], bytes]]:
    """Tensor name -> (ggml type, shape, bytes). By name: the two writers list the tensors in different
    orders (the tests' files: output_norm and output after token_embd; the package's: the model's module
    order), and each order is fixed by the files already made with it (golden sources, embedded default)."""
    return {t.name: (int(t.tensor_type), t.shape.tolist(), bytes(t.data)) for t in GGUFReader(str(path)).tensors}


# parallel residual: the test writer writes use_parallel_residual = True whatever its spec (the converter's
# default when config.json lacks the key); a spec with ffn_norm tensors would contradict it
@pytest.mark.parametrize(
    "spec", [TinySpec(parallel_residual=True), TinySpec(parallel_residual=True, qkv_bias=True, qk_norm=True, seed=5)]
)
def test_the_package_writer_and_the_test_writer_write_the_same_file(tmp_path, spec):
    """Weights and tokenizer through the test writer (F16 by the converter's rule); the model read from that
    file, written again by the package's writer: the same keys in the same order with the same bytes, the
    same tensors with the same bytes."""
    tok = train_neox_tokenizer(400)
    ours = write_gguf(tmp_path / "testing.gguf", spec, types=converter_f16, tokenizer=tok)
    export_gguf(tmp_path / "export.gguf", StableLM.from_gguf(ours), tok, "tiny", "a description")
    a, b = fields(ours), fields(tmp_path / "export.gguf")
    assert list(a) == list(b)
    assert a == b
    assert "tokenizer.ggml.add_bos_token" in a and "tokenizer.ggml.token_type" in a
    assert tensors(ours) == tensors(tmp_path / "export.gguf")


def test_the_embedded_default_is_what_the_package_writer_writes(tmp_path):
    """The embedded default's F16 file, read back and written again by the package's writer, is the same
    file byte for byte: the shared writing code has not changed what wrote it."""
    original = embedded_gguf("F16")
    export_gguf(
        tmp_path / "again.gguf", StableLM.from_gguf(original), load_tokenizer(original), MODEL_NAME, DESCRIPTION
    )
    assert (tmp_path / "again.gguf").read_bytes() == original.read_bytes()


def test_added_tokens_are_typed_as_the_converter_types_them():
    """get_vocab_base: an added token is CONTROL when it is special or looks special (does_token_look_special),
    USER_DEFINED otherwise; a row past the tokenizer is UNUSED."""
    tok = train_neox_tokenizer(400)
    tok.add_tokens([AddedToken(t, special=False) for t in ["<|im_start|>", "<tag>", "<unused0>", "<pad>"]])
    tokens, types = token_types(tok, 512)
    kind = dict(zip(tokens, types))
    assert kind["<|endoftext|>"] == kind["<|im_start|>"] == kind["<unused0>"] == kind["<pad>"] == TokenType.CONTROL
    assert kind["<tag>"] == kind["    "] == TokenType.USER_DEFINED
    assert kind["[PAD511]"] == TokenType.UNUSED and kind["a"] == TokenType.NORMAL
    assert [looks_special(t) for t in ["<｜begin｜>", "<mask>", "[@BOS@]", "<s>", "<|x", "plain"]] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def test_a_tokenizer_wider_than_the_model_is_refused():
    with pytest.raises(ValueError, match="ids up to"):
        token_types(train_neox_tokenizer(400), 100)
