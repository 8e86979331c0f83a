"""A GGUF file, read-only and memory-mapped: its metadata, its tensor table and each tensor's raw blocks.

    g = GGUFFile("stablelm-3b-4e1t.Q4_K_M.gguf")
    g.metadata["stablelm.block_count"]        # 32
    g.tensors[0]                              # TensorInfo(name='token_embd.weight', shape=(50304, 2560), ...)
    g.raw("blk.0.attn_q.weight")              # uint8 (2560, 1440): the Q4_K blocks of each row, zero-copy
    g.dequantize("blk.0.attn_q.weight")       # float32 (2560, 2560)

The layout (gguf/docs/gguf.md, read by llama.cpp's ggml/src/gguf.cpp), all little-endian:

    header      "GGUF", version u32, tensor count u64, key-value count u64
    key-values  per key: name (string), value type u32, value; an array value is item type u32, count u64, items
    tensors     per tensor: name (string), n_dims u32, ne[n_dims] u64 (ggml order: ne[0] = row length),
                ggml type u32, data offset u64 (from the start of the data section)
    padding     to ``general.alignment`` (default 32)
    data        each tensor's blocks at its offset, tensors padded to the alignment
    (a string is a u64 byte count followed by that many UTF-8 bytes)

We read this ourselves instead of with gguf-py's ``GGUFReader``, which trusts every count and length it
reads (a corrupt count makes it loop or allocate for ages, a short file fails with IndexError). Every
field is checked before it is used, with llama.cpp's loader as the model: a broken file raises GGUFError
naming the problem, the key or tensor, and the byte offset. Shapes are in numpy order (rows, cols), the
reverse of ggml's ``ne``.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .. import quants

PathLike = str | os.PathLike[str]  # where a file is: a str or a pathlib.Path

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # version 1 (32-bit counts) is refused by llama.cpp too
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63  # GGML_MAX_NAME - 1: ggml keeps tensor names in a char[64]
INT64_MAX = 2**63 - 1

# The fewest bytes one entry can take, to tell whether a count can be true before looping over it.
KV_MIN_BYTES = 8 + 1 + 4 + 1  # name length, a 1-byte name, value type, a 1-byte value
TENSOR_MIN_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, a 1-byte name, n_dims, one ne, type, offset

# struct formats of the fixed-size value types; STRING and ARRAY are read by their own rules
VALUE_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
VALUE_TYPE_IDS = {t.value: t for t in GGUFValueType}
GGML_TYPE_IDS = {t.value: t for t in GGMLQuantizationType}


class GGUFError(ValueError):
    """The file is not a GGUF file we can read, or not the model that was asked for.

    ``offset``: the byte of the file where the problem was found, when there is one."""

    def __init__(self, message: str, offset: int | None = None):
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table."""

    name: str
    shape: tuple[int, ...]  # numpy order: (rows, cols); a row is one ggml row of ne[0] weights
    qtype: GGMLQuantizationType  # the ggml tensor type the bytes are stored in
    nbytes: int
    offset: int  # where the bytes start in the file

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.n_elements


