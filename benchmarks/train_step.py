"""Training-step throughput of a TopK SAE: raysae's dense and sparse paths against EleutherAI sparsify and
SAELens, and a plain dense torch step, interleaved in one run on the same config.

    .venv/bin/python benchmarks/train_step.py [--d-model 576] [--latents 9216] [--k 32] [--batch 4096]
        [--steps 3] [--rounds 3] [--no-peers]

With CUDA (and triton), two more rows time the sparse path on the GPU: the torch CSR functions and the
fused Triton decode (``raysae.dictionaries.sparse_triton``), forced by ``RAYSAE_SPARSE_KERNEL``.

A step is forward + backward + Adam (plus each library's own decoder-norm handling). The peers are
installed on first use, each in its own virtual environment under ``$RAYSAE_HOME/peers`` (CPU torch
pinned first); they are never dependencies of raysae and none of their code is used by it. Rounds
interleave every variant so machine noise hits all alike; the table shows the median of the rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from raysae.config import SAEConfig, TrainerConfig
from raysae.dictionaries import build_dictionary
from raysae.home import raysae_home
from raysae.train import Trainer

TORCH_PIN = f"torch=={torch.__version__.split('+')[0]}"
PEERS = {"sparsify": "eai-sparsify", "saelens": "sae-lens"}
# Each peer script times `steps` steps after one warm-up and prints the mean seconds per step.
PEER_SCRIPTS = {
    "sparsify": """
import json, sys, time, torch
from sparsify import SparseCoder, SparseCoderConfig
d, s, k, b, steps, threads = map(int, sys.argv[1:7])
torch.set_num_threads(threads); torch.manual_seed(0)
sae = SparseCoder(d, SparseCoderConfig(num_latents=s, k=k))
opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
x = torch.randn(b, d)
def step():
    out = sae(x)
    out.fvu.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    opt.step(); opt.zero_grad(set_to_none=True)
    sae.set_decoder_norm_to_unit_norm()
step(); t0 = time.perf_counter()
for _ in range(steps): step()
print(json.dumps({"s_per_step": (time.perf_counter() - t0) / steps}))
""",
    "saelens": """
import json, sys, time, torch
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
d, s, k, b, steps, threads = map(int, sys.argv[1:7])
torch.set_num_threads(threads); torch.manual_seed(0)
sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=s, k=k, device="cpu"))
opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
x = torch.randn(b, d)
def step():
    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                   n_training_steps=0, is_logging_step=False))
    out.loss.backward()
    opt.step(); opt.zero_grad(set_to_none=True)
