"""Direct effects between the nodes of one prompt's local replacement model (circuit-tracer's ``attribute``).

Sources: token embeddings, active features (activation × decoder, written to each MLP output the
feature's decoders reach) and error nodes (true MLP output − reconstruction; a layer no transcoder
covers is all error). Targets: feature pre-activations (encoder row · input) and logits (demeaned
unembedding column · final-norm output). One frozen pass (``raysae.graphs.replacement``) is built with
``batch_size`` copies of the prompt and kept; each backward injects one target per batch row at its
read site and position, so a batch of targets costs one backward. The gradient at every source
location, dotted with the source's vector, is that target's row of direct effects.

Logit rows come first. Features are then visited in order of their influence on the logits through
the rows computed so far, re-ranked every ``update_interval`` batches, until ``max_feature_nodes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from raysae.graphs.replacement import PromptState, StackedState, frozen_forward, pad_positions, read_clean
from raysae.graphs.transcoders import TranscoderSet
from raysae.lm.model import LanguageModel


@dataclass
class Targets:
    """A batch of targets: read group (-1 for a logit), position, injected vector ``[n, d]`` and id
    (the index into the active features, or the logit's token id)."""

    groups: Tensor
    positions: Tensor
    vectors: Tensor
    ids: Tensor

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: Tensor | slice) -> Targets:
        return Targets(self.groups[index], self.positions[index], self.vectors[index], self.ids[index])


