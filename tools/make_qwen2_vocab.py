"""Cut llama.cpp's Qwen2 test vocabulary down to what its own test texts can use, for tests/test_tokenizer.py.

    .venv/bin/python tools/make_qwen2_vocab.py [LLAMA_CPP_SOURCE]   # default: the llama-cpp-python sdist's

llama.cpp ships models/ggml-vocab-qwen2.gguf (5.9 MB: Qwen2's 151,646 tokens and 151,387 merges) with
ggml-vocab-qwen2.gguf.inp/.out: texts and the ids Hugging Face's tokenizer gives them. Any pre-tokenizer
cuts a text into pieces of the text, and BPE only ever builds tokens that are pieces of a piece, so every
token that can appear while any pre-tokenizer encodes these texts is a substring of a text (in the
byte-level alphabet). This keeps those tokens (and the 256 single-byte ones), and the merges between them
in their original order: on these texts the cut vocabulary gives the same tokens as the whole one, whatever
the regex, so a wrong stablelm2/qwen2 regex still fails the test. Ids are renumbered; the original id of
each kept token is stored under ``stablelm_lab.original_ids``.

Writes tests/golden/qwen2_vocab/: vocab.gguf, and the .inp/.out files copied unchanged.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from gguf import GGUFReader, GGUFWriter

SDIST = Path("/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp")
OUT = Path(__file__).resolve().parent.parent / "tests" / "golden" / "qwen2_vocab"
SEP = b"\n__ggml_vocab_test__\n"


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others move to U+0100 and up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def test_texts(inp: bytes) -> list[bytes]:
    """The texts of a .inp file, split as tests/test-tokenizer-0.cpp splits them."""
    texts, pos = [], 0
    while pos < len(inp):
        nxt = inp.find(SEP, pos)
        if nxt < 0:
            texts.append(inp[pos:])
            break
        texts.append(inp[pos:nxt])
        pos = nxt + len(SEP)
    return texts


def field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else SDIST
    vocab = source / "models" / "ggml-vocab-qwen2.gguf"
    reader = GGUFReader(vocab)
    tokens, types = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")
    alphabet = byte_level_alphabet()
    raw = (source / "models" / f"{vocab.name}.inp").read_bytes()
    texts = ["".join(alphabet[b] for b in t) for t in test_texts(raw)]
    singles = set(alphabet.values())

    keep = [i for i, t in enumerate(tokens) if t in singles or (t and any(t in text for text in texts))]
    kept = set(tokens[i] for i in keep)
    kept_merges = [m for m in merges if m.replace(" ", "", 1) in kept and all(part in kept for part in m.split(" ", 1))]

    OUT.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(OUT / "vocab.gguf"), "qwen2")
    writer.add_name("qwen2 vocab cut to llama.cpp's test texts")
    writer.add_tokenizer_model(field(reader, "tokenizer.ggml.model"))
    writer.add_tokenizer_pre(field(reader, "tokenizer.ggml.pre"))
    writer.add_token_list([tokens[i] for i in keep])
    writer.add_token_types([int(types[i]) for i in keep])
    writer.add_token_merges(kept_merges)
    writer.add_array("stablelm_lab.original_ids", [int(i) for i in keep])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for suffix in (".inp", ".out"):
        shutil.copyfile(source / "models" / f"{vocab.name}{suffix}", OUT / f"vocab.gguf{suffix}")
    print(
        f"{len(keep)} of {len(tokens)} tokens, {len(kept_merges)} of {len(merges)} merges: "
        f"{(OUT / 'vocab.gguf').stat().st_size / 1e3:.0f} kB"
    )


if __name__ == "__main__":
    main()
