"""Test helper: malformed GGUF files, each made from one small valid StableLM file, and a seeded fuzzer.

Two kinds of damage:
- byte cases (BYTE_CASES): a few bytes of the valid file changed in place, the way a bad download, a bad
  disk or a buggy converter changes them. ``Layout`` finds where each field of the valid file lies (with
  gguf-py's reader, which is fine on a valid file), so a case reads as "set the version to 1".
- model cases (MODEL_CASES): a well-formed GGUF whose content is not a StableLM we can build (a key
  missing or of the wrong type, shapes that contradict the config), written again with gguf-py's
  GGUFWriter from the valid file's keys and tensors, with one change.

    base = small_valid_file(tmp_path / "base.gguf")
    data, offset = BYTE_CASES["version 1"](Layout(base))      # bytes of the bad file, byte of the problem
    MODEL_CASES["missing block_count"].write(base, tmp_path / "bad.gguf")
    mutate(data, rng, header_end)                             # one random corruption, for fuzzing
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUFReader, GGUFWriter
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from stablelm_lab.testing import TinySpec, uniform, write_gguf

# A StableLM small enough that a test can cut it at every byte of its header: one block, Q8_0 matrices.
SMALL_SPEC = TinySpec(
    n_vocab=64, n_embd=64, n_layer=1, n_head=2, n_head_kv=1, n_ff=128, n_ctx=64, n_rot=16, qkv_bias=True
)


def small_valid_file(path) -> Path:
    return write_gguf(path, SMALL_SPEC, types=uniform(T.Q8_0), tokenizer="placeholder")


# ---- where each field of a valid file lies -------------------------------------------------------
class Layout:
    """Byte positions of every field of a valid GGUF file, and copies of it with a field changed."""

    def __init__(self, path):
        reader = GGUFReader(str(path))
        self.data = Path(path).read_bytes()
        self.data_offset = int(reader.data_offset)
        self.keys = [name for name in reader.fields if not name.startswith("GGUF.")]
        self.key_at = {k: int(reader.fields[k].offset) for k in self.keys}  # the key's name length
        self.value_at = {k: self.key_at[k] + 8 + len(k.encode()) + 4 for k in self.keys}  # after its type
        self.tensors = [t.name for t in reader.tensors]
        self.tensor_at = {t.name: int(t.field.offset) for t in reader.tensors}
        self.n_dims_at = {n: at + 8 + len(n.encode()) for n, at in self.tensor_at.items()}
        self.ne = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
        self.type_at = {n: self.n_dims_at[n] + 4 + 8 * len(self.ne[n]) for n in self.tensors}
        self.offset_at = {n: self.type_at[n] + 4 for n in self.tensors}
        self.offset = {t.name: int(t.data_offset) - self.data_offset for t in reader.tensors}

    def value_type_at(self, key: str) -> int:
        return self.value_at[key] - 4

    def with_bytes(self, at: int, new: bytes) -> bytes:
        return self.data[:at] + new + self.data[at + len(new) :]

    def with_value(self, at: int, fmt: str, value) -> bytes:
        return self.with_bytes(at, struct.pack(fmt, value))

    def same_length_pair(self, names: list[str]) -> tuple[str, str]:
        """Two names of equal byte length: writing the first over the second makes a duplicate."""
        by_length = {}
        for name in names:
            by_length.setdefault(len(name.encode()), []).append(name)
        return next(tuple(group[:2]) for group in by_length.values() if len(group) >= 2)

    def matrix(self) -> str:
        """A 2-D tensor in the middle of the table (it has tensors before and after it)."""
        matrices = [n for n in self.tensors if len(self.ne[n]) == 2]
        return matrices[len(matrices) // 2]

    def next_tensor(self, name: str) -> str:
        """The tensor whose data follows this one's."""
        later = [n for n in self.tensors if self.offset[n] > self.offset[name]]
        return min(later, key=lambda n: self.offset[n])


# ---- byte cases: (layout) -> (bad bytes, offset the error must name) ------------------------------
ByteCase = Callable[[Layout], tuple[bytes, int]]
BYTE_CASES: dict[str, ByteCase] = {}
BYTE_CASE_ERRORS: dict[str, str] = {}  # case -> a regex the GGUFError message must match