step(); t0 = time.perf_counter()
for _ in range(steps): step()
print(json.dumps({"s_per_step": (time.perf_counter() - t0) / steps}))
""",
}


def peer_python(name: str) -> Path:
    """The peer's virtual environment, created and installed on first use."""
    venv = raysae_home() / "peers" / name
    python = venv / "bin" / "python"
    if not (venv / ".installed").is_file():
        print(f"installing {PEERS[name]} into {venv} (first use only) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "-q", "--disable-pip-version-check", "install"]
        subprocess.run([*pip, TORCH_PIN], check=True)  # CPU torch first, as scripts/setup.sh does
        subprocess.run([*pip, PEERS[name]], check=True)
        (venv / ".installed").write_text(PEERS[name])
    return python


def time_peer(name: str, args: argparse.Namespace) -> float:
    argv = [args.d_model, args.latents, args.k, args.batch, args.steps, torch.get_num_threads()]
    done = subprocess.run(
        [str(peer_python(name)), "-c", PEER_SCRIPTS[name], *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["s_per_step"]


def timed(fn, steps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def raysae_step(
    args: argparse.Namespace,
    sparse: bool,
    auxk: bool,
    bf16: bool = False,
    device: str = "cpu",
    dead_every: int = 2,
):
    """A bound Trainer whose step the benchmark calls (with ``auxk``, one latent in ``dead_every``
    dead at every step: AuxK's cost grows with the dead latents up to k_aux = d_model / 2 per row)."""
    torch.manual_seed(0)
    cfg = SAEConfig(d_model=args.d_model, d_sae=args.latents, act_fn="topk", top_k=args.k)
    sae = build_dictionary(cfg).to(device)
    cfg = TrainerConfig(
        batch_size=args.batch,
        total_training_tokens=args.batch * 10**6,
        sparse_topk=sparse,
        autocast="bfloat16" if bf16 else "off",
        aux_k_coefficient=1 / 32 if auxk else 0.0,
        dead_after_tokens=10**12,
    )
    trainer = Trainer(cfg, progress=False)
    x = torch.randn(args.batch, args.d_model, device=device)
    trainer.initialize(sae, [x])
    trainer.setup(sae)
    if not auxk:
        return lambda: trainer.step(x)
    tsf = trainer.state.tokens_since_fired

    def step():
        tsf[::dead_every] = 10**13  # these latents dead at every step
        out = trainer.step(x)
        assert float(out.parts["aux_k"]) > 0, "AuxK did not run"
        return out

    return step


def cuda_sparse_step(args: argparse.Namespace, kernel: str):
    """The sparse step on the GPU with ``sparse_decode`` forced to ``kernel`` (torch or triton); it
    synchronizes so that the timer sees the kernels, not their launch."""
    step = raysae_step(args, sparse=True, auxk=False, device="cuda")

    def run():
        before = os.environ.get("RAYSAE_SPARSE_KERNEL")
        os.environ["RAYSAE_SPARSE_KERNEL"] = kernel
        try:
            step()
            torch.cuda.synchronize()
        finally:
            if before is None:
                del os.environ["RAYSAE_SPARSE_KERNEL"]
            else:
                os.environ["RAYSAE_SPARSE_KERNEL"] = before

    return run


def plain_dense_step(args: argparse.Namespace):
    """Six matmuls of a dense TopK SAE step + Adam, the floor of any dense implementation."""
    d, s, b = args.d_model, args.latents, args.batch
    W_enc = torch.randn(d, s, requires_grad=True)
    W_dec = torch.randn(s, d, requires_grad=True)
    opt = torch.optim.Adam([W_enc, W_dec])
    x = torch.randn(b, d)

    def step():
        pre = x @ W_enc
        z = pre * (pre >= pre.topk(args.k, dim=-1).values[:, -1:]).to(pre.dtype)
        ((z @ W_dec - x).pow(2).sum(-1).mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=576)
    ap.add_argument("--latents", type=int, default=9216)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-peers", action="store_true", help="raysae and the plain step only")
    args = ap.parse_args()
    variants = {
        "plain dense torch step": plain_dense_step(args),
        "raysae dense": raysae_step(args, sparse=False, auxk=False),
        "raysae dense + AuxK": raysae_step(args, sparse=False, auxk=True),
        "raysae sparse": raysae_step(args, sparse=True, auxk=False),
        "raysae sparse + AuxK": raysae_step(args, sparse=True, auxk=True),
        "raysae sparse + AuxK 5% dead": raysae_step(args, sparse=True, auxk=True, dead_every=20),
        "raysae sparse bf16": raysae_step(args, sparse=True, auxk=False, bf16=True),
    }
    if torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
        variants["raysae sparse cuda torch"] = cuda_sparse_step(args, "torch")
        variants["raysae sparse triton"] = cuda_sparse_step(args, "triton")
    peers = [] if args.no_peers else list(PEERS)
    times: dict[str, list[float]] = {name: [] for name in [*variants, *peers]}
    for r in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn, args.steps))
        for name in peers:
            times[name].append(time_peer(name, args))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    med = {name: statistics.median(t) for name, t in times.items()}
    ref = med.get("sparsify", med["raysae dense"])
    ref_name = "sparsify" if "sparsify" in med else "raysae dense"
    print(
        f"threads={torch.get_num_threads()}  d_model={args.d_model}  latents={args.latents}  k={args.k}  "
        f"batch={args.batch}  fp32, forward+backward+Adam; median of {args.rounds} interleaved rounds"
    )
    print(f"{'variant':<30}{'s/step':>9}{'tokens/s':>11}  {'vs ' + ref_name:>15}")
    for name, s in med.items():
        print(f"{name:<30}{s:>9.3f}{args.batch / s:>11.0f}  {ref / s:>15.2f}")
    for name, dead in (("raysae sparse + AuxK", "50%"), ("raysae sparse + AuxK 5% dead", "5%")):
        aux = med[name] / med["raysae sparse"]
        print(f"AuxK cost on the sparse path, {dead} of the latents dead: {aux:.2f}x the step without it")


if __name__ == "__main__":
    main()