class AttributionContext:
    """Everything one prompt's attribution needs: the clean state, the active features and their
    vectors, the source vectors and the retained batched frozen pass."""

    def __init__(self, lm: LanguageModel, tc: TranscoderSet, tokens: Tensor, bos_features: bool):
        self.lm, self.tc = lm, tc
        self.state = PromptState.compute(lm, tokens)
        self.n_pos, self.n_layers = self.state.tokens.shape[0], lm.n_layers
        reads = [
            read_clean(lm, self.state, layer, site) for layer, site in zip(tc.layers, tc.sites, strict=True)
        ]
        dev = lm.device
        pre, acts = (t.to(dev) for t in tc.encode(reads))
        if not bos_features:
            acts[:, 0] = 0
        self.pre, self.acts = pre, acts
        idx = acts.nonzero()  # (group, pos, feature), ordered by group, then position, then feature
        self.active = idx
        self.values = acts[idx[:, 0], idx[:, 1], idx[:, 2]].to(lm.dtype)
        self.pre_values = pre[idx[:, 0], idx[:, 1], idx[:, 2]].to(lm.dtype)
        recon = tc.reconstruct(acts.to(tc.device)).to(dev, lm.dtype)
        self.errors = torch.stack([s.mlp_out for s in self.state.layers]).clone()
        for g, layer in enumerate(tc.layers):
            self.errors[layer] -= recon[g]
        self.recon = recon
        self.encoders = torch.zeros(len(idx), lm.d_model, dtype=lm.dtype, device=lm.device)
        for g in range(tc.n_groups):
            rows = (idx[:, 0] == g).nonzero().squeeze(1)
            if len(rows):
                self.encoders[rows] = tc.encoder_vectors(g, idx[rows, 2].to(tc.device)).to(dev, lm.dtype)
        self.blocks = self._decoder_blocks()
        self.pass_: SharedPass | None = None

    @property
    def n_active(self) -> int:
        return len(self.active)

    @property
    def n_columns(self) -> int:
        """Source columns of a row: every active feature, then errors, then tokens."""
        return self.n_active + (self.n_layers + 1) * self.n_pos

    def _decoder_blocks(self) -> list[tuple[int, int, Tensor, Tensor]]:
        """(model layer, position, source columns, activation × decoder ``[n, d]``) per written MLP
        output and position: one matmul per block turns that gradient into feature edges."""
        blocks = []
        g_of, pos_of, f_of = self.active.unbind(1)
        for j, layer in enumerate(self.tc.layers):
            sources = [g for g in range(j + 1) if j in self.tc.targets_of(g)]
            for p in range(self.n_pos):
                cols = ((pos_of == p) & torch.isin(g_of, torch.tensor(sources, device=g_of.device))).nonzero()
                cols = cols.squeeze(1)
                if not len(cols):
                    continue
                vecs = torch.cat(
                    [
                        self.tc.decoder_vectors(g, j, f_of[cols[g_of[cols] == g]].to(self.tc.device))
                        for g in sources
                    ]
                ).to(self.lm.device, self.lm.dtype)
                order = torch.cat([cols[g_of[cols] == g] for g in sources])
                blocks.append((layer, p, order, vecs * self.values[order, None]))
        return blocks

    def logit_targets(self, max_n_logits: int, desired_prob: float) -> tuple[Tensor, Tensor, Targets]:
        """(token ids, probabilities, targets): the most probable next tokens until ``desired_prob``."""
        probs = torch.softmax(self.state.logits[-1].double(), -1)
        top = probs.topk(min(max_n_logits, probs.shape[0]))
        cutoff = int(torch.searchsorted(top.values.cumsum(0), torch.tensor(desired_prob).double())) + 1
        ids, p = top.indices[:cutoff], top.values[:cutoff]
        w_u = self.lm.hf_model.lm_head.weight.T  # [d_model, vocab]
        vecs = (w_u[:, ids] - w_u.mean(1, keepdim=True)).T
        n = len(ids)
        positions = torch.full((n,), self.n_pos - 1, device=ids.device)
        return (
            ids,
            p.to(self.lm.dtype),
            Targets(torch.full((n,), -1, device=ids.device), positions, vecs, ids),
        )

    def feature_targets(self, index: Tensor) -> Targets:
        return Targets(self.active[index, 0], self.active[index, 1], self.encoders[index], index)

    def build_pass(self, batch: int) -> None:
        """The retained frozen pass with ``batch`` copies of the prompt, sources as leaves."""
        self.pass_ = SharedPass([self], [batch])

    def rows(self, targets: Targets, retain: bool = True) -> Tensor:
        """Direct-effect rows ``[n, n_columns]`` of up to ``batch`` targets, in one backward."""
        assert self.pass_ is not None, "build_pass first"
        return self.pass_.rows({0: targets}, retain)[0]

    def rows_from_grads(self, g_embed: Tensor, g_mlp: list[Tensor]) -> Tensor:
        """Rows ``[n, n_columns]`` from the gradients at this prompt's sources (``[n, T, d]`` each): a
        feature's edge is its activation × decoder · gradient where it writes, an error's is its
        vector · gradient, a token's is its embedding · gradient."""
        n = g_embed.shape[0]
        row = torch.zeros(n, self.n_columns, dtype=self.lm.dtype, device=self.lm.device)
        for layer, p, cols, vecs in self.blocks:
            row.index_add_(1, cols, g_mlp[layer][:, p] @ vecs.T)
        errs = torch.einsum("lbtd,ltd->blt", torch.stack(g_mlp), self.errors)
        start = self.n_active
        row[:, start : start + self.n_layers * self.n_pos] = errs.reshape(n, -1)
        row[:, start + self.n_layers * self.n_pos :] = (g_embed * self.state.embed).sum(-1)
        return row

    @torch.no_grad()
    def target_values(self, targets: Targets) -> Tensor:
        """What each target reads in the clean pass: a feature's pre-activation (the dictionary's own
        ``encode_pre``), or a logit minus the mean logit (the model's logits)."""
        logits = self.state.logits[-1]
        is_logit = targets.groups < 0
        out = torch.empty(len(targets.groups), dtype=self.lm.dtype, device=self.lm.device)
        out[is_logit] = (logits[targets.ids[is_logit]] - logits.mean()).to(out.dtype)
        out[~is_logit] = self.pre_values[targets.ids[~is_logit]]
        return out

    @torch.no_grad()
    def bias_values(self, targets: Targets) -> Tensor:
        """Each target's value in the frozen model with every source zeroed: what no edge explains
        (decoder biases, encoder biases, projection biases)."""
        zero = torch.zeros_like(self.state.embed)[None]
        mlp = [zero.clone() for _ in range(self.n_layers)]
        for g, layer in enumerate(self.tc.layers):
            mlp[layer] = self.tc.decoder_bias(g).to(zero).expand_as(zero).clone()
        sites = dict(zip(self.tc.layers, self.tc.sites, strict=True))
        fp = frozen_forward(self.lm, self.state, zero, mlp, sites)
        head_bias = getattr(self.lm.hf_model.lm_head, "bias", None)
        out = torch.empty(len(targets.groups), dtype=self.lm.dtype, device=self.lm.device)
        for i in range(len(targets.groups)):
            g, p, v, k = (
                int(targets.groups[i]),
                int(targets.positions[i]),
                targets.vectors[i],
                int(targets.ids[i]),
            )
            if g < 0:
                out[i] = v @ fp.final_out[0, p]
                if head_bias is not None:
                    out[i] += head_bias[k] - head_bias.mean()
            else:
                b_enc = self.tc.encoder_bias(g, self.active[k, 2:3].to(self.tc.device))[0].to(out)
                out[i] = v @ fp.reads[self.tc.layers[g]][0, p] + b_enc
        return out