def byte_case(name: str, error: str):
    def register(make: ByteCase) -> ByteCase:
        BYTE_CASES[name], BYTE_CASE_ERRORS[name] = make, error
        return make

    return register


@byte_case("bad magic", r"is not a GGUF file: it starts with b'GGML'")
def _(lay):
    return lay.with_bytes(0, b"GGML"), 0


@byte_case("version 1", r"GGUF version 1 \(at byte 4\) is no longer supported")
def _(lay):
    return lay.with_value(4, "<I", 1), 4


@byte_case("version 4", r"GGUF version 4 \(at byte 4\) is not one this reader knows")
def _(lay):
    return lay.with_value(4, "<I", 4), 4


@byte_case("version 0", r"GGUF version 0 \(at byte 4\) is not one this reader knows")
def _(lay):
    return lay.with_value(4, "<I", 0), 4


@byte_case("big-endian", r"big-endian GGUF file")
def _(lay):
    return lay.with_value(4, ">I", 3), 4


@byte_case("tensor count too large", r"says the file has 1099511627776 tensors .* can hold at most \d+")
def _(lay):
    return lay.with_value(8, "<Q", 2**40), 8


@byte_case("negative tensor count", r"says the file has -1 tensors")
def _(lay):
    return lay.with_value(8, "<Q", 2**64 - 1), 8


@byte_case("key count too large", r"says the file has 1000000 key-value pairs .* can hold at most \d+")
def _(lay):
    return lay.with_value(16, "<Q", 10**6), 16


@byte_case("key name past the end", r"the name of key 0 at byte 32 needs 4294967296 bytes, but the file ends")
def _(lay):
    return lay.with_value(24, "<Q", 2**32), 32  # the error names where the name was to start


@byte_case("string value past the end", r"the value of key 'general.architecture' at byte \d+ needs \d+ bytes")
def _(lay):
    at = lay.value_at["general.architecture"]
    return lay.with_value(at, "<Q", 2**40), at + 8


@byte_case("string array count past the end", r"array 'tokenizer.ggml.tokens' says it holds 1099511627776 strings")
def _(lay):
    at = lay.value_at["tokenizer.ggml.tokens"] + 4
    return lay.with_value(at, "<Q", 2**40), at + 8


@byte_case(
    "number array count past the end",
    r"the 1099511627776 items of array 'tokenizer.ggml.token_type' at byte \d+ needs 4398046511104 bytes",
)
def _(lay):
    at = lay.value_at["tokenizer.ggml.token_type"] + 4
    return lay.with_value(at, "<Q", 2**40), at + 8


@byte_case("string in an array past the end", r"string 0 of array 'tokenizer.ggml.tokens' at byte \d+ needs")
def _(lay):
    at = lay.value_at["tokenizer.ggml.tokens"] + 12
    return lay.with_value(at, "<Q", 2**40), at + 8


@byte_case(
    "unknown value type", r"the value type of key 'stablelm.block_count' at byte \d+ is 13, not a GGUF value type"
)
def _(lay):
    at = lay.value_type_at("stablelm.block_count")
    return lay.with_value(at, "<I", 13), at


@byte_case("unknown array item type", r"the item type of array 'tokenizer.ggml.token_type' at byte \d+ is 99")
def _(lay):
    at = lay.value_at["tokenizer.ggml.token_type"]
    return lay.with_value(at, "<I", 99), at


@byte_case("array of arrays", r"key 'tokenizer.ggml.token_type' holds an array of arrays")
def _(lay):
    at = lay.value_at["tokenizer.ggml.token_type"]
    return lay.with_value(at, "<I", V.ARRAY), at


@byte_case("duplicate key", r"key '[\w.]+' appears twice")
def _(lay):
    first, second = lay.same_length_pair(lay.keys)
    later = max(lay.key_at[first], lay.key_at[second])
    return lay.with_bytes(later + 8, first.encode() if later == lay.key_at[second] else second.encode()), later


@byte_case("empty key", r"the name of key 0 at byte 24 is empty")
def _(lay):
    return lay.with_value(24, "<Q", 0), 24


