"""Fused Triton kernels for the sparse decode ``Z W_dec`` of TopK/BatchTopK SAEs (``sparse.sparse_decode``).

``torch.sparse.mm`` with a CSR operand is generic; here one kernel reads each active ``W_dec`` row once per
column block and accumulates in fp32 (fp64 for fp64 inputs), with no CSR tensor object in between:

- forward: ``Y[r] = Σ_e values[e] · W_dec[col[e]]`` over the entries e of row r (a block of rows × a block
  of ``d_model`` columns per program);
- ``dvalues[e] = gY[row[e]] · W_dec[col[e]]`` (a block of entries per program, looping over ``d_model``);
- ``dW_dec = Zᵀ gY``: the forward kernel on the transposed pattern (sorted by latent, stable), so every
  ``dW_dec`` row is a segment sum in a fixed order: deterministic, no atomics.

Which path runs: ``triton_available(device)``, read by ``sparse.sparse_decode`` at every call. By default
Triton runs for CUDA tensors when ``triton`` imports, the torch path elsewhere. ``RAYSAE_SPARSE_KERNEL``
forces it: ``torch`` (always the torch path), ``triton`` (always these kernels; an error when triton does
not import), ``auto`` or unset (the default). Forcing ``triton`` on CPU tensors only works in Triton's
interpreter: ``TRITON_INTERPRET=1`` must be set before the first call here, because the kernels are
defined (``triton.jit``) on first use and Triton reads the variable then; the tests run that way.

``triton`` is imported lazily: raysae imports and trains without it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from raysae.dictionaries.sparse import Pattern

ENV = "RAYSAE_SPARSE_KERNEL"
BLOCK_R, BLOCK_D, BLOCK_E = 16, 64, 64  # rows and columns per program; entries per dvalues program


@functools.cache
def _triton() -> Any | None:
    """The ``triton`` module, or None when it does not import (cached: asked at every training step)."""
    try:
        return importlib.import_module("triton")
    except ImportError:
        return None


def triton_available(device: torch.device | str) -> bool:
    """Whether ``sparse_decode`` on ``device`` runs the Triton kernels (see the module docstring)."""
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "torch", "triton"):
        raise ValueError(f"{ENV}={mode!r}: expected torch, triton or auto")
    if mode == "torch":
        return False
    if mode == "triton":
        if _triton() is None:
            raise RuntimeError(f"{ENV}=triton but triton does not import (pip install triton)")
        return True
    return torch.device(device).type == "cuda" and _triton() is not None  # device first: no import on CPU


@functools.cache
def _kernels() -> tuple[Any, Any]:
    """The two kernels, defined on first use so that importing raysae never imports triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def csr_times_dense(
        crow,
        col,
        val,
        dense,
        out,
        n_rows,
        n_cols,
        ACC: tl.constexpr,
        BR: tl.constexpr,
        BD: tl.constexpr,
    ):
        """out[r, :] = Σ_e val[e] · dense[col[e], :] for the CSR entries e of row r."""
        rows = tl.program_id(0) * BR + tl.arange(0, BR)
        cols = tl.program_id(1) * BD + tl.arange(0, BD)
        row_ok = rows < n_rows
        col_ok = cols < n_cols
        start = tl.load(crow + rows, mask=row_ok, other=0)
        count = tl.load(crow + rows + 1, mask=row_ok, other=0) - start
        acc = tl.zeros((BR, BD), dtype=ACC)
        for j in range(0, tl.max(count, axis=0)):  # rows with fewer entries are masked
            live = j < count
            v = tl.load(val + start + j, mask=live, other=0.0).to(ACC)
            c = tl.load(col + start + j, mask=live, other=0).to(tl.int64)
            w = tl.load(
                dense + c[:, None] * n_cols + cols[None, :],
                mask=live[:, None] & col_ok[None, :],
                other=0.0,
            )
            acc += v[:, None] * w.to(ACC)
        dst = out + rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
        tl.store(dst, acc.to(out.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit
    def sampled_dot(
        row,
        col,
        grad,
        dense,
        out,
        nnz,
        n_cols,
        ACC: tl.constexpr,
        BE: tl.constexpr,
        BD: tl.constexpr,
    ):
        """out[e] = grad[row[e], :] · dense[col[e], :] for a block of entries."""
        e = tl.program_id(0) * BE + tl.arange(0, BE)
        ok = e < nnz
        r = tl.load(row + e, mask=ok, other=0).to(tl.int64)
        c = tl.load(col + e, mask=ok, other=0).to(tl.int64)
        acc = tl.zeros((BE,), dtype=ACC)
        for d0 in range(0, n_cols, BD):
            d = d0 + tl.arange(0, BD)
            m = ok[:, None] & (d < n_cols)[None, :]
            g = tl.load(grad + r[:, None] * n_cols + d[None, :], mask=m, other=0.0)
            w = tl.load(dense + c[:, None] * n_cols + d[None, :], mask=m, other=0.0)
            acc += tl.sum(g.to(ACC) * w.to(ACC), axis=1)
        tl.store(out + e, acc.to(out.dtype.element_ty), mask=ok)

    return csr_times_dense, sampled_dot


def _acc(dtype: torch.dtype) -> Any:
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _device_guard(t: Tensor) -> Any:
    """Launch on the tensor's GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def csr_times_dense(crow: Tensor, col: Tensor, val: Tensor, dense: Tensor, n_rows: int) -> Tensor:
    """``[n_rows, dense.shape[1]]``: the CSR matrix ``(crow, col, val)`` times ``dense``."""
    dense = dense.contiguous()
    dtype = torch.promote_types(val.dtype, dense.dtype)
    out = torch.empty(n_rows, dense.shape[1], dtype=dtype, device=dense.device)
    if out.numel() == 0:
        return out
    kernel, _ = _kernels()
    grid = (-(-n_rows // BLOCK_R), -(-dense.shape[1] // BLOCK_D))
    with _device_guard(dense):
        kernel[grid](
            crow.contiguous(),
            col.contiguous(),
            val.contiguous(),
            dense,
            out,
            n_rows,
            dense.shape[1],
            ACC=_acc(dtype),
            BR=BLOCK_R,
            BD=BLOCK_D,
        )
    return out


def sampled_dot(row: Tensor, col: Tensor, grad: Tensor, dense: Tensor, dtype: torch.dtype) -> Tensor:
    """``(grad denseᵀ)[row[e], col[e]]`` for every entry e, never forming the dense product."""
    out = torch.empty(row.numel(), dtype=dtype, device=grad.device)
    if out.numel() == 0:
        return out
    _, kernel = _kernels()
    grad, dense = grad.contiguous(), dense.contiguous()
    acc = _acc(torch.promote_types(grad.dtype, dense.dtype))
    with _device_guard(grad):
        kernel[(-(-row.numel() // BLOCK_E),)](
            row.contiguous(),
            col.contiguous(),
            grad,
            dense,
            out,
            row.numel(),
            grad.shape[1],
            ACC=acc,
            BE=BLOCK_E,
            BD=BLOCK_D,
        )
    return out


class _TritonSparseDecode(torch.autograd.Function):
    """``sparse._SparseDecode`` with the Triton kernels: same inputs, outputs and gradients."""

    @staticmethod
    def forward(ctx, values, W_dec, pattern: Pattern):  # type: ignore[override]
        ctx.save_for_backward(values, W_dec)
        ctx.pattern = pattern
        return csr_times_dense(pattern.crow, pattern.col, values, W_dec, pattern.shape[0])

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        values, W_dec = ctx.saved_tensors
        p: Pattern = ctx.pattern
        dv = dW = None
        if ctx.needs_input_grad[0]:
            dv = sampled_dot(p.row, p.col, grad_y, W_dec, values.dtype)
        if ctx.needs_input_grad[1]:
            t, order = p.transposed()
            dW = csr_times_dense(t.crow, t.col, values[order], grad_y, t.shape[0]).to(W_dec.dtype)
        return dv, dW, None


def triton_sparse_decode(values: Tensor, W_dec: Tensor, pattern: Pattern) -> Tensor:
    """``Z W_dec`` ``[rows, d_model]`` for the sparse Z with ``values`` at ``pattern``, by Triton kernels."""
    return _TritonSparseDecode.apply(values, W_dec, pattern)
