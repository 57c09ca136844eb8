"""The sparse training path of TopK and BatchTopK SAEs: only the active latents cost more than O(1).

A dense step multiplies ``[batch, d_sae]`` matrices six times (encode, decode and their gradients). With
k active latents per row, only the encoder's forward product needs every latent: the decoder reads the
k active rows of ``W_dec``, ``W_dec``'s gradient is a row update on them, and the encoder's gradient
flows only through the active pre-activations. Here the active set is a CSR pattern ``(crow, col)``
over ``[batch, d_sae]`` and two autograd functions do the sparse products:

- ``gather_active(x, W_enc, b_enc, pre, pattern)``: the pre-activations at the pattern (computed once,
  densely, without autograd); backward: ``dW_enc = xᵀ G``, ``db_enc``, ``dx = G W_encᵀ`` with G sparse;
- ``sparse_decode(values, W_dec, pattern)``: ``Z W_dec``; backward: ``dvalues = (gY W_decᵀ)`` sampled at
  the pattern (``torch.sparse.sampled_addmm``) and ``dW_dec = Zᵀ gY`` (a CSR of the transpose). On CUDA
  with triton it runs fused kernels instead (``raysae.dictionaries.sparse_triton``, same gradients).

The dense path (``SparseDictionary.compute_loss``) stays the reference for every activation; tests check
the two agree in float64 (loss, gradients, parameters after Adam). DTensor-sharded dictionaries run the
same functions on their local shards (``raysae.train.sparse_sharded``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from raysae.dictionaries.sparse_triton import triton_available, triton_sparse_decode


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR tensor without invariant checks (the patterns are built valid) and without torch's
    "beta" warning, which would otherwise print in every process that trains."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


@dataclass(frozen=True)
class Pattern:
    """Active positions of a ``[rows, cols]`` matrix in CSR order: ``row[i], col[i]`` for entry i."""

    crow: Tensor
    row: Tensor
    col: Tensor
    shape: tuple[int, int]
    _transposed: list = field(default_factory=list, compare=False, repr=False)
    """The transpose, computed once: both backward products of a step read it (an argsort of every
    entry, ~56 ms at 4,096 × 288 entries on 2 cores, half of it saved)."""

    @classmethod
    def from_rows(cls, row: Tensor, col: Tensor, shape: tuple[int, int]) -> Pattern:
        """From entries already sorted by row."""
        counts = torch.bincount(row, minlength=shape[0])
        crow = torch.zeros(shape[0] + 1, dtype=torch.long, device=row.device)
        crow[1:] = counts.cumsum(0)
        return cls(crow, row, col, shape)

    @classmethod
    def topk(cls, scores: Tensor, k: int) -> Pattern:
        """The k largest entries of every row of ``scores`` ``[rows, cols]``."""
        idx = scores.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values  # CSR: columns in order
        rows = scores.shape[0]
        crow = torch.arange(0, rows * k + 1, k, device=scores.device)
        row = torch.arange(rows, device=scores.device).repeat_interleave(k)
        return cls(crow, row, idx.reshape(-1), (rows, scores.shape[1]))

    @classmethod
    def batch_topk(cls, scores: Tensor, n: int) -> Pattern:
        """The n largest entries of the whole matrix (BatchTopK), in row order."""
        flat = scores.reshape(-1).topk(n, sorted=False).indices.sort().values
        cols = scores.shape[1]
        return cls.from_rows(flat // cols, flat % cols, (scores.shape[0], cols))

    def csr(self, values: Tensor) -> Tensor:
        return _csr(self.crow, self.col, values, self.shape)

    def transposed(self) -> tuple[Pattern, Tensor]:
        """The ``[cols, rows]`` transpose (sorted by column, stable within a column) and the order that
        takes this pattern's entries to it."""
        if not self._transposed:
            order = torch.argsort(self.col, stable=True)
            t = Pattern.from_rows(self.col[order], self.row[order], (self.shape[1], self.shape[0]))
            self._transposed.append((t, order))
        return self._transposed[0]

    def csr_transposed(self, values: Tensor) -> Tensor:
        """The ``[cols, rows]`` transpose as CSR."""
        t, order = self.transposed()
        return _csr(t.crow, t.col, values[order], t.shape)

    def dense(self, values: Tensor) -> Tensor:
        """The ``[rows, cols]`` matrix (for metrics; not on the differentiable path)."""
        out = values.new_zeros(self.shape)
        out[self.row, self.col] = values
        return out


