"""Evaluate a dictionary on held-out text from the real model: explained variance, MSE, L0, dead and
dense fractions (per layer/head where there are several), and for SAEs and transcoders the CE loss and
KL recovered by splicing the reconstruction into the forward pass.

Positions excluded from training (BOS, padding) keep their original activations when splicing, and
their losses are not counted. CE recovered compares the spliced run with the clean run and with a run
whose hook is zero-ablated at the same positions.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from raysae import metrics as M
from raysae.config.evaluation import EvalConfig
from raysae.dictionaries.base import SparseDictionary
from raysae.lm.model import LanguageModel


def _kept(acts: dict[str, Tensor], hooks: list[str], keep: Tensor, grouped: bool) -> Tensor:
    rows = [acts[h][keep] for h in hooks]
    return torch.stack(rows, dim=1) if grouped else rows[0]


def _splice(act: Tensor, replacement: Tensor, keep: Tensor) -> Tensor:
    out = act.clone()
    out[keep] = replacement.to(act.dtype)
    return out


def _variants(
    dictionary: SparseDictionary,
    hooks: tuple[list[str], list[str]],
    a: Tensor,
    captured: dict[str, Tensor],
    keep: Tensor,
    got: dict[str, Tensor],
) -> list[Tensor]:
    """At the spliced hook (clean value ``a``): encode and decode the kept positions (into ``got``),
    and give the hook's value in the clean, reconstructed and zero-ablated runs."""
    hooks_in, hooks_out = hooks
    acts = {**captured, hooks_out[0]: a}
    got["x"] = _kept(acts, hooks_in, keep, False).float()
    got["y"] = _kept(acts, hooks_out, keep, False).float()
    got["z"] = dictionary.encode(got["x"].to(dictionary.input_scale.device))
    got["y_hat"] = dictionary.decode(got["z"])
    return [a, _splice(a, got["y_hat"].to(a.device), keep), _splice(a, torch.zeros_like(a[keep]), keep)]


@torch.no_grad()
def evaluate(
    dictionary: SparseDictionary, cfg: EvalConfig, lm: LanguageModel | None = None, progress: bool = True
) -> dict:
    """Metrics of ``dictionary`` on ``cfg``'s text; returns a JSON-ready dict."""
    from raysae.data.extract import ActivationSource

    dictionary = dictionary.eval()
    hooks_in, hooks_out = dictionary.hooks_in, dictionary.hooks_out
    hooks = list(dict.fromkeys([*hooks_in, *hooks_out]))
    acts_cfg = cfg.activations.model_copy(update={"hooks": hooks})
    source = ActivationSource(acts_cfg, lm)
    lm = source.lm
    grouped = dictionary.grouped
    splice = cfg.ce_loss and not grouped
    stats = M.ReconstructionStats(per_group=grouped)
    fired = torch.zeros(dictionary.latent_shape, dtype=torch.long)
    l0_sum, n_tokens = torch.zeros(dictionary.latent_shape[:-1], dtype=torch.float64), 0
    ce = {"clean": 0.0, "reconstructed": 0.0, "zero_ablated": 0.0}
    kl = {"reconstructed": 0.0, "zero_ablated": 0.0}
    n_pred = 0
    bar = tqdm(total=acts_cfg.total_tokens, unit="tok", desc="evaluate", disable=not progress)
    for wb in source.token_windows():
        kept_at = np.flatnonzero(wb.keep.any(0))
        if kept_at.size == 0:
            continue
        width = int(kept_at[-1]) + 1  # later positions change nothing before them (causal): not run
        tokens = torch.from_numpy(np.ascontiguousarray(wb.tokens[:, :width])).to(lm.device)
        keep = torch.from_numpy(np.ascontiguousarray(wb.keep[:, :width])).to(lm.device)
        if splice:
            # clean, reconstruction spliced and zero-ablated runs share everything before the hook:
            # one pass to it, then the rest of the model on the three stacked along the batch
            got: dict[str, Tensor] = {}
            fork = functools.partial(_variants, dictionary, (hooks_in, hooks_out), keep=keep, got=got)
            (logits_clean, logits_recon, logits_zero), _ = lm.forward_variants(
                tokens, hooks_out[0], fork, hooks
            )
            x, y, z, y_hat = got["x"], got["y"], got["z"], got["y_hat"].cpu()
        else:
            _, acts = lm.forward(tokens, capture=hooks, return_logits=False)
            x = _kept(acts, hooks_in, keep, grouped).float()
            y = _kept(acts, hooks_out, keep, grouped).float()
            z = dictionary.encode(x.to(dictionary.input_scale.device))
            y_hat = dictionary.decode(z).cpu()
        z = z.cpu()
        stats.update(y.cpu(), y_hat)
        fired += M.firing_counts(z)
        l0_sum += M.active_latents(z).sum(0)
        n_tokens += z.shape[0]
        if splice:
            # predictions of kept tokens count for CE; for KL, only those made at a kept position too
            target = keep[:, 1:]
            ce_sums, kl_sums = M.next_token_ce_kl(
                (logits_clean, logits_recon, logits_zero), tokens, target, target & keep[:, :-1]
            )
            for name, value in zip(ce, ce_sums.tolist(), strict=True):
                ce[name] += value
            for name, value in zip(kl, kl_sums.tolist(), strict=True):
                kl[name] += value
            n_pred += int(target.sum())
        bar.update(int(keep.sum()))
    bar.close()
    if n_tokens == 0:
        raise ValueError("the evaluation text produced no tokens; check activations.text and tokens.split")
    ev = stats.explained_variance
    out: dict = {
        "architecture": dictionary.cfg.architecture,
        "hooks_in": hooks_in,
        "hooks_out": hooks_out,
        "tokens": n_tokens,
        "explained_variance": float(ev.mean()) if grouped else float(ev),
        "mse": float(stats.mse.mean()) if grouped else float(stats.mse),
        "l0": float((l0_sum / n_tokens).sum()),
        "dead_fraction": M.dead_fraction(fired),
        "dense_fraction": M.dense_fraction(fired, n_tokens, cfg.dense_threshold),
    }
    if grouped:
        out["per_group"] = {
            "hooks": hooks_out,
            "explained_variance": ev.tolist(),
            "mse": stats.mse.tolist(),
        }
        if len(dictionary.latent_shape) > 1:  # CLT: latents per layer
            out["per_group"]["l0"] = (l0_sum / n_tokens).tolist()
    if splice and n_pred:
        mean = {k: v / n_pred for k, v in ce.items()}
        out["ce_loss"] = mean
        out["ce_loss_recovered"] = M.ce_loss_recovered(
            mean["clean"], mean["reconstructed"], mean["zero_ablated"]
        )
        out["kl_div"] = {k: v / n_pred for k, v in kl.items()}
        out["kl_recovered"] = M.kl_recovered(kl["reconstructed"], kl["zero_ablated"])
    return out