class SharedPass:
    """One retained frozen pass whose batch rows are split between prompts (``contexts[i]`` owns
    ``rows[i]`` rows), so that one backward gives direct-effect rows of several prompts' targets.

    Every prompt's rows see only its own frozen state (``StackedState``); the contexts must share the
    model and the transcoder set (one replica's). A single context is the plain per-prompt pass."""

    def __init__(self, contexts: list[AttributionContext], rows: list[int]):
        self.contexts, self.sizes = contexts, rows
        self.starts = [sum(rows[:i]) for i in range(len(rows))]
        lm, tc = contexts[0].lm, contexts[0].tc
        if any(c.lm is not lm or c.tc is not tc for c in contexts):
            raise ValueError("a shared pass needs one model and one transcoder set")
        state = StackedState.stack([c.state for c in contexts], rows)
        self.lm, self.tc, self.n_pos = lm, tc, state.n_pos

        def leaves(per_prompt: list[Tensor]) -> Tensor:
            padded = [
                pad_positions(t, state.n_pos).expand(r, -1, -1) for t, r in zip(per_prompt, rows, strict=True)
            ]
            return torch.cat(padded).clone().requires_grad_(True)

        self.leaf_embed = leaves([c.state.embed for c in contexts])
        self.leaf_mlp = [leaves([c.state.layers[i].mlp_out for c in contexts]) for i in range(lm.n_layers)]
        sites = dict(zip(tc.layers, tc.sites, strict=True))
        with torch.enable_grad():
            self.pass_ = frozen_forward(lm, state, self.leaf_embed, self.leaf_mlp, sites)

    def rows(self, chunks: dict[int, Targets], retain: bool = True) -> dict[int, Tensor]:
        """Rows of each context's targets (``{context index: targets}``, at most its row count each),
        all in one backward."""
        injects: dict[int, Tensor] = {}
        for i, targets in chunks.items():
            if len(targets) > self.sizes[i]:
                raise ValueError(
                    f"{len(targets)} targets in one backward, but the pass holds {self.sizes[i]}"
                )
            rows = self.starts[i] + torch.arange(len(targets), device=targets.groups.device)
            for g in targets.groups.unique().tolist():
                if g not in injects:
                    out = self.pass_.final_out if g < 0 else self.pass_.reads[self.tc.layers[g]]
                    injects[g] = torch.zeros_like(out)
                mask = targets.groups == g
                injects[g][rows[mask], targets.positions[mask]] = targets.vectors[mask].to(injects[g].dtype)
        outputs = [self.pass_.final_out if g < 0 else self.pass_.reads[self.tc.layers[g]] for g in injects]
        inputs = [self.leaf_embed, *self.leaf_mlp]
        got = torch.autograd.grad(
            outputs, inputs, list(injects.values()), retain_graph=retain, allow_unused=True
        )
        zero = torch.zeros_like(self.leaf_embed)
        grads = [x if x is not None else zero for x in got]
        out = {}
        for i, targets in chunks.items():
            a, n, t = self.starts[i], len(targets), self.contexts[i].n_pos
            g_embed, *g_mlp = (g[a : a + n, :t] for g in grads)
            out[i] = self.contexts[i].rows_from_grads(g_embed, g_mlp)
        return out