@dataclass(frozen=True)
class SparseLatents:
    """Latent activations as values at a pattern (detached): what metrics read on the sparse path."""

    pattern: Pattern
    values: Tensor

    @property
    def n_rows(self) -> int:
        """Tokens the latents cover (a sharded subclass reports the global batch)."""
        return self.pattern.shape[0]

    def dense(self) -> Tensor:
        return self.pattern.dense(self.values)

    def firing_counts(self) -> Tensor:
        """Tokens each latent fired on (``raysae.metrics.firing_counts`` of the dense matrix)."""
        fired = self.pattern.col[self.values != 0]
        return torch.bincount(fired, minlength=self.pattern.shape[1])


class _GatherActive(torch.autograd.Function):
    """Values of ``pre = x W_enc + b_enc`` at the pattern, with a sparse backward."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_sub, pre, pattern: Pattern):  # type: ignore[override]
        ctx.save_for_backward(x, W_enc)
        ctx.pattern = pattern
        return pre[pattern.row, pattern.col].to(W_enc.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, W_enc = ctx.saved_tensors
        p: Pattern = ctx.pattern
        grad = grad.contiguous()
        dW = db = dsub = None
        if ctx.needs_input_grad[1]:
            dW = torch.sparse.mm(p.csr_transposed(grad), x.contiguous()).T
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            col_sums = torch.zeros(p.shape[1], dtype=grad.dtype, device=grad.device).index_add_(
                0, p.col, grad
            )
            db = col_sums if ctx.needs_input_grad[2] else None
            # x_in = x - b_sub for every row, so b_sub's gradient is -(Σ_rows G) W_encᵀ: one matvec.
            dsub = -(W_enc @ col_sums) if ctx.needs_input_grad[3] else None
        return None, dW, db, dsub, None, None


class _SparseDecode(torch.autograd.Function):
    """``Z W_dec`` for Z sparse at the pattern; backward only at the pattern and the active rows."""

    @staticmethod
    def forward(ctx, values, W_dec, pattern: Pattern):  # type: ignore[override]
        ctx.save_for_backward(values, W_dec)
        ctx.pattern = pattern
        return torch.sparse.mm(pattern.csr(values), W_dec)

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        values, W_dec = ctx.saved_tensors
        p: Pattern = ctx.pattern
        grad_y = grad_y.contiguous()
        dv = dW = None
        if ctx.needs_input_grad[0]:
            mask = p.csr(torch.zeros_like(values))
            dv = torch.sparse.sampled_addmm(mask, grad_y, W_dec.T, beta=0.0).values()
        if ctx.needs_input_grad[1]:
            dW = torch.sparse.mm(p.csr_transposed(values), grad_y)
        return dv, dW, None


def gather_active(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_sub: Tensor | None, pre: Tensor, pattern: Pattern
) -> Tensor:
    """Pre-activations at ``pattern``, where ``pre = (x - b_sub) W_enc + b_enc`` was computed without
    autograd (``b_sub``: the decoder bias an SAE subtracts, or None). ``x`` gets no gradient: it is data."""
    if b_sub is None:
        return _GatherActive.apply(x, W_enc, b_enc, b_enc.new_zeros(W_enc.shape[0]), pre, pattern)
    return _GatherActive.apply(x, W_enc, b_enc, b_sub, pre, pattern)


class _DenseActive(torch.autograd.Function):
    """``pre = (x - b_sub) W_enc + b_enc`` computed without autograd, given its gradient: the dense
    version of ``_GatherActive`` for a few columns (AuxK over the dead latents), without recomputing
    the product forward or a ``[rows, d_in]`` gradient for b_sub."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_sub, pre):  # type: ignore[override]
        ctx.save_for_backward(x, W_enc)
        return pre.to(W_enc.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, W_enc = ctx.saved_tensors
        col_sums = grad.sum(0)
        dW = x.T @ grad if ctx.needs_input_grad[1] else None
        dsub = -(W_enc @ col_sums) if ctx.needs_input_grad[3] else None
        return None, dW, col_sums if ctx.needs_input_grad[2] else None, dsub, None


def dense_active(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_sub: Tensor | None, pre: Tensor) -> Tensor:
    """``pre`` (computed without autograd from these arguments, as in ``gather_active``) with its
    gradients to ``W_enc``, ``b_enc`` and ``b_sub``."""
    if b_sub is None:
        return _DenseActive.apply(x, W_enc, b_enc, b_enc.new_zeros(W_enc.shape[0]), pre)
    return _DenseActive.apply(x, W_enc, b_enc, b_sub, pre)


def sparse_decode(values: Tensor, W_dec: Tensor, pattern: Pattern) -> Tensor:
    """``Z W_dec`` ``[rows, d_model]`` for the sparse Z with ``values`` at ``pattern``: the fused Triton
    kernels where ``triton_available`` says so (CUDA with triton, or forced), the torch functions elsewhere."""
    if triton_available(values.device):
        return triton_sparse_decode(values, W_dec, pattern)
    return _SparseDecode.apply(values, W_dec, pattern)
