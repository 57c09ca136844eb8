"""Settings of the sparse dictionaries: SAE/transcoder, cross-layer transcoder, CrossCoder."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, model_validator

from raysae.config.base import StrictModel

ActFn = Literal["relu", "topk", "batchtopk", "jumprelu"]
DType = Literal["float32", "bfloat16", "float16", "float64"]


class DictionaryConfig(StrictModel):
    """Settings shared by every sparse dictionary architecture."""

    d_model: int = Field(576, gt=0)
    """Width of the activations the dictionary reads and writes (576 for SmolLM2-135M)."""
    expansion_factor: float | None = Field(8.0, gt=0)
    """Latents per input dimension; d_sae = round(expansion_factor * d_model) unless d_sae is set."""
    d_sae: int | None = Field(None, gt=0)
    """Number of latents. Overrides expansion_factor when set."""
    act_fn: ActFn = "topk"
    """Activation function: relu (with an L1 penalty), topk, batchtopk or jumprelu."""
    top_k: int = Field(32, gt=0)
    """k for topk/batchtopk: active latents per token (batchtopk: on average over the batch)."""
    glu_encoder: bool = False
    """Gate the encoder pre-activations with sigmoid(W_glu x + b_glu) (a GLU encoder)."""
    sparsity_penalty: Literal["l1", "tanh", "l0"] = "l1"
    """Sparsity term: decoder-norm-weighted l1 (relu), tanh of it, or l0 with a straight-through
    estimator (jumprelu). Ignored for topk/batchtopk, whose sparsity is structural."""
    sparsity_coefficient: float = Field(5.0, ge=0)
    """Weight of the sparsity term in the loss (after sparsity warmup)."""
    tanh_scale: float = Field(4.0, gt=0)
    """c in tanh(c * |z| * ||W_dec||) for the tanh sparsity penalty."""
    jumprelu_threshold_init: float = Field(0.001, gt=0)
    """Initial JumpReLU threshold (the same for every latent)."""
    jumprelu_bandwidth: float = Field(0.001, gt=0)
    """Width of the rectangle kernel of the JumpReLU straight-through estimator."""
    batchtopk_threshold_momentum: float = Field(0.99, gt=0, lt=1)
    """Momentum of the running estimate of the BatchTopK inference threshold."""
    dtype: DType = "float32"
    """Parameter dtype. (The device is placement, not identity: ``build_dictionary``/``load_dictionary``
    take it.)"""

    @model_validator(mode="after")
    def _check_width(self) -> DictionaryConfig:
        if self.d_sae is None and self.expansion_factor is None:
            raise ValueError("set d_sae or expansion_factor")
        if self.act_fn in ("topk", "batchtopk") and self.top_k > self.latent_count:
            raise ValueError(f"top_k={self.top_k} exceeds d_sae={self.latent_count}")
        if self.act_fn == "relu" and self.sparsity_penalty == "l0":
            raise ValueError("sparsity_penalty 'l0' needs act_fn 'jumprelu' (its threshold gives the STE)")
        return self

    @property
    def latent_count(self) -> int:
        """The number of latents, resolved from d_sae or expansion_factor."""
        if self.d_sae is not None:
            return self.d_sae
        return round(self.expansion_factor * self.d_model)  # type: ignore[operator]


class SAEConfig(DictionaryConfig):
    """A sparse autoencoder (hook_point_out = hook_point_in) or a transcoder (they differ)."""

    architecture: Literal["sae", "transcoder"] = "sae"
    """Registry name: "sae" reconstructs its input; "transcoder" predicts hook_point_out from hook_point_in."""
    hook_point_in: str = "blocks.6.hook_resid_post"
    """Hook whose activations are encoded (TransformerLens naming)."""
    hook_point_out: str | None = None
    """Hook whose activations are predicted; None means the same as hook_point_in."""
    apply_decoder_bias_to_pre_encoder: bool = True
    """Subtract b_dec from the input before encoding (SAEs only; a transcoder's b_dec lives in output space)."""

    @model_validator(mode="after")
    def _check_hooks(self) -> SAEConfig:
        out = self.hook_point_out or self.hook_point_in
        if self.architecture == "transcoder" and out == self.hook_point_in:
            raise ValueError("a transcoder needs hook_point_out different from hook_point_in")
        if self.architecture == "sae" and out != self.hook_point_in:
            raise ValueError("an sae reconstructs its input: use architecture 'transcoder' for in != out")
        return self

    @property
    def output_hook(self) -> str:
        return self.hook_point_out or self.hook_point_in

    @property
    def hooks(self) -> list[str]:
        return list(dict.fromkeys([self.hook_point_in, self.output_hook]))


class CLTConfig(DictionaryConfig):
    """A cross-layer transcoder: one encoder per layer, a decoder from layer i to every layer j >= i."""

    architecture: Literal["clt"] = "clt"
    """Registry name."""
    hook_points_in: list[str] = Field(default_factory=lambda: [f"blocks.{i}.hook_mlp_in" for i in range(4)])
    """Input hook of each layer, in layer order (e.g. blocks.L.hook_mlp_in)."""
    hook_points_out: list[str] = Field(default_factory=lambda: [f"blocks.{i}.hook_mlp_out" for i in range(4)])
    """Output hook of each layer, in the same order (e.g. blocks.L.hook_mlp_out)."""

    @model_validator(mode="after")
    def _check_layers(self) -> CLTConfig:
        if not self.hook_points_in:
            raise ValueError("hook_points_in is empty")
        if len(self.hook_points_in) != len(self.hook_points_out):
            raise ValueError(
                f"hook_points_in has {len(self.hook_points_in)} layers but hook_points_out has "
                f"{len(self.hook_points_out)}"
            )
        return self

    @property
    def n_layers(self) -> int:
        return len(self.hook_points_in)

    @property
    def hooks(self) -> list[str]:
        return list(dict.fromkeys([*self.hook_points_in, *self.hook_points_out]))


class CrossCoderConfig(DictionaryConfig):
    """A crosscoder: several heads (hook points, layers, checkpoints or models) share one latent space."""

    architecture: Literal["crosscoder"] = "crosscoder"
    """Registry name."""
    hook_points: list[str] = Field(default_factory=lambda: [f"blocks.{i}.hook_resid_post" for i in (3, 4, 5)])
    """One hook per head; each head has its own encoder and decoder."""

    @model_validator(mode="after")
    def _check_heads(self) -> CrossCoderConfig:
        if len(self.hook_points) < 2:
            raise ValueError("a crosscoder needs at least two hook_points")
        if len(set(self.hook_points)) != len(self.hook_points):
            raise ValueError("hook_points must be distinct")
        return self

    @property
    def n_heads(self) -> int:
        return len(self.hook_points)

    @property
    def hooks(self) -> list[str]:
        return list(self.hook_points)


AnyDictionaryConfig = Annotated[SAEConfig | CLTConfig | CrossCoderConfig, Field(discriminator="architecture")]
_DICTIONARY_ADAPTER: TypeAdapter[SAEConfig | CLTConfig | CrossCoderConfig] = TypeAdapter(AnyDictionaryConfig)


def dictionary_config_from_dict(data: dict[str, Any]) -> SAEConfig | CLTConfig | CrossCoderConfig:
    """Build the right dictionary config class from a dict holding an ``architecture`` key."""
    return _DICTIONARY_ADAPTER.validate_python({"architecture": "sae", **data})
