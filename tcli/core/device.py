"""The streamed engine on an accelerator: block GEMM and top-k selection in torch, on a device.

``--device cpu`` (the default) is numpy and never imports torch. ``--device cuda`` (``pip install
'tcli[gpu]'``) moves the two thin factors A [m, r] and B [r, n] to the GPU once, forms each row block
A[i:j] @ B there, selects per-row top-k (or the block's global top-n) there, and copies back only the
selected (values, column ids): O(k) bytes per row cross the bus, never a [rows, n] block.
``--device torch:cpu`` runs the same code on torch's CPU device (how CI tests this path).

Exactness: float32 GEMMs in full precision (TF32 and reduced-precision reductions off), so values agree
with the numpy path within float32 rounding of a different summation order; ids agree except where
values tie (torch.topk does not order ties; the numpy path prefers the lower column).
Why torch rather than CuPy: one wheel serves CUDA and the CPU test path, its ``topk`` is a fused
device kernel, and it is already the project's test dependency (transformers' reference).
Memory: one block of ``block_bytes`` (a quarter of the device's free memory, at most 2 GiB) plus the
factors; the host holds only the selections.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..errors import InputError

_DEVICE: str | None = None  # None: numpy (no torch)
MAX_BLOCK_BYTES = 2 * 2**30


def use(name: str | None) -> str | None:
    """Select the engine for the rest of the process: ``cpu`` (numpy), ``cuda[:N]``, ``auto``, ``torch:cpu``.

    Returns the torch device string in use (None for numpy). One clear InputError when torch or a
    CUDA device is missing."""
    global _DEVICE
    if name in (None, "cpu"):
        _DEVICE = None
        return None
    torch = _torch(name)
    if name == "auto":
        _DEVICE = "cuda" if torch.cuda.is_available() else None
    elif name == "torch:cpu":
        _DEVICE = "cpu"
    elif name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is visible to torch",
                             "check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --device cpu")
        _DEVICE = name
    else:
        raise InputError(f"--device {name!r}: choose cpu, cuda, cuda:N, auto or torch:cpu")
    if _DEVICE is not None:
        torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 GEMMs (see module doc)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        torch.set_float32_matmul_precision("highest")
    return _DEVICE


def active() -> str | None:
    """The torch device the streamed engine uses, or None (numpy)."""
    return _DEVICE


def _torch(name: str | None = None):
    try:
        import torch
    except ImportError:
        if name == "auto":
            raise InputError("--device auto needs torch to look for a GPU", "pip install 'tcli[gpu]'") from None
        raise InputError(f"--device {name or 'cuda'} needs torch", "pip install 'tcli[gpu]'") from None
    return torch


def block_bytes(device: str) -> int:
    """Bytes for one row block: a quarter of the device's free memory, at most MAX_BLOCK_BYTES."""
    torch = _torch()
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(min(MAX_BLOCK_BYTES, free // 4))
    from .stream import BLOCK_BYTES

    return BLOCK_BYTES


def _check_finite(torch, block, what: str = "the streamed product") -> None:
    if not bool(torch.isfinite(block).all()):
        raise InputError(f"{what} has non-finite entries (NaN or Inf)",
                         "the weights overflow float32 here; try --dtype float64")


def _factors(A: np.ndarray, B: np.ndarray, largest: bool, device: str):
    torch = _torch()
    dtype = np.result_type(A, B)
    # torch wants writable memory: read-only (memory-mapped) factors are copied once, on the host
    tA = torch.from_numpy(np.require(A, dtype, ["C", "W"])).to(device)
    tB = torch.from_numpy(np.require(B, dtype, ["C", "W"])).to(device)
    if not largest:
        tA = -tA
    return torch, tA, tB


def topk_rows(A: np.ndarray, B: np.ndarray, k: int, rows: np.ndarray | None = None, largest: bool = True,
              block: int | None = None, progress: Callable[[int], None] | None = None
              ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """As ``stream.topk_rows`` on the active device: (row_ids [b], values [b, k'], col_ids [b, k'])
    per block, values best first (descending, or ascending for ``largest=False``)."""
    device = active() or "cpu"
    torch, tA, tB = _factors(A, B, largest, device)
    rows = np.arange(A.shape[0]) if rows is None else np.asarray(rows)
    n = tB.shape[1]
    kk = min(k, n)
    step = block or max(1, block_bytes(device) // max(1, n * tB.element_size()))
    sign = 1 if largest else -1
    for start in range(0, len(rows), step):
        ids = rows[start:start + step]
        out = tA[torch.from_numpy(ids).to(device)] @ tB  # [b, n] on the device
        _check_finite(torch, out)
        vals, cols = torch.topk(out, kk, dim=1, largest=True, sorted=True)
        del out
        yield ids, sign * vals.cpu().numpy(), cols.cpu().numpy().astype(np.int64)
        if progress:
            progress(len(ids))


def global_topk(A: np.ndarray, B: np.ndarray, n: int, largest: bool = True, block: int | None = None,
                progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As ``stream.global_topk`` on the active device: (row_ids, col_ids, values) of the n largest (or
    smallest) entries of A @ B, best first; the chosen entries are ordered by (value, row, col)."""
    device = active() or "cpu"
    torch, tA, tB = _factors(A, B, largest, device)
    m, ncols = tA.shape[0], tB.shape[1]
    step = block or max(1, block_bytes(device) // max(1, ncols * tB.element_size()))
    best_v = torch.empty(0, dtype=tB.dtype, device=device)
    best_i = torch.empty(0, dtype=torch.int64, device=device)  # flat index row * ncols + col
    for start in range(0, m, step):
        out = tA[start:start + step] @ tB
        _check_finite(torch, out)
        flat = out.reshape(-1)
        v, i = torch.topk(flat, min(n, flat.numel()), largest=True, sorted=False)
        best_v = torch.cat([best_v, v])
        best_i = torch.cat([best_i, i + start * ncols])
        if best_v.numel() > n:
            best_v, keep = torch.topk(best_v, n, largest=True, sorted=False)
            best_i = best_i[keep]
        del out, flat
        if progress:
            progress(min(step, m - start))
    v, i = best_v.cpu().numpy(), best_i.cpu().numpy()
    r, c = np.divmod(i, ncols)
    order = np.lexsort((c, r, -v))
    r, c, v = r[order], c[order], v[order]
    return r, c, v if largest else -v


def diagonal_rows(A: np.ndarray, B: np.ndarray, rows: np.ndarray | None = None, cols: np.ndarray | None = None,
                  block: int | None = None, progress: Callable[[int], None] | None = None
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """As ``stream.diagonal_rows`` on the active device: (row_ids [b], values [b], row_rank [b])."""
    device = active() or "cpu"
    torch, tA, tB = _factors(A, B, True, device)
    rows = np.arange(A.shape[0]) if rows is None else np.asarray(rows)
    cols = rows if cols is None else np.asarray(cols)
    n = tB.shape[1]
    step = block or max(1, block_bytes(device) // max(1, n * tB.element_size()))
    for start in range(0, len(rows), step):
        ids = rows[start:start + step]
        out = tA[torch.from_numpy(ids).to(device)] @ tB
        _check_finite(torch, out)
        c = torch.from_numpy(cols[start:start + step]).to(device)
        d = out.gather(1, c[:, None])
        rank = 1 + (out > d).sum(dim=1)
        del out
        yield ids, d[:, 0].cpu().numpy(), rank.cpu().numpy().astype(np.int64)
        if progress:
            progress(len(ids))
