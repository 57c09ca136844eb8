"""The Triton sparse decode equals the torch path and a dense float64 product: output, dvalues, dW_dec.

No GPU here, so the kernels run in Triton's interpreter on CPU tensors. Triton decides interpret mode when
a kernel is defined (``TRITON_INTERPRET``), so they run in a fresh process with that set and
``RAYSAE_SPARSE_KERNEL=triton``, through ``sparse.sparse_decode``'s dispatch; this process compares.
Sizes are small and not multiples of the blocks (37 rows, 72 or 100 columns) so every mask is exercised.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raysae.dictionaries import sparse_triton
from raysae.dictionaries.sparse import Pattern, sparse_decode

B, S, K = 37, 50, 5
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-12, "atol": 1e-12}}

RUN_TRITON = r"""
import sys, torch
from raysae.dictionaries.sparse import Pattern, sparse_decode
from raysae.dictionaries.sparse_triton import triton_available
out = {"available_on_cpu": triton_available("cpu")}
for name, c in torch.load(sys.argv[1]).items():
    v, W = c["values"].clone().requires_grad_(), c["W_dec"].clone().requires_grad_()
    y = sparse_decode(v, W, Pattern(c["crow"], c["row"], c["col"], c["shape"]))
    y.backward(c["grad_y"])
    out[name] = {"y": y.detach(), "dv": v.grad, "dW": W.grad, "node": type(y.grad_fn).__name__}
torch.save(out, sys.argv[2])
"""


def _case(kind: str, dtype: torch.dtype, d_in: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, S, generator=g, dtype=torch.float64)
    if kind == "topk":
        p = Pattern.topk(scores, K)
    elif kind == "batchtopk":  # variable counts: one empty row, one row with every latent
        scores[3] = -torch.inf
        scores[5] = 100.0
        p = Pattern.batch_topk(scores, K * B)
    else:  # no active entry at all
        p = Pattern.from_rows(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), (B, S))
    return {
        "crow": p.crow,
        "row": p.row,
        "col": p.col,
        "shape": p.shape,
        "values": torch.rand(p.col.numel(), generator=g, dtype=torch.float64).to(dtype),
        "W_dec": torch.randn(S, d_in, generator=g, dtype=torch.float64).to(dtype),
        "grad_y": torch.randn(B, d_in, generator=g, dtype=torch.float64).to(dtype),
    }


COMPILE_FOR_H100 = r"""
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from raysae.dictionaries.sparse_triton import _kernels
dense_k, dot_k = _kernels()
for ty, acc in (("fp32", tl.float32), ("fp64", tl.float64)):
    p = {"val": f"*{ty}", "dense": f"*{ty}", "out": f"*{ty}", "n_cols": "i32"}
    blocks = {"ACC": "constexpr", "BD": "constexpr"}
    sig = {"crow": "*i64", "col": "*i64", **p, "n_rows": "i32", **blocks, "BR": "constexpr"}
    sig = {k: sig[k] for k in dense_k.arg_names}
    src = ASTSource(dense_k, sig, constexprs={"ACC": acc, "BR": 16, "BD": 64})
    assert triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["cubin"]
    sig = {"row": "*i64", "col": "*i64", "grad": f"*{ty}", **p, "nnz": "i32", **blocks, "BE": "constexpr"}
    sig = {k: sig[k] for k in dot_k.arg_names}
    src = ASTSource(dot_k, sig, constexprs={"ACC": acc, "BE": 64, "BD": 64})
    assert triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["cubin"]
