"""Sums of squares over tensors already in host memory, read in place.

On a CPU a backend's eager tensor is host memory that numpy can view
without a copy. Summing there in cache-sized blocks reads each tensor once
and writes nothing the size of a layer output, where the backend's own ops
(`squared_difference` then `reduce_sum`) write a full-size temporary first:
on a fresh process that temporary is memory touched for the first time, at
every large layer. A small tensor also skips two or three op dispatches.
Each block's squares are written to a cache-resident scratch block and
summed pairwise in float32 (numpy's `add.reduce`, as accurate as the
backends' own tree reductions), the blocks in float64. Not a dot product:
BLAS accumulates a whole block in a few float32 registers, which drifts by
up to 3e-5 on near-constant values (a saturated, padded or bias-only output).
"""

from __future__ import annotations

import threading

import numpy as np

from .selection import import_keras

_BLOCK = 1 << 16  # float32 values a block: 256 KB, in cache
_scratch = threading.local()


def host_view(t) -> np.ndarray | None:
    """A float32 eager tensor in host memory as a flat numpy array over
    the same memory; None for anything else (a traced or symbolic tensor,
    one on an accelerator, another dtype)."""
    name = import_keras().backend.backend()
    try:
        if name == "tensorflow":
            if type(t).__name__ != "EagerTensor" or "CPU" not in t.device:
                return None
            view = np.asarray(t)  # `__array__` shares the buffer (`.numpy()` copies)
        elif name == "jax":
            import jax

            if not isinstance(t, jax.Array) or isinstance(t, jax.core.Tracer):
                return None
            if any(d.platform != "cpu" for d in t.devices()):
                return None
            view = np.asarray(t)
        elif name == "torch":
            import torch

            if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.is_sparse:
                return None
            view = t.detach().contiguous().numpy()  # a strided view (permute) is copied
        else:
            return None
    except Exception:  # a tensor numpy cannot view: the backend's ops instead
        return None
    if view.dtype != np.float32:
        return None
    return view.reshape(-1)  # a copy only where the memory was not contiguous


def _block() -> np.ndarray:
    buf = getattr(_scratch, "buf", None)
    if buf is None:
        buf = _scratch.buf = np.empty(_BLOCK, np.float32)
    return buf


def pair_sums(a: np.ndarray, b: np.ndarray) -> tuple[np.float64, np.float64]:
    """(sum((a - b)**2), sum(b**2)) of two flat float32 arrays of one size."""
    scratch, squared_diff, squared = _block(), 0.0, 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # NaN/Inf go on, as the backend's do
        for i in range(0, a.size, _BLOCK):
            j = min(i + _BLOCK, a.size)
            d = scratch[: j - i]
            np.subtract(a[i:j], b[i:j], out=d)
            squared_diff += float(np.add.reduce(np.multiply(d, d, out=d)))
            squared += float(np.add.reduce(np.multiply(b[i:j], b[i:j], out=d)))
    return np.float64(squared_diff), np.float64(squared)


def sum_squares(a: np.ndarray) -> np.float64:
    """sum(a**2) of a flat float32 array."""
    scratch, total = _block(), 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(0, a.size, _BLOCK):
            j = min(i + _BLOCK, a.size)
            total += float(np.add.reduce(np.multiply(a[i:j], a[i:j], out=scratch[: j - i])))
    return np.float64(total)
