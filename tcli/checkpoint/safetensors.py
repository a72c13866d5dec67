"""Read safetensors files lazily: validated header, memory-mapped tensors, BF16/F16 widened.

Header checks (as ``safetensors/src/tensor.rs``): 8-byte little-endian header length of at
most 100 MB; UTF-8 JSON object; optional ``__metadata__`` of strings; each tensor's byte
count equals prod(shape) * dtype size; tensors contiguous from offset 0 without gaps or
overlaps; the data ends exactly at the end of the file. Each failure has its own message.
"""

from __future__ import annotations

import json
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
    """Widen bfloat16 stored as uint16 bits: they become the high half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


class SafetensorsFile:
    """One ``.safetensors`` file: ``infos`` (name → TensorInfo), ``metadata``, lazy ``read``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.infos, self.metadata = _read_header(self.path)
        self._mmap: np.memmap | None = None

    def _buffer(self) -> np.memmap:
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mmap

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a numpy array; BF16 widened to float32, others as stored (memmapped)."""
        info = self.infos[name]
        storage, _ = DTYPES[info.dtype]
        raw = self._buffer()[info.start:info.start + info.nbytes].view(storage).reshape(info.shape)
        if info.dtype == "BF16":
            return bf16_to_float32(raw)
        return raw


def _read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
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
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path}: invalid safetensors header entry for tensor '{name}'") from None
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
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
        infos[name] = TensorInfo(name, dtype, shape, base + begin, end - begin)
        spans.append((begin, end, name))
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
        raise CheckpointError(f"{path}: invalid safetensors file ({size - base - cursor} trailing bytes after the data)")
    return infos, metadata