@byte_case("key not UTF-8", r"the name of key 0 at byte 24 is not UTF-8")
def _(lay):
    return lay.with_bytes(32, b"\xff"), 24


@byte_case("tensor name not UTF-8", r"the name of tensor 0 at byte \d+ is not UTF-8")
def _(lay):
    at = lay.tensor_at[lay.tensors[0]]
    return lay.with_bytes(at + 8, b"\xc3\x28"), at


@byte_case("duplicate tensor", r"tensor '[\w.]+' appears twice in the tensor table")
def _(lay):
    first, second = lay.same_length_pair(lay.tensors)
    return lay.with_bytes(lay.tensor_at[second] + 8, first.encode()), lay.tensor_at[second]


@byte_case("no dimensions", r"has 0 dimensions .*; ggml allows 1 to 4")
def _(lay):
    at = lay.n_dims_at[lay.matrix()]
    return lay.with_value(at, "<I", 0), at


@byte_case("five dimensions", r"has 5 dimensions .*; ggml allows 1 to 4")
def _(lay):
    at = lay.n_dims_at[lay.matrix()]
    return lay.with_value(at, "<I", 5), at


@byte_case("zero dimension", r"has shape ne=\[\d+, 0\] .* every dimension must be at least 1")
def _(lay):
    name = lay.matrix()
    return lay.with_value(lay.n_dims_at[name] + 12, "<q", 0), lay.n_dims_at[name]


@byte_case("negative dimension", r"has shape ne=\[-1, \d+\] .* every dimension must be at least 1")
def _(lay):
    name = lay.matrix()
    return lay.with_value(lay.n_dims_at[name] + 4, "<q", -1), lay.n_dims_at[name]


@byte_case("overflowing dimensions", r"more elements than a 64-bit count can hold")
def _(lay):
    at = lay.n_dims_at[lay.matrix()]
    return lay.with_bytes(at + 4, struct.pack("<qq", 2**40, 2**40)), at


@byte_case("unknown ggml type", r"has unknown ggml type 42 ")
def _(lay):
    at = lay.type_at[lay.matrix()]
    return lay.with_value(at, "<i", 42), at


@byte_case("removed ggml type", r"has unknown ggml type 4 ")  # Q4_2, gone from ggml since 2023
def _(lay):
    at = lay.type_at[lay.matrix()]
    return lay.with_value(at, "<i", 4), at


@byte_case("negative ggml type", r"has unknown ggml type -1 ")
def _(lay):
    at = lay.type_at[lay.matrix()]
    return lay.with_value(at, "<i", -1), at


@byte_case("rows not whole blocks", r"has rows of 48 weights, not a whole number of Q8_0 blocks \(32 weights each\)")
def _(lay):
    name = lay.matrix()
    return lay.with_value(lay.n_dims_at[name] + 4, "<q", 48), lay.tensor_at[name]


@byte_case("type smaller than the data", r"leaving \d+ unused bytes after tensor .* does not match the data")
def _(lay):
    name = lay.matrix()
    return lay.with_value(lay.type_at[name], "<i", T.Q4_0), lay.tensor_at[lay.next_tensor(name)]


@byte_case("type larger than the data", r"tensors '[\w.]+' and '[\w.]+' overlap")
def _(lay):
    name = lay.matrix()
    return lay.with_value(lay.type_at[name], "<i", T.F32), lay.tensor_at[lay.next_tensor(name)]


@byte_case("misaligned offset", r"starts at data offset \d+, not a multiple of the alignment 32")
def _(lay):
    name = lay.matrix()
    return lay.with_value(lay.offset_at[name], "<Q", lay.offset[name] + 1), lay.tensor_at[name]


@byte_case("offset past the end", r"needs bytes \d+ to \d+, but the file ends at byte \d+")
def _(lay):
    name = lay.matrix()
    return lay.with_value(lay.offset_at[name], "<Q", 2**40), lay.tensor_at[name]


@byte_case("overlapping tensors", r"tensors '[\w.]+' and '[\w.]+' overlap")
def _(lay):
    name = lay.matrix()
    earlier = lay.tensors[lay.tensors.index(name) - 1]
    return lay.with_value(lay.offset_at[name], "<Q", lay.offset[earlier]), lay.tensor_at[name]


