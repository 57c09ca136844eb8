"""Settings of a whole training run on Ray: dictionary + trainer + activation source + W&B + resources."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from raysae.config.base import M, StrictModel
from raysae.config.data import ActivationsConfig
from raysae.config.dictionary import CLTConfig, CrossCoderConfig, DictionaryConfig, SAEConfig
from raysae.config.training import TrainerConfig


class WandbConfig(StrictModel):
    """Weights & Biases logging from rank 0. A run never fails for lack of network or key."""

    enabled: bool = True
    """Log to W&B at all."""
    mode: Literal["auto", "online", "offline"] = "auto"
    """auto: online when WANDB_API_KEY is set, else offline (files under WANDB_DIR, sync later)."""
    project: str = "raysae"
    """W&B project name."""
    entity: str | None = None
    """W&B entity (team or user); None uses the key's default."""
    run_name: str | None = None
    """Run name; None lets W&B choose."""


class RayTrainConfig(StrictModel):
    """How training workers are laid out on the Ray cluster."""

    data_parallel_size: int = Field(2, ge=1)
    """Data-parallel replicas of the dictionary (each reads different activation rows)."""
    model_parallel_size: int = Field(1, ge=1)
    """Shards of the latent dimension per replica (DTensor); workers = data × model parallel size."""
    cpus_per_worker: float | None = Field(None, gt=0)
    """CPUs reserved per train worker; None: 0.25 beside a streaming pipeline on a CPU cluster, else 1."""
    use_gpu: bool | Literal["auto"] = "auto"
    """Put each train worker on a GPU; auto: when the cluster has GPUs."""
    address: str | None = None
    """Ray cluster to join (as ray.init's address); None uses RAY_ADDRESS or starts a local cluster."""
    storage_path: str | None = None
    """Where Ray Train persists checkpoints (a shared path or URI on multi-node clusters); None puts
    them under output_dir/ray."""
    max_failures: int = Field(0, ge=-1)
    """Worker-group restarts after a failure, each resuming from the latest checkpoint; -1: unlimited."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many checkpoints Ray Train keeps."""

    @property
    def num_workers(self) -> int:
        return self.data_parallel_size * self.model_parallel_size


class TrainSettings(StrictModel):
    """What every training run needs besides its dictionary config."""

    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    """Optimiser, schedules, sparsity, dead latents, checkpoints."""
    activations: ActivationsConfig = Field(default_factory=ActivationsConfig)
    """Model, text, tokens and pipeline resources for streaming; its hooks are set from the dictionary."""
    cache_path: str | None = None
    """Read activations from this cache (written by `raysae cache`) instead of streaming from the model."""
    shuffle: bool = True
    """Shuffle cached activations (shard order and rows within shards); streaming rows interleave anyway."""
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    """W&B logging."""
    ray: RayTrainConfig = Field(default_factory=RayTrainConfig)
    """Workers, mesh and failure handling."""
    output_dir: str = "runs/train"
    """Folder for the exported dictionary, metrics and (by default) Ray Train's checkpoints."""
    run_name: str = "raysae"
    """Name of the Ray Train run (checkpoints go under storage_path/run_name)."""

    dictionary_field: ClassVar[str] = "sae"

    @property
    def dictionary(self) -> DictionaryConfig:
        """The dictionary config, whichever key (sae, clt, crosscoder) holds it."""
        return getattr(self, self.dictionary_field)

    @model_validator(mode="after")
    def _sync_hooks(self) -> TrainSettings:
        hooks = list(self.dictionary.hooks)  # type: ignore[attr-defined]
        if self.activations.hooks != hooks:
            self.activations = self.activations.model_copy(update={"hooks": hooks})
        if self.trainer.batch_size % self.ray.num_workers:
            raise ValueError(
                f"trainer.batch_size={self.trainer.batch_size} is not divisible by the "
                f"{self.ray.num_workers} train workers (data_parallel_size × model_parallel_size)"
            )
        return self


class TrainSAESettings(TrainSettings):
    """Train an SAE or a transcoder."""

    sae: SAEConfig = Field(default_factory=SAEConfig)
    """The SAE or transcoder."""
    dictionary_field: ClassVar[str] = "sae"


class TrainCLTSettings(TrainSettings):
    """Train a cross-layer transcoder."""

    clt: CLTConfig = Field(default_factory=CLTConfig)
    """The cross-layer transcoder."""
    dictionary_field: ClassVar[str] = "clt"


class TrainCrossCoderSettings(TrainSettings):
    """Train a CrossCoder."""

    crosscoder: CrossCoderConfig = Field(default_factory=CrossCoderConfig)
    """The CrossCoder."""
    dictionary_field: ClassVar[str] = "crosscoder"


AnyTrainSettings = TrainSAESettings | TrainCLTSettings | TrainCrossCoderSettings


def train_settings_from_dict(data: dict) -> AnyTrainSettings:
    """Pick the settings class by which dictionary key (sae, clt, crosscoder) the dict holds."""
    keys = [k for k in ("sae", "clt", "crosscoder") if k in data]
    if len(keys) != 1:
        raise ValueError(
            f"a training config needs exactly one of sae, clt, crosscoder; found {keys or 'none'}"
        )
    cls = {"sae": TrainSAESettings, "clt": TrainCLTSettings, "crosscoder": TrainCrossCoderSettings}[keys[0]]
    return cls.model_validate(data)


def shared_sections() -> dict[str, object]:
    """Top-level sections one settings file may hold for several commands, and their types: the
    training settings (all three dictionary kinds), ``cache``, ``analysis``, ``graphs`` and ``autointerp``.

    ``raysae cache`` and ``raysae analyze`` read their own sections of a file that may also configure
    training; the other sections are validated as their command would, and any other key is an error.
    """
    from raysae.config.analysis import AnalysisConfig
    from raysae.config.autointerp import AutointerpConfig
    from raysae.config.data import CacheConfig
    from raysae.config.graphs import GraphConfig

    out: dict[str, object] = {
        "cache": CacheConfig,
        "analysis": AnalysisConfig,
        "graphs": GraphConfig,
        "autointerp": AutointerpConfig,
    }
    for cls in (TrainSAESettings, TrainCLTSettings, TrainCrossCoderSettings):
        for name, field in cls.model_fields.items():
            out.setdefault(name, field.annotation)
    return out


def check_other_sections(data: dict, path: str, own: tuple[str, ...]) -> None:
    """Validate the sections of ``data`` outside ``own`` (see ``shared_sections``); ``ConfigError``
    names an unknown key or the field of a bad value."""
    from pydantic import TypeAdapter, ValidationError

    from raysae.config.base import ConfigError, format_validation_error

    others = {k: v for k, v in shared_sections().items() if k not in own}
    unknown = [k for k in data if k not in own and k not in others]
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {', '.join(map(repr, unknown))}; this file holds "
            f"{', '.join(own)}, and may hold the sections of other commands ({', '.join(sorted(others))})"
        )
    for key in (k for k in data if k in others):
        try:
            TypeAdapter(others[key]).validate_python(data[key])
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, f"{path}: {key}")) from err


def load_section(path: str, section: str, model: type[M], overrides: dict | None = None) -> M:
    """``model`` from ``path``: the whole file, or its ``section`` (the file's other sections are then
    validated as their commands would); ``overrides`` (nested dicts merge) win over the file."""
    from pydantic import ValidationError

    from raysae.config.base import ConfigError, format_validation_error, read_config_file

    data = read_config_file(path)
    if section in data:
        check_other_sections(data, str(path), (section,))
        data = data[section]
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: {section} must be a mapping, got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from err