class GGUFFile:
    """A read-only, memory-mapped GGUF file."""

    def __init__(self, path: PathLike):
        self.path = os.fspath(path)
        self._map = _map_read_only(self.path)
        self._reader = GGUFTableReader(np.frombuffer(self._map, dtype=np.uint8), self.path)

    def __repr__(self) -> str:
        return (
            f"GGUFFile({self.path!r}: {self.architecture}, {len(self.tensors)} tensors, "
            f"{len(self.metadata)} metadata keys)"
        )

    # ---- metadata ----------------------------------------------------------------------------
    @cached_property
    def metadata(self) -> dict:
        """Every key-value pair: numbers as Python numbers, strings as str, arrays as lists."""
        return {
            key: value.tolist() if isinstance(value, np.ndarray) else value
            for key, value in self._reader.fields.items()
        }

    @property
    def metadata_types(self) -> dict[str, tuple[GGUFValueType, GGUFValueType | None]]:
        """Each key's GGUF value type, and its item type for an array (to write the key back unchanged)."""
        return self._reader.value_types

    @property
    def alignment(self) -> int:
        """Tensor data is aligned to this many bytes (``general.alignment``, default 32)."""
        return self._reader.alignment

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    # ---- tensors -----------------------------------------------------------------------------
    @property
    def tensors(self) -> list[TensorInfo]:
        return self._reader.tensors

    @cached_property
    def tensor_info(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    def __contains__(self, name: str) -> bool:
        return name in self.tensor_info

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as uint8 (rows, bytes per row), a read-only view into the file (no copy)."""
        info = self._info(name)
        block_size, type_size = GGML_QUANT_SIZES[info.qtype]
        row_bytes = info.shape[-1] // block_size * type_size
        return self._reader.data[info.offset : info.offset + info.nbytes].reshape(*info.shape[:-1], row_bytes)

    def release(self, name: str) -> None:
        """Unmap the pages of a tensor already read, so they stop counting in this process's memory (RSS).
        The file and the page cache are untouched; reading the tensor again maps them back in."""
        info = self._info(name)
        start = info.offset // mmap.PAGESIZE * mmap.PAGESIZE
        if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_DONTNEED"):  # Linux, macOS
            self._map.madvise(mmap.MADV_DONTNEED, start, info.offset + info.nbytes - start)

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as float32 in its numpy shape, decoded by ``stablelm_lab.quants``."""
        info = self._info(name)
        return quant_format(info, self.path).dequantize(self.raw(name)).reshape(info.shape)

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensor_info[name]
        except KeyError:
            raise KeyError(f"{self.path} has no tensor named {name!r}") from None


def quant_format(info: TensorInfo, path: str) -> quants.QuantFormat:
    """The decoder of a tensor's type; a GGUFError for a ggml type stablelm_lab cannot decode."""
    if info.qtype not in quants.FORMATS:
        raise GGUFError(
            f"{path}: tensor {info.name!r} is stored as {info.qtype.name}, which stablelm_lab "
            f"cannot decode (data at byte {info.offset}); supported: {', '.join(quants.names())}",
            info.offset,
        )
    return quants.get(info.qtype)


def _map_read_only(path: str) -> mmap.mmap:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise GGUFError(f"cannot open {path}: {e.strerror}") from e
    if size == 0:
        raise GGUFError(f"{path} is not a GGUF file: it is empty (0 bytes)", 0)
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}", 0)
    try:
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise GGUFError(f"cannot map {path} into memory: {e}") from e


# ---- the reader: header, key-value pairs and tensor table, each field checked before it is used ----
@dataclass(frozen=True)
class _TableEntry:
    """A tensor-table entry as stored, before it is placed in the data section."""

    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    qtype: GGMLQuantizationType
    offset: int  # from the start of the data section
    at: int  # where the entry starts in the file, for error messages

    @property
    def nbytes(self) -> int:
        block_size, type_size = GGML_QUANT_SIZES[self.qtype]
        return int(np.prod(self.ne, dtype=object)) // block_size * type_size