"""


def _perturbed(c: dict) -> dict:
    """The negative control: entry 7 (row 1) moved to a latent its row does not use."""
    col = c["col"].clone()
    col[7] = next(s for s in range(S) if s not in col[5:10].tolist())
    return {**c, "col": col}


CASES = {
    "topk-float32": _case("topk", torch.float32, 72, 0),
    "batchtopk-float32": _case("batchtopk", torch.float32, 100, 1),
    "topk-float64": _case("topk", torch.float64, 100, 2),
    "batchtopk-float64": _case("batchtopk", torch.float64, 72, 3),
    "empty-float32": _case("empty", torch.float32, 72, 4),
}
CASES["perturbed-topk-float64"] = _perturbed(CASES["topk-float64"])


@pytest.fixture(scope="module")
def triton_out(tmp_path_factory) -> dict:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (the dev extra installs it)")
    folder = tmp_path_factory.mktemp("triton")
    torch.save(CASES, folder / "cases.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1", sparse_triton.ENV: "triton"}
    done = subprocess.run(
        [sys.executable, "-c", RUN_TRITON, str(folder / "cases.pt"), str(folder / "out.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(folder / "out.pt")


def _pattern(c: dict) -> Pattern:
    return Pattern(c["crow"], c["row"], c["col"], c["shape"])


def _torch_path(c: dict) -> dict:
    v, W = c["values"].clone().requires_grad_(), c["W_dec"].clone().requires_grad_()
    y = sparse_decode(v, W, _pattern(c))
    assert type(y.grad_fn).__name__ == "_SparseDecodeBackward"  # CPU, no override: the torch path
    y.backward(c["grad_y"])
    return {"y": y.detach(), "dv": v.grad, "dW": W.grad}


def _dense_float64(c: dict) -> dict:
    """Z, W_dec and gY dense in float64: Y = Z W, dZ = gY Wᵀ at the pattern, dW = Zᵀ gY."""
    p, W, gy = _pattern(c), c["W_dec"].double(), c["grad_y"].double()
    Z = p.dense(c["values"].double())
    return {"y": Z @ W, "dv": (gy @ W.T)[p.row, p.col], "dW": Z.T @ gy}


@pytest.mark.parametrize("name", [n for n in CASES if not n.startswith("perturbed")])
def test_triton_equals_torch_and_dense_float64(triton_out, name, monkeypatch):
    monkeypatch.delenv(sparse_triton.ENV, raising=False)
    c, got = CASES[name], triton_out[name]
    assert got["node"] == "_TritonSparseDecodeBackward", "the dispatch did not pick the Triton path"
    dtype = c["values"].dtype
    want, dense = _torch_path(c), _dense_float64(c)
    for key in ("y", "dv", "dW"):
        assert got[key].dtype == dtype and got[key].shape == dense[key].shape, key
        torch.testing.assert_close(got[key], want[key], **TOL[dtype], msg=f"{name} {key} vs torch")
        torch.testing.assert_close(got[key].double(), dense[key], **TOL[dtype], msg=f"{name} {key} vs dense")
    if name.startswith("batchtopk"):
        counts = c["crow"].diff()
        assert counts.min() == 0 and counts.max() == S and len(set(counts.tolist())) > 2
        assert not got["y"][3].any()  # the empty row decodes to zero


def test_a_perturbed_pattern_gives_another_result(triton_out):
    """The comparison can fail: one moved entry changes Y in its row, its dvalue and two dW_dec rows."""
    ref, got = _dense_float64(CASES["topk-float64"]), triton_out["perturbed-topk-float64"]
    for key in ("y", "dv", "dW"):
        assert not torch.allclose(got[key], ref[key], **TOL[torch.float64]), key
    assert triton_out["available_on_cpu"]  # forced by the variable


def test_kernels_compile_for_an_h100(tmp_path):
    """The interpreter runs Python, not Triton's compiler; this compiles both kernels to sm_90 machine code
    (ptxas ships in the triton wheel; no GPU needed), so a kernel that only the compiler rejects fails here."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (the dev extra installs it)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile afresh, and leave no cache behind
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_H100], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]


def test_kernel_choice(monkeypatch):
    monkeypatch.setattr(sparse_triton, "_triton", lambda: object())  # as if triton imported
    monkeypatch.delenv(sparse_triton.ENV, raising=False)
    assert sparse_triton.triton_available("cuda") and not sparse_triton.triton_available("cpu")
    monkeypatch.setenv(sparse_triton.ENV, "torch")
    assert not sparse_triton.triton_available("cuda")
    monkeypatch.setenv(sparse_triton.ENV, "triton")
    assert sparse_triton.triton_available("cpu")
    monkeypatch.setenv(sparse_triton.ENV, "cuda")
    with pytest.raises(ValueError, match="expected torch, triton or auto"):
        sparse_triton.triton_available("cpu")
    monkeypatch.setattr(sparse_triton, "_triton", lambda: None)  # triton not installed
    monkeypatch.setenv(sparse_triton.ENV, "auto")
    assert not sparse_triton.triton_available("cuda")
    monkeypatch.setenv(sparse_triton.ENV, "triton")
    with pytest.raises(RuntimeError, match="does not import"):
        sparse_triton.triton_available("cpu")


def test_the_cpu_path_never_imports_triton():
    """Training on CPU neither needs nor loads triton (``import triton`` would fail if tried here)."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from raysae.dictionaries.sparse import Pattern, sparse_decode\n"
        "p = Pattern.topk(torch.randn(4, 6), 2)\n"
        "v = torch.rand(8, requires_grad=True); W = torch.randn(6, 3, requires_grad=True)\n"
        "sparse_decode(v, W, p).sum().backward()\n"
        "from raysae.dictionaries.sparse_triton import triton_available\n"
        "assert not triton_available('cuda') and W.grad is not None\n"
    )
    env = {k: v for k, v in os.environ.items() if k != sparse_triton.ENV}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
