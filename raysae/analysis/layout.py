"""Which features a dictionary has and how they are numbered during analysis: a frozen snapshot.

Analysis numbers every feature of a dictionary with one flat index ``g = group * d_sae + index``; the
dictionary class says what its groups are (``SparseDictionary.n_groups``, ``group_hook``,
``group_layer``). ``FeatureLayout`` copies those answers into a small picklable value that travels with
partial results and documents, so nothing downstream needs the dictionary or its architecture name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raysae.dictionaries import SparseDictionary


@dataclass(frozen=True)
class FeatureLayout:
    """The flat feature numbering of one dictionary.

    ``group_hooks``/``group_layers`` come from the dictionary (``of``). A layout built by hand without
    them (fixtures) reads them off its shape: several groups are layers reading ``hooks_in[group]``; one
    group over several inputs is a shared latent space stored under ``"+".join(hooks_in)``.
    """

    architecture: str
    hooks_in: tuple[str, ...]
    hooks_out: tuple[str, ...]
    d_sae: int
    groups: int
    group_hooks: tuple[str, ...] = field(default=())
    group_layers: tuple[int | None, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.group_hooks:
            hooks = self.hooks_in[: self.groups] if self.groups > 1 else ("+".join(self.hooks_in),)
            object.__setattr__(self, "group_hooks", tuple(hooks))
        if not self.group_layers:
            layers = tuple(range(self.groups)) if self.groups > 1 else (None,)
            object.__setattr__(self, "group_layers", layers)
        if len(self.group_hooks) != self.groups or len(self.group_layers) != self.groups:
            raise ValueError(
                f"a layout of {self.groups} groups needs that many group hooks and layers, got "
                f"{len(self.group_hooks)} and {len(self.group_layers)}"
            )

    @classmethod
    def of(cls, dictionary: SparseDictionary) -> FeatureLayout:
        groups = range(dictionary.n_groups)
        return cls(
            architecture=dictionary.cfg.architecture,
            hooks_in=tuple(dictionary.hooks_in),
            hooks_out=tuple(dictionary.hooks_out),
            d_sae=dictionary.d_sae,
            groups=dictionary.n_groups,
            group_hooks=tuple(dictionary.group_hook(g) for g in groups),
            group_layers=tuple(dictionary.group_layer(g) for g in groups),
        )

    @property
    def n_features(self) -> int:
        return self.groups * self.d_sae

    @property
    def layers(self) -> int | None:
        """The layer count of a layered dictionary (a CLT); None otherwise."""
        return None if all(layer is None for layer in self.group_layers) else self.groups

    def hook(self, group: int) -> str:
        """The stored ``hook`` of the features of ``group`` (a CLT layer; 0 otherwise)."""
        return self.group_hooks[group]

    def layer(self, group: int) -> int | None:
        """The layer (position in hooks_in) of ``group`` for a layered dictionary; None otherwise."""
        return self.group_layers[group]

    def hooks(self) -> list[str]:
        """Every stored hook of this dictionary, in group order."""
        return list(self.group_hooks)