@byte_case("tensor data cut short", r"needs bytes \d+ to \d+, but the file ends at byte \d+ \(a truncated download")
def _(lay):
    last = max(lay.tensors, key=lambda n: lay.offset[n])
    return lay.data[: lay.data_offset + lay.offset[last] + 1], lay.tensor_at[last]


# ---- model cases: well-formed GGUF, but not a StableLM we can build --------------------------------
@dataclass
class FileContent:
    """A GGUF file's keys ({key: (value, type, item type)}) and tensors ({name: (numpy array, ggml type)})."""

    keys: dict
    tensors: dict

    @classmethod
    def read(cls, path) -> FileContent:
        reader = GGUFReader(str(path))
        keys = {
            name: (f.contents(), f.types[0], f.types[-1] if f.types[0] == V.ARRAY else None)
            for name, f in reader.fields.items()
            if not name.startswith("GGUF.")
        }
        tensors = {t.name: (np.array(t.data), t.tensor_type) for t in reader.tensors}
        return cls(keys, tensors)

    def write(self, path) -> Path:
        keys = dict(self.keys)
        arch = keys.pop("general.architecture")[0]
        writer = GGUFWriter(str(path), arch)
        for key, (value, vtype, item_type) in keys.items():
            writer.add_key_value(key, value, vtype, sub_type=item_type)
        for name, (data, qtype) in self.tensors.items():
            writer.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return Path(path)


@dataclass(frozen=True)
class ModelCase:
    change: Callable[[FileContent], None]
    error: str  # a regex the GGUFError message must match
    when: str = "model"  # "model": StableLM.from_gguf fails; "open": GGUFFile() already fails

    def write(self, valid_path, path) -> Path:
        content = FileContent.read(valid_path)
        self.change(content)
        return content.write(path)


def _set(key, value, vtype=V.UINT32):
    return lambda c: c.keys.__setitem__(f"stablelm.{key}", (value, vtype, None))


def _drop_key(key):
    return lambda c: c.keys.pop(key)


def _drop_tensor(name):
    return lambda c: c.tensors.pop(name)


def _reshape(name, rows):
    def change(c):
        data, qtype = c.tensors[name]
        c.tensors[name] = (data.reshape(rows, -1), qtype)

    return change


def _flatten(name):
    def change(c):
        data, qtype = c.tensors[name]
        c.tensors[name] = (data.reshape(-1), qtype)

    return change


def _random_bytes_as(name, qtype):
    """The tensor, same shape, as random blocks of another type."""

    def change(c):
        data, old_type = c.tensors[name]
        (old_block, old_size), (block, size) = GGML_QUANT_SIZES[old_type], GGML_QUANT_SIZES[qtype]
        row_bytes = data.shape[1] // old_size * old_block // block * size
        c.tensors[name] = (np.random.default_rng(0).integers(0, 256, (data.shape[0], row_bytes), np.uint8), qtype)

    return change


def _alignment(value, vtype):
    return lambda c: c.keys.__setitem__("general.alignment", (value, vtype, None))


def _long_tensor_name(c):
    c.tensors["x" * 80] = (np.zeros(32, np.float32), T.F32)


