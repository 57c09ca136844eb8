"""Settings of the training step: optimiser, schedules, sparsity, dead latents, initialisation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raysae.config.base import StrictModel


class InitializerConfig(StrictModel):
    """How a dictionary is initialised before training, optionally from the first batches of data."""

    decoder_norm: float | None = Field(0.1, gt=0)
    """Norm of every decoder row at init; None keeps the default Kaiming-uniform rows."""
    encoder_as_decoder_transpose: bool = True
    """Initialise W_enc as W_decᵀ (per head/layer), as SAELens, sparsify and Anthropic do."""
    b_dec_init: Literal["zeros", "mean", "geometric_median"] = "geometric_median"
    """Initial decoder bias: zeros, the mean of the labels, or their geometric median."""
    norm_activation: Literal["none", "dataset_wide"] = "dataset_wide"
    """dataset_wide: scale every hook so its mean activation norm is sqrt(d_model); the scale is
    folded back into the weights when saving, so a saved dictionary works on raw activations."""
    init_batches: int = Field(8, ge=1)
    """Batches read at the start to estimate norms and b_dec (they are also trained on)."""
    seed: int = 0
    """Seed for the random parts of the initialisation."""


class TrainerConfig(StrictModel):
    """Optimiser, schedules, sparsity, dead-latent handling, logging and checkpoints of a training run."""

    lr: float = Field(4e-4, gt=0)
    """Peak learning rate of Adam."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    adam_eps: float = Field(1e-8, gt=0)
    """Adam epsilon."""
    lr_warmup_steps: int = Field(0, ge=0)
    """Linear learning-rate warmup from 0 to lr over this many steps."""
    lr_decay_fraction: float = Field(0.2, ge=0, le=1)
    """Final fraction of the run over which the lr decays linearly to lr_end_factor * lr."""
    lr_end_factor: float = Field(0.0, ge=0, le=1)
    """lr at the end of decay, as a fraction of the peak."""
    sparsity_warmup_steps: int = Field(0, ge=0)
    """Linear warmup of the sparsity coefficient from 0 over this many steps."""
    k_anneal_steps: int = Field(0, ge=0)
    """TopK/BatchTopK: anneal k linearly from k_anneal_start down to top_k over this many steps."""
    k_anneal_start: int | None = Field(None, gt=0)
    """Starting k for annealing; None means 4 * top_k (capped at d_sae)."""
    batch_size: int = Field(4096, gt=0)
    """Activation vectors (tokens) per optimiser step, summed over data-parallel workers."""
    total_training_tokens: int = Field(2_000_000, gt=0)
    """Tokens to train on; the number of steps is total_training_tokens // batch_size."""
    grad_clip_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this value; None disables clipping."""
    decoder_norm_mode: Literal["free", "unit", "unit_project_grad"] = "unit_project_grad"
    """free: decoder rows unconstrained (use with decoder-norm-weighted sparsity); unit: renormalise
    rows to norm 1 after each step; unit_project_grad: also remove the gradient parallel to each row."""
    autocast: Literal["off", "bfloat16"] = "off"
    """bfloat16: the encoder's dense product (sparse path) or the whole loss (dense path, torch.autocast)
    in bf16, with fp32 master weights and optimiser; fast on AMX CPUs and tensor-core GPUs."""
    sparse_topk: bool = True
    """TopK/BatchTopK SAEs train on the sparse path (decode and gradients through the k active latents
    only; ``raysae.dictionaries.sparse``, and ``raysae.train.sparse_sharded`` for DTensor-sharded SAEs and
    transcoders); False uses the dense reference. CLTs and CrossCoders always use the dense path."""
    aux_k: int | None = Field(None, gt=0)
    """AuxK: how many dead latents reconstruct the residual; None means d_model // 2. TopK/BatchTopK only."""
    aux_k_coefficient: float = Field(1 / 32, ge=0)
    """Weight of the AuxK loss; 0 disables it."""
    dead_after_tokens: int = Field(1_000_000, gt=0)
    """A latent that has not fired for this many tokens counts as dead (AuxK, dead fraction)."""
    dense_threshold: float = Field(0.1, gt=0, le=1)
    """A latent firing on more than this fraction of tokens counts as dense in the metrics."""
    log_every_steps: int = Field(50, gt=0)
    """Compute and report metrics every this many steps."""
    checkpoint_every_steps: int | None = Field(None, gt=0)
    """Write a resumable checkpoint every this many steps; None writes only the final one."""
    checkpoint_dir: str | None = None
    """Folder for checkpoints; None keeps everything in memory."""
    seed: int = 0
    """Seed for torch's RNG during training."""
    initializer: InitializerConfig = Field(default_factory=InitializerConfig)
    """Data-dependent initialisation (decoder norm, b_dec, activation norm scaling)."""

    @property
    def total_steps(self) -> int:
        return max(1, self.total_training_tokens // self.batch_size)