class GGUFTableReader:
    """Walks a GGUF file once, front to back. ``data``: the memory map; ``version``, ``fields`` (key ->
    value; numeric arrays as zero-copy numpy views), ``value_types``, ``alignment``, ``data_offset``
    and ``tensors`` (TensorInfo list, table order). A broken file raises GGUFError."""

    def __init__(self, data: np.ndarray, path: str):
        self.data, self.path = data, path
        self._view = memoryview(data)
        self.pos = 0
        self._take(4, "the magic 'GGUF'")
        self.version = self._version()
        n_tensors = self._count("tensor", TENSOR_MIN_BYTES)
        n_kv = self._count("key-value pair", KV_MIN_BYTES)
        self.value_types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {}
        self.key_offsets: dict[str, int] = {}
        self.fields = self._key_values(n_kv)
        self.alignment = self._alignment()
        entries = self._tensor_table(n_tensors)
        self.data_offset = _padded(self.pos, self.alignment)
        self.tensors = [self._placed(e) for e in entries]
        self._check_layout(entries)

    # ---- primitives: every read is checked against the end of the file --------------------
    def _error(self, problem: str, offset: int | None) -> GGUFError:
        return GGUFError(f"{self.path} is not a readable GGUF file: {problem}", offset)

    def _take(self, n: int, what: str) -> int:
        """Claim the next ``n`` bytes for ``what``; returns where they start."""
        start, size = self.pos, len(self.data)
        if n > size - start:
            raise self._error(
                f"{what} at byte {start} needs {n} bytes, but the file ends at byte {size} "
                "(a truncated download, or a corrupt length)",
                start,
            )
        self.pos += n
        return start

    def _scalar(self, fmt: str, what: str):
        return struct.unpack_from(fmt, self._view, self._take(struct.calcsize(fmt), what))[0]

    def _bytes(self, what: str) -> bytes:
        n = self._scalar("<Q", f"the length of {what}")
        start = self._take(n, what)
        return bytes(self._view[start : start + n])

    def _name(self, what: str) -> str:
        """A key or tensor name: non-empty UTF-8."""
        at = self.pos
        raw = self._bytes(what)
        if not raw:
            raise self._error(f"{what} at byte {at} is empty", at)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._error(f"{what} at byte {at} is not UTF-8: {raw[:40]!r}", at) from None

    # ---- header ----------------------------------------------------------------------------
    def _version(self) -> int:
        at = self.pos
        version = self._scalar("<I", "the version")
        if version in GGUF_VERSIONS:
            return version
        if version & 0xFFFF == 0 and version:
            problem = (
                f"the version at byte {at}, {version:#010x}, reads as a byte-swapped {version >> 24}: "
                "a big-endian GGUF file, which this reader does not support"
            )
        elif version == 1:
            problem = (
                f"GGUF version 1 (at byte {at}) is no longer supported (llama.cpp dropped it in 2023); "
                "convert the model again"
            )
        else:
            problem = (
                f"GGUF version {version} (at byte {at}) is not one this reader knows "
                f"({' and '.join(map(str, GGUF_VERSIONS))})"
            )
        raise self._error(problem, at)

    def _count(self, what: str, min_bytes: int) -> int:
        """A count from the header (read as int64, as llama.cpp does), refused when the rest of the file
        cannot hold that many entries: a corrupt count must not start a loop of 2**60 reads."""
        at = self.pos
        n = self._scalar("<q", f"the {what} count")
        room = (len(self.data) - self.pos) // min_bytes
        if not 0 <= n <= room:
            raise self._error(
                f"the header says the file has {n} {what}s (at byte {at}), but the "
                f"{len(self.data) - self.pos} bytes after it can hold at most {room}",
                at,
            )
        return n

    # ---- key-value pairs -------------------------------------------------------------------
    def _key_values(self, n_kv: int) -> dict:
        fields = {}
        for i in range(n_kv):
            at = self.pos
            key = self._name(f"the name of key {i}")
            if key in fields:
                raise self._error(f"key {key!r} appears twice (again at byte {at})", at)
            self.key_offsets[key] = at
            fields[key] = self._value(key)
        return fields

    def _value_type(self, what: str) -> GGUFValueType:
        at = self.pos
        type_id = self._scalar("<I", what)
        if type_id not in VALUE_TYPE_IDS:
            raise self._error(
                f"{what} at byte {at} is {type_id}, not a GGUF value type (0 to {max(VALUE_TYPE_IDS)})", at
            )
        return VALUE_TYPE_IDS[type_id]

    def _value(self, key: str):
        vtype = self._value_type(f"the value type of key {key!r}")
        self.value_types[key] = (vtype, None)
        if vtype == GGUFValueType.STRING:
            return self._bytes(f"the value of key {key!r}").decode("utf-8", errors="replace")
        if vtype != GGUFValueType.ARRAY:
            return self._scalar(VALUE_FORMATS[vtype], f"the value of key {key!r}")
        at = self.pos
        item_type = self._value_type(f"the item type of array {key!r}")
        if item_type == GGUFValueType.ARRAY:
            raise self._error(
                f"key {key!r} holds an array of arrays (at byte {at}), which llama.cpp does not read either", at
            )
        self.value_types[key] = (vtype, item_type)
        count = self._scalar("<Q", f"the length of array {key!r}")
        if item_type == GGUFValueType.STRING:
            return self._strings(key, count)
        return self._numbers(key, item_type, count)

    def _numbers(self, key: str, item_type: GGUFValueType, count: int) -> np.ndarray:
        """A zero-copy view: a corrupt count costs nothing until the rest of the file is found sound."""
        dtype = np.dtype(VALUE_FORMATS[item_type])
        start = self._take(count * dtype.itemsize, f"the {count} items of array {key!r}")
        return np.frombuffer(self._view, dtype=dtype, count=count, offset=start)

    def _strings(self, key: str, count: int) -> list[str]:
        at = self.pos
        if count * 8 > len(self.data) - at:  # each string has at least its 8-byte length
            raise self._error(
                f"array {key!r} says it holds {count} strings (at byte {at}), more than "
                f"the {len(self.data) - at} bytes left can hold",
                at,
            )
        return [self._bytes(f"string {i} of array {key!r}").decode("utf-8", errors="replace") for i in range(count)]

    def _alignment(self) -> int:
        key = "general.alignment"
        if key not in self.fields:
            return DEFAULT_ALIGNMENT
        alignment, at, vtype = self.fields[key], self.key_offsets[key], self.value_types[key][0]
        if vtype != GGUFValueType.UINT32:
            raise self._error(f"{key} (at byte {at}) must be a UINT32, not {vtype.name}", at)
        if alignment == 0 or alignment & (alignment - 1):
            raise self._error(f"{key} (at byte {at}) is {alignment}, not a power of two", at)
        return alignment

    # ---- tensor table ----------------------------------------------------------------------
    def _tensor_table(self, n_tensors: int) -> list[_TableEntry]:
        entries, seen = [], set()
        for i in range(n_tensors):
            entry = self._tensor_entry(i)
            if entry.name in seen:
                raise self._error(
                    f"tensor {entry.name!r} appears twice in the tensor table (again at byte {entry.at})", entry.at
                )
            seen.add(entry.name)
            entries.append(entry)
        return entries

    def _tensor_entry(self, i: int) -> _TableEntry:
        at = self.pos
        name = self._name(f"the name of tensor {i}")
        self._check_name_length(name, at)
        ne = self._dims(name)
        qtype = self._ggml_type(name)
        self._check_whole_blocks(name, ne, qtype, at)
        offset = self._scalar("<Q", f"the data offset of tensor {name!r}")
        return _TableEntry(name, ne, qtype, offset, at)

    def _check_name_length(self, name: str, at: int) -> None:
        if len(name.encode()) > MAX_NAME_BYTES:
            raise self._error(
                f"tensor name {name[:40]!r}... at byte {at} is {len(name.encode())} bytes long; "
                f"ggml allows at most {MAX_NAME_BYTES}",
                at,
            )

    def _dims(self, name: str) -> tuple[int, ...]:
        at = self.pos
        n_dims = self._scalar("<I", f"the dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self._error(
                f"tensor {name!r} has {n_dims} dimensions (at byte {at}); ggml allows 1 to {MAX_DIMS}", at
            )
        ne = tuple(self._scalar("<q", f"dimension {d} of tensor {name!r}") for d in range(n_dims))
        if min(ne) <= 0:
            raise self._error(
                f"tensor {name!r} has shape ne={list(ne)} (at byte {at}); every dimension must be at least 1", at
            )
        if int(np.prod(ne, dtype=object)) > INT64_MAX:
            raise self._error(
                f"tensor {name!r} has shape ne={list(ne)} (at byte {at}), more elements than a 64-bit count can hold",
                at,
            )
        return ne

    def _ggml_type(self, name: str) -> GGMLQuantizationType:
        at = self.pos
        type_id = self._scalar("<i", f"the ggml type of tensor {name!r}")
        if type_id not in GGML_TYPE_IDS:
            raise self._error(
                f"tensor {name!r} has unknown ggml type {type_id} (at byte {at}); known types "
                f"are {min(GGML_TYPE_IDS)} to {max(GGML_TYPE_IDS)} with gaps (a file from a "
                "newer llama.cpp, or a corrupt table)",
                at,
            )
        return GGML_TYPE_IDS[type_id]

    def _check_whole_blocks(self, name: str, ne: tuple[int, ...], qtype: GGMLQuantizationType, at: int) -> None:
        block_size = GGML_QUANT_SIZES[qtype][0]
        if ne[0] % block_size:
            raise self._error(
                f"tensor {name!r} has rows of {ne[0]} weights, not a whole number of "
                f"{qtype.name} blocks ({block_size} weights each) (entry at byte {at})",
                at,
            )

    # ---- the data section ------------------------------------------------------------------
    def _placed(self, e: _TableEntry) -> TensorInfo:
        """The entry as a TensorInfo, once its bytes are known to lie inside the file."""
        start = self.data_offset + e.offset
        if e.offset % self.alignment:
            raise self._error(
                f"tensor {e.name!r} starts at data offset {e.offset}, not a multiple of the "
                f"alignment {self.alignment} (entry at byte {e.at})",
                e.at,
            )
        if start + e.nbytes > len(self.data):
            raise self._error(
                f"tensor {e.name!r} needs bytes {start} to {start + e.nbytes}, but the file "
                f"ends at byte {len(self.data)} (a truncated download, or a corrupt "
                f"offset or shape; entry at byte {e.at})",
                e.at,
            )
        return TensorInfo(name=e.name, shape=tuple(reversed(e.ne)), qtype=e.qtype, nbytes=e.nbytes, offset=start)

    def _check_layout(self, entries: list[_TableEntry]) -> None:
        """Tensors follow each other, each padded to the alignment: no overlap, no gap. A gap means some
        tensor's shape or type does not match the bytes it was written with (llama.cpp refuses it too)."""
        end, before = 0, None
        for e in sorted(entries, key=lambda e: e.offset):
            if e.offset < end:
                raise self._error(
                    f"tensors {before.name!r} and {e.name!r} overlap: {before.name!r} ends at "
                    f"data offset {end}, {e.name!r} starts at {e.offset} "
                    f"(entry at byte {e.at})",
                    e.at,
                )
            if e.offset > _padded(end, self.alignment):
                after = f"after tensor {before.name!r} ends" if before else "at the start of the data section"
                raise self._error(
                    f"tensor {e.name!r} starts at data offset {e.offset}, leaving "
                    f"{e.offset - end} unused bytes {after}: a shape or type in the table "
                    f"does not match the data (entry at byte {e.at})",
                    e.at,
                )
            end, before = e.offset + e.nbytes, e


def _padded(n: int, alignment: int) -> int:
    return n + (-n % alignment)
