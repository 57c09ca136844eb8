"""Attribution graphs on the bundled SmolLM2: seconds per graph vs prompt length and max_feature_nodes,
and targets per backward (one at a time vs batched).

    .venv/bin/python benchmarks/graphs.py --layers 0 1 2 3 --d-sae 2048 --lengths 8 16 32 --nodes 64 256

``--dictionary FOLDER`` attributes through a saved transcoder (e.g. the CLT of
jobs/configs/clt_all_layers.yaml) instead. Otherwise the transcoder is a randomly initialised CLT (``build_dictionary``; TopK, nothing trained) on the
given layers, reading ``ln2.hook_out``; the other layers are pure error nodes. With random features the
scores say little about a real transcoder; the timings and node/edge counts are what this measures.
Prints one table row per run, then targets per backward (one vs batched), then prompts sharing one
pass (``compute_graphs`` with 1, 2, 4, ... prompts per pass: graphs per second, the ratio to one at a
time, and the largest difference of any adjacency from the one-at-a-time graph), then the Ray job
(``raysae.graphs.job.run_graphs``) over ``--job-prompts`` prompts with 1 and 2 replicas: prompts per
second and the ratio (on a machine with fewer free cores than replicas the ratio stays near 1: the
graphs are compute-bound).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from raysae.config.data import ModelConfig
from raysae.config.graphs import GraphConfig
from raysae.dictionaries import build_dictionary
from raysae.graphs.attribution import AttributionContext
from raysae.graphs.compute import compute_graph, compute_graphs
from raysae.graphs.job import run_graphs
from raysae.graphs.transcoders import TranscoderSet
from raysae.lm.model import LanguageModel

TEXT = (
    "The capital of the state containing Dallas is Austin, and the capital of France is Paris. "
    "Every morning the baker opens the shop before sunrise and sells fresh bread to the neighbours"
)


def random_clt(lm: LanguageModel, layers: list[int], d_sae: int, k: int, seed: int = 0) -> TranscoderSet:
    torch.manual_seed(seed)
    clt = build_dictionary(
        {
            "architecture": "clt",
            "d_model": lm.d_model,
            "d_sae": d_sae,
            "act_fn": "topk",
            "top_k": k,
            "hook_points_in": [f"blocks.{i}.ln2.hook_out" for i in layers],
            "hook_points_out": [f"blocks.{i}.hook_mlp_out" for i in layers],
        },
        device=lm.device,
    )
    return TranscoderSet(clt, lm.n_layers)


def prompt_of(lm: LanguageModel, n_tokens: int) -> torch.Tensor:
    ids = lm.to_tokens(TEXT)[0]
    if n_tokens > len(ids):
        raise SystemExit(f"the benchmark text has {len(ids)} tokens; ask for at most that many")
    return ids[:n_tokens]


def per_backward(lm: LanguageModel, tc: TranscoderSet, tokens: torch.Tensor, n: int, batch: int) -> float:
    """Seconds per target for ``n`` feature targets, ``batch`` per backward."""
    ctx = AttributionContext(lm, tc, tokens, bos_features=False)
    index = torch.arange(min(n, ctx.n_active), device=ctx.active.device)
    ctx.build_pass(batch)
    start = time.perf_counter()
    for s in range(0, len(index), batch):
        ctx.rows(ctx.feature_targets(index[s : s + batch]))
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / max(1, len(index))


def shared_rate(
    lm: LanguageModel, tc: TranscoderSet, prompts: list[str], per_pass: list[int], cfg: GraphConfig
) -> None:
    """Graphs per second with ``k`` prompts per pass for each k, checked against k = 1."""
    reference, base = None, None
    print("prompts_per_pass  graphs  seconds  graphs/s  ratio  max|Δadjacency|")
    for k in per_pass:
        start = time.perf_counter()
        graphs = []
        for i in range(0, len(prompts), k):
            graphs += compute_graphs(lm, tc, prompts[i : i + k], cfg, "bench")
        seconds = time.perf_counter() - start
        bad = [g for g in graphs if not hasattr(g, "adjacency")]
        if bad:
            raise SystemExit(f"prompts_per_pass {k}: {bad[0]}")
        reference = reference or graphs
        diff = max(
            float((g.adjacency - r.adjacency).abs().max()) for g, r in zip(graphs, reference, strict=True)
        )
        rate = len(graphs) / seconds
        base = base or rate
        print(f"{k:16d}  {len(graphs):6d}  {seconds:7.1f}  {rate:8.3f}  {rate / base:5.2f}  {diff:.1e}")


def job_rate(
    lm: LanguageModel, tc: TranscoderSet, n_prompts: int, n_tokens: int, replicas: list[int]
) -> None:
    """Prompts per second of the Ray graphs job with each replica count, on the same prompts."""
    import ray

    from raysae.dictionaries import save_dictionary
    from raysae.ray_session import ensure_ray

    words = TEXT.split()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clt"
        save_dictionary(tc.dictionaries[0], folder)
        prompts = Path(tmp) / "prompts.jsonl"
        lines = [" ".join(words[i % 7 : i % 7 + n_tokens // 2]) for i in range(n_prompts)]
        prompts.write_text("".join(json.dumps({"id": i, "prompt": t}) + "\n" for i, t in enumerate(lines)))
        started = ensure_ray(None)
        try:
            rates = {}
            for r in replicas:
                cfg = GraphConfig(
                    dictionaries=[str(folder)],
                    prompts=str(prompts),
                    output_dir=str(Path(tmp) / f"out{r}"),
                    max_feature_nodes=256,
                    batch_size=64,
                    replicas=r,
                    cpus_per_replica=max(0.5, (ray.cluster_resources().get("CPU", 2) - 0.5) / r),
                    memory_budget_gb=64,
                )
                res = run_graphs(cfg, use_ray=True)
                rates[r] = len(res.graph_ids) / res.seconds
                print(
                    f"  ray job, {r} replica(s): {len(res.graph_ids)} graphs in {res.seconds:.1f} s = {rates[r]:.3f} prompts/s (model load included)"
                )
            base = rates[replicas[0]]
            print("  ratio to 1 replica: " + ", ".join(f"{r}: {rates[r] / base:.2f}x" for r in replicas))
        finally:
            if started:
                ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--top-k", type=int, default=16)
    p.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--nodes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy host)"
    )
    p.add_argument("--dictionary", default=None, help="a saved transcoder folder instead of a random CLT")
    p.add_argument("--shared-prompts", type=int, default=8, help="prompts of the shared-pass part (0 skips)")
    p.add_argument("--per-pass", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--shared-nodes", type=int, default=256, help="max_feature_nodes of the shared-pass part")
    p.add_argument(
        "--skip-table", action="store_true", help="skip the per-length table and per-backward part"
    )
    p.add_argument("--job-prompts", type=int, default=8, help="prompts of the Ray job part (0 skips it)")
    p.add_argument("--job-replicas", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = LanguageModel.from_config(ModelConfig(device=args.device))
    if args.dictionary:
        from raysae.dictionaries import load_dictionary

        tc = TranscoderSet(load_dictionary(args.dictionary, device=lm.device), lm.n_layers)
        print(f"{lm.name} on {lm.device}; transcoder {args.dictionary} on layers {tc.layers}")
    else:
        tc = random_clt(lm, args.layers, args.d_sae, args.top_k)
        print(
            f"{lm.name} on {lm.device}; random CLT on layers {args.layers}, d_sae={args.d_sae}, top_k={args.top_k}"
        )
    if args.shared_prompts:
        words = TEXT.split()
        n = args.lengths[0] // 2
        prompts = [" ".join(words[(3 * i) % 20 : (3 * i) % 20 + n]) for i in range(args.shared_prompts)]
        cfg = GraphConfig(max_feature_nodes=args.shared_nodes, batch_size=args.batch, memory_budget_gb=64)
        print(f"prompts sharing a pass ({len(prompts)} prompts of ~{n} words, batch {args.batch}):")
        shared_rate(lm, tc, prompts, args.per_pass, cfg)
    table_lengths = [] if args.skip_table else args.lengths
    header = "tokens  max_nodes  features  nodes  edges  pruned_nodes  pruned_edges  repl  compl  p_repl  p_compl  seconds"
    if table_lengths:
        print(header)
    for n_tokens in table_lengths:
        tokens = prompt_of(lm, n_tokens)
        for max_nodes in args.nodes:
            cfg = GraphConfig(max_feature_nodes=max_nodes, batch_size=args.batch, memory_budget_gb=64)
            compute_graph(lm, tc, tokens, cfg, "random-clt") if n_tokens == args.lengths[
                0
            ] and max_nodes == args.nodes[0] else None
            g = compute_graph(lm, tc, tokens, cfg, "random-clt")
            r, s = g.prune_result, g.scores
            print(
                f"{n_tokens:6d}  {max_nodes:9d}  {g.layout.n_features:8d}  {g.layout.n_nodes:5d}  "
                f"{int((g.adjacency != 0).sum()):5d}  {int(r.node_mask.sum()):12d}  {int(r.edge_mask.sum()):12d}  "
                f"{s['replacement_score']:.3f}  {s['completeness_score']:.3f}  {s['pruned_replacement_score']:.3f}  "
                f"{s['pruned_completeness_score']:.3f}  {g.seconds:7.2f}"
            )
    if table_lengths:
        tokens = prompt_of(lm, args.lengths[-1])
        n = args.batch * 2
        one = per_backward(lm, tc, tokens, n, 1)
        many = per_backward(lm, tc, tokens, n, args.batch)
        print(f"targets per backward ({args.lengths[-1]} tokens, {n} feature targets): ")
        print(
            f"  1 per backward: {one * 1e3:.2f} ms/target; {args.batch} per backward: {many * 1e3:.2f} ms/target "
            f"({one / many:.1f}x)"
        )
    if args.job_prompts:
        print(f"ray job over {args.job_prompts} prompts:")
        job_rate(lm, tc, args.job_prompts, args.lengths[0], args.job_replicas)


if __name__ == "__main__":
    main()
