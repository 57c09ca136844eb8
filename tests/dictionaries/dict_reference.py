"""Plain reference implementations shared by the dictionary tests (loops and sorting, no library code).

Each architecture's test supplies a ``Ref`` with ``encode_pre(P, x)``, ``decode(P, z, bias)`` and
``norms(P)`` written from the maths; ``P`` maps the model's parameter names to leaf copies. The helpers
here compute the activation masks, the loss (MSE + sparsity + AuxK) and compare the library's outputs
and gradients to the reference's.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from raysae.dictionaries import SparseDictionary

TOL = {"rtol": 1e-10, "atol": 1e-10}

# (act_fn, sparsity_penalty, training): every activation and every penalty that applies to it.
ACT_CASES = [
    ("relu", "l1", True),
    ("relu", "tanh", True),
    ("topk", "l1", True),
    ("batchtopk", "l1", True),
    ("batchtopk", "l1", False),
    ("jumprelu", "l0", True),
    ("jumprelu", "l1", True),
    ("jumprelu", "tanh", True),
]
ACT_IDS = [f"{a}-{p}-{'train' if t else 'eval'}" for a, p, t in ACT_CASES]
COMMON = {
    "d_model": 6,
    "d_sae": 10,
    "top_k": 3,
    "dtype": "float64",
    "sparsity_coefficient": 0.7,
    "jumprelu_threshold_init": 0.3,
    "jumprelu_bandwidth": 0.3,
    "tanh_scale": 1.5,
}


class Ref(Protocol):
    def encode_pre(self, P: dict[str, Tensor], x: Tensor) -> Tensor: ...
    def decode(self, P: dict[str, Tensor], z: Tensor, bias: bool = True) -> Tensor: ...
    def norms(self, P: dict[str, Tensor]) -> Tensor: ...


def close(a: Tensor, b: Tensor, what: str, tol: dict[str, float] = TOL) -> None:
    torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{what}: {m}")


@torch.no_grad()
def randomize_(model: SparseDictionary, seed: int = 0, same_scales: bool = False) -> None:
    """Random values for every parameter, threshold and scale (so no bias is trivially zero)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name == "activation.log_threshold":
            p.copy_(torch.empty(p.shape, dtype=p.dtype).uniform_(math.log(0.1), math.log(0.6), generator=g))
        else:
            p.copy_(0.5 * torch.randn(p.shape, dtype=p.dtype, generator=g))
    for buf in (model.input_scale, model.output_scale):
        buf.copy_(torch.empty(buf.shape, dtype=buf.dtype).uniform_(0.5, 2.0, generator=g))
    if same_scales:
        model.output_scale.copy_(model.input_scale)
    if model.cfg.act_fn == "batchtopk":
        thr = model.activation.threshold
        thr.copy_(torch.empty(thr.shape, dtype=thr.dtype).uniform_(0.2, 0.8, generator=g))


def scale(t: Tensor, s: Tensor) -> Tensor:
    """Multiply group g of ``t`` ([B, d] or [B, G, d]) by ``s[g]`` (a scalar when ungrouped)."""
    return t * (s.reshape(-1, 1) if s.dim() else s)


def topk_mask(pre: Tensor, k: int) -> Tensor:
    """1 at the k largest entries of every row (last dim) that are also positive."""
    rows = pre.reshape(-1, pre.shape[-1])
    mask = torch.zeros_like(rows)
    for r in range(rows.shape[0]):
        values = rows[r].tolist()
        for i in sorted(range(len(values)), key=lambda i: -values[i])[:k]:
            mask[r, i] = float(values[i] > 0)
    return mask.reshape(pre.shape)


def batchtopk_mask(pre: Tensor, k: int) -> Tensor:
    """1 at the k·batch largest positive entries of each group, counted over the whole batch."""
    b, s = pre.shape[0], pre.shape[-1]
    flat = pre.reshape(b, -1, s)
    mask = torch.zeros_like(flat)
    for g in range(flat.shape[1]):
        cells = [(flat[i, g, j].item(), i, j) for i in range(b) for j in range(s)]
        for v, i, j in sorted(cells, reverse=True)[: k * b]:
            mask[i, g, j] = float(v > 0)
    return mask.reshape(pre.shape)


def activation_mask(model: SparseDictionary, pre: Tensor) -> Tensor:
    """The 0/1 pattern the activation should keep (z = pre * mask), without gradients."""
    pre = pre.detach()
    act, k = model.cfg.act_fn, model.cfg.top_k
    if act == "relu":
        return (pre > 0).to(pre.dtype)
    if act == "topk":
        return topk_mask(pre, k)
    if act == "batchtopk":
        if model.activation.training:
            return batchtopk_mask(pre, k)
        thr = model.activation.threshold.clamp(min=0)
        return (pre > thr.reshape(*thr.shape, 1)).to(pre.dtype)
    theta = model.activation.log_threshold.detach().exp()
    return (pre > theta).to(pre.dtype)