MODEL_CASES: dict[str, ModelCase] = {
    "missing block_count": ModelCase(_drop_key("stablelm.block_count"), r"lacks the metadata key stablelm.block_count"),
    "missing layer_norm_epsilon": ModelCase(
        _drop_key("stablelm.attention.layer_norm_epsilon"),
        r"lacks the metadata key stablelm.attention.layer_norm_epsilon",
    ),
    "block_count a string": ModelCase(
        _set("block_count", "two", V.STRING), r"stablelm.block_count is 'two', not an integer >= 1"
    ),
    "block_count a bool": ModelCase(
        _set("block_count", True, V.BOOL), r"stablelm.block_count is True, not an integer >= 1"
    ),
    "head_count zero": ModelCase(
        _set("attention.head_count", 0), r"stablelm.attention.head_count is 0, not an integer >= 1"
    ),
    "epsilon NaN": ModelCase(
        _set("attention.layer_norm_epsilon", float("nan"), V.FLOAT32),
        r"layer_norm_epsilon is nan, not a positive finite number",
    ),
    "rope base negative": ModelCase(
        _set("rope.freq_base", -1.0, V.FLOAT32), r"stablelm.rope.freq_base is -1.0, not a positive finite number"
    ),
    "block_count too large": ModelCase(
        _set("block_count", 10**9), r"block_count is 1000000000, but the tensor table only has blocks 0 to 0"
    ),
    "embedding_length contradicts token_embd": ModelCase(
        _set("embedding_length", 128), r"embedding_length is 128, but token_embd.weight rows have 64 weights"
    ),
    "head_count does not divide the width": ModelCase(
        _set("attention.head_count", 3), r"embedding_length 64 is not a multiple of the head count 3"
    ),
    "head_count_kv does not divide head_count": ModelCase(
        _set("attention.head_count_kv", 3), r"head count 2 is not a multiple of the KV head count 3"
    ),
    "odd rotary count": ModelCase(
        _set("rope.dimension_count", 15), r"rope.dimension_count is 15: rotary needs an even count"
    ),
    "rotary wider than a head": ModelCase(_set("rope.dimension_count", 64), r"no larger than the head size 32"),
    "missing tensor": ModelCase(
        _drop_tensor("blk.0.ffn_up.weight"), r"lacks tensors a StableLM needs: blk.0.ffn_up.weight"
    ),
    "missing token_embd": ModelCase(_drop_tensor("token_embd.weight"), r"has no token_embd.weight tensor"),
    "tensor shape contradicts the config": ModelCase(
        _reshape("blk.0.ffn_up.weight", 64),
        r"tensor blk.0.ffn_up.weight has shape \(64, 128\), the config says \(128, 64\)",
    ),
    "token_embd one-dimensional": ModelCase(
        _flatten("token_embd.weight"), r"token_embd.weight has shape \(\d+,\), not \(n_vocab, n_embd\)"
    ),
    "tensor type stablelm_lab cannot decode": ModelCase(
        _random_bytes_as("blk.0.attn_q.weight", T.Q8_1),
        r"'blk.0.attn_q.weight' is stored as Q8_1, which stablelm_lab cannot decode",
    ),
    "alignment not a power of two": ModelCase(
        _alignment(48, V.UINT32), r"general.alignment \(at byte \d+\) is 48, not a power of two", when="open"
    ),
    "alignment of the wrong type": ModelCase(
        _alignment(32, V.UINT64), r"general.alignment \(at byte \d+\) must be a UINT32, not UINT64", when="open"
    ),
    "tensor name too long": ModelCase(
        _long_tensor_name, r"tensor name 'x+'... at byte \d+ is 80 bytes long; ggml allows at most 63", when="open"
    ),
}


# ---- fuzzing: one random corruption of a valid file -----------------------------------------------
INTERESTING_U64 = [0, 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


def mutate(data: bytes, rng: np.random.Generator, header_end: int) -> bytes:
    """``data`` with one random corruption: flipped bits, an extreme 4- or 8-byte value, bytes inserted or
    deleted (everything after shifts), a cut, or junk appended. Most land in the header, key-values and
    tensor table (before ``header_end``), where a file's structure is; the rest anywhere."""
    in_header = rng.random() < 0.7
    at = int(rng.integers(0, header_end if in_header else len(data)))
    kind = rng.choice(["flip", "extreme", "insert", "delete", "truncate", "extend"])
    if kind == "flip":
        out = bytearray(data)
        for pos in rng.integers(at, min(len(data), at + 16), size=int(rng.integers(1, 4))):
            out[pos] ^= 1 << int(rng.integers(0, 8))
        return bytes(out)
    if kind == "extreme":
        n = int(rng.choice([4, 8]))
        return data[:at] + struct.pack("<Q", INTERESTING_U64[rng.integers(len(INTERESTING_U64))])[:n] + data[at + n :]
    if kind == "insert":
        return data[:at] + rng.bytes(int(rng.integers(1, 9))) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + int(rng.integers(1, 9)) :]
    if kind == "truncate":
        return data[:at]
    return data + rng.bytes(int(rng.integers(1, 4096)))
