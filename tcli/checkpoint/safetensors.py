"""Read safetensors files lazily: validated header, memory-mapped tensors, BF16/F16 widened.

Header checks (as ``safetensors/src/tensor.rs``): 8-byte little-endian header length of at
most 100 MB; UTF-8 JSON object; optional ``__metadata__`` of strings; each tensor's byte
count equals prod(shape) * dtype size; tensors contiguous from offset 0 without gaps or
overlaps; the data ends exactly at the end of the file. Each failure has its own message.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

MAX_HEADER = 100_000_000

# safetensors dtype -> (numpy storage dtype, bytes per element)
DTYPES = {
    "F64": (np.float64, 8), "F32": (np.float32, 4), "F16": (np.float16, 2),
    "BF16": (np.uint16, 2), "I64": (np.int64, 8), "I32": (np.int32, 4),
    "I16": (np.int16, 2), "I8": (np.int8, 1), "U8": (np.uint8, 1), "BOOL": (np.bool_, 1),
}


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 stored as uint16 bits: they become the high half of a float32 (one allocation)."""
    out = bits.astype(np.uint32, order="C")
    out <<= 16
    return out.view(np.float32)


def widen(storage: np.ndarray, dtype: str, to, chunk_bytes: int = 1 << 20) -> np.ndarray:
    """Stored values (``storage`` as from ``read_storage``, possibly a strided view of it; safetensors
    ``dtype``) as a C-contiguous array of numpy dtype ``to``: ``storage`` itself where nothing changes,
    else converted chunk by chunk along the first axis into one new array (no full-size temporary)."""
    to = np.dtype(to)
    if dtype != "BF16" and storage.dtype == to and storage.flags.c_contiguous:
        return storage
    out = np.empty(storage.shape, to)
    if storage.ndim == 0 or storage.size == 0:
        out[...] = bf16_to_float32(storage) if dtype == "BF16" else storage
        return out
    convert = bf16_to_float32 if dtype == "BF16" else (lambda part: part)
    if storage.ndim == 2 and storage.strides[0] < storage.strides[1]:  # a transposed view: copy in tiles
        step = max(1, chunk_bytes // max(1, storage.shape[0] * storage.itemsize))  # contiguous source rows
        for j in range(0, storage.shape[1], step):
            out[:, j:j + step] = convert(storage[:, j:j + step])
        return out
    step = max(1, chunk_bytes // max(1, out[0].nbytes))
    for i in range(0, len(storage), step):
        out[i:i + step] = convert(storage[i:i + step])
    return out


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


class SafetensorsFile:
    """One ``.safetensors`` file: ``infos`` (name → TensorInfo), ``metadata``, lazy memory-mapped ``read_storage``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.infos, self.metadata = _read_header(self.path)
        self._mmap: np.memmap | None = None

    def _buffer(self) -> np.memmap:
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mmap

    def read_storage(self, name: str) -> np.ndarray:
        """Tensor ``name`` as stored, memory-mapped (BF16 as its uint16 bits; see ``widen``)."""
        info = self.infos[name]
        storage, _ = DTYPES[info.dtype]
        return self._buffer()[info.start:info.start + info.nbytes].view(storage).reshape(info.shape)

    def release(self, name: str, keep: np.ndarray | None = None) -> None:
        """Drop the mapped pages of tensor ``name`` from this process's memory (they stay in the page
        cache and fault back in if read again), unless ``keep`` is a view of them."""
        mm = getattr(self._mmap, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise") or (keep is not None and np.may_share_memory(keep, self._mmap)):
            return
        info = self.infos[name]
        start = info.start - info.start % mmap.PAGESIZE
        try:
            mm.madvise(mmap.MADV_DONTNEED, start, info.start + info.nbytes - start)
        except (OSError, ValueError, AttributeError):  # not supported here: keep the pages
            pass


def _entry(path: Path, name: str, entry, base: int) -> "TensorInfo":
    """One header entry checked: a known dtype, a shape of non-negative ints, offsets whose span is
    exactly the shape's byte count."""
    try:
        dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise CheckpointError(f"{path}: invalid safetensors header entry for tensor '{name}'") from None
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {str(dtype)[:20]!r}")
    if not all(isinstance(s, int) and s >= 0 for s in shape) or not (
        isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end
    ):
        raise CheckpointError(f"{path}: invalid shape or offsets for tensor '{name}'")
    count = 1
    for s in shape:
        count *= s
    if count * DTYPES[dtype][1] != end - begin:
        raise CheckpointError(
            f"{path}: header lies about tensor '{name}': shape {list(shape)} of {dtype} needs "
            f"{count * DTYPES[dtype][1]} bytes, offsets give {end - begin}"
        )
    return TensorInfo(name, dtype, shape, base + begin, end - begin)


def _read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    size = path.stat().st_size
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
    with f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER:
            raise CheckpointError(f"{path}: not a safetensors file (header length {n} exceeds 100 MB)")
        if 8 + n > size:
            raise CheckpointError(f"{path}: truncated safetensors file (header of {n} bytes, file of {size})")
        blob = f.read(n)
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (header is not UTF-8 JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: invalid safetensors header (__metadata__ must map strings to strings)")
    base = 8 + n
    infos: dict[str, TensorInfo] = {}
    spans = []
    for name, entry in header.items():
        infos[name] = info = _entry(path, name, entry, base)
        spans.append((info.start - base, info.start - base + info.nbytes, name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            what = "gap before" if begin > cursor else "overlap at"
            raise CheckpointError(f"{path}: invalid safetensors offsets ({what} tensor '{name}')")
        cursor = end
    if base + cursor > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file (tensor data needs {base + cursor} bytes, file has {size})"
        )
    if base + cursor < size:
        raise CheckpointError(f"{path}: invalid safetensors file "
                              f"({size - base - cursor} trailing bytes after the data)")
    return infos, metadata