def aux_mask(pre: Tensor, dead: Tensor, k_aux: int) -> Tensor:
    """1 at each token's (and group's) top-k dead latents, k = min(k_aux, most dead in any group)."""
    b, s = pre.shape[0], pre.shape[-1]
    flat, dm = pre.detach().reshape(b, -1, s), dead.reshape(-1, s)
    k = min(k_aux, max(int(row.sum()) for row in dm))
    mask = torch.zeros_like(flat)
    for i in range(b):
        for g in range(flat.shape[1]):
            dead_idx = [j for j in range(s) if dm[g, j]]
            for j in sorted(dead_idx, key=lambda j: -flat[i, g, j].item())[:k]:
                mask[i, g, j] = 1.0
    return mask.reshape(pre.shape)


def per_token(t: Tensor) -> Tensor:
    """Sum over everything but the batch dim, then mean over the batch."""
    return t.reshape(t.shape[0], -1).sum(1).mean()


def check_inference(model: SparseDictionary, x: Tensor, ref: Ref) -> None:
    """encode / decode / forward on raw activations against the reference."""
    P = {n: p.detach() for n, p in model.named_parameters()}
    with torch.no_grad():
        pre = ref.encode_pre(P, scale(x, model.input_scale))
        z_ref = pre * activation_mask(model, pre)
        y_ref = scale(ref.decode(P, z_ref), 1 / model.output_scale)
        close(model.encode(x), z_ref, "encode")
        close(model.decode(z_ref), y_ref, "decode")
        close(model(x), y_ref, "forward")


def check_loss(
    model: SparseDictionary,
    batch: Tensor | dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    ref: Ref,
    dead: Tensor | None = None,
    k_aux: int = 4,
    aux_coef: float = 0.0,
) -> dict[str, Tensor]:
    """compute_loss (value, parts, outputs) and every parameter gradient against the reference."""
    cfg = model.cfg
    model.zero_grad(set_to_none=True)
    P = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    xs, ys = scale(x, model.input_scale), scale(y, model.output_scale)
    pre = ref.encode_pre(P, xs)
    mask = activation_mask(model, pre)
    z = pre * mask
    z.retain_grad()
    y_hat = ref.decode(P, z)
    parts = {"mse": per_token((y_hat - ys) ** 2)}
    loss = parts["mse"]
    if cfg.act_fn in ("relu", "jumprelu"):
        norms = ref.norms(P)
        if cfg.sparsity_penalty == "l1":
            parts["sparsity"] = per_token(z * norms)
        elif cfg.sparsity_penalty == "tanh":
            parts["sparsity"] = per_token(torch.tanh(cfg.tanh_scale * z * norms))
        else:
            parts["sparsity"] = per_token(mask)
        loss = loss + cfg.sparsity_coefficient * parts["sparsity"]
    if dead is not None and aux_coef > 0 and cfg.act_fn in ("topk", "batchtopk"):
        z_aux = torch.relu(pre) * aux_mask(pre, dead, k_aux)
        residual = ys - y_hat.detach()
        parts["aux_k"] = min(int(dead.sum()) / k_aux, 1.0) * per_token(
            (ref.decode(P, z_aux, False) - residual) ** 2
        )
        loss = loss + aux_coef * parts["aux_k"]
    loss.backward()

    out = model.compute_loss(batch, dead_mask=dead, aux_k=k_aux, aux_k_coefficient=aux_coef)
    out.loss.backward()
    close(out.loss, loss.detach(), "loss")
    assert set(out.parts) == set(parts), (sorted(out.parts), sorted(parts))
    for key, value in parts.items():
        close(out.parts[key], value.detach(), f"part {key}")
    close(out.feature_acts, z.detach(), "feature_acts")
    close(out.reconstruction, y_hat.detach(), "reconstruction")
    close(out.label, ys, "label")

    for name, p in model.named_parameters():
        if name == "activation.log_threshold":
            expected = jumprelu_log_threshold_grad(model, pre.detach(), z.grad, mask)
        else:
            expected = P[name].grad if P[name].grad is not None else torch.zeros_like(p)
        got = p.grad if p.grad is not None else torch.zeros_like(p)
        close(got, expected, f"grad of {name}")
    return parts


def jumprelu_log_threshold_grad(model: SparseDictionary, pre: Tensor, dl_dz: Tensor, mask: Tensor) -> Tensor:
    """dL/dlogθ from the rectangle-kernel STE: dz/dθ = -(θ/ε)·1[|pre-θ|<ε/2], d(l0)/dθ = -(1/ε)·1[...]."""
    cfg = model.cfg
    theta = model.activation.log_threshold.detach().exp()
    eps = cfg.jumprelu_bandwidth
    near = ((pre - theta).abs() < eps / 2).to(pre.dtype)
    assert near.sum() > 0, "no pre-activation near the threshold: the STE check would be vacuous"
    d_theta = (dl_dz * -(theta / eps) * near).sum(0)
    if cfg.sparsity_penalty == "l0":
        d_theta = d_theta + cfg.sparsity_coefficient * (-near / eps).sum(0) / pre.shape[0]
    return theta * d_theta
