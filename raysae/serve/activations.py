"""Text → most active features, steering and nearest features: the model deployment's work on a
language model and a saved dictionary.

``FeatureActivations`` is plain Python (usable and testable without Serve); ``ActivationModel`` wraps it
as a Serve deployment so that model forwards never hold up the ingress's store lookups. Loaded models
and dictionaries stay cached in the replica (LRU); forward passes run one at a time per replica.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ray import serve

from raysae.config.serve import ServeConfig
from raysae.errors import RaysaeError


class RequestError(RaysaeError):
    """A request the model deployment cannot answer; ``status`` is the HTTP status to reply with."""

    def __init__(self, status: int, detail: str):
        super().__init__(status, detail)
        self.status = status
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.status}: {self.detail}"


def feature_of(flat_index: int, dictionary: Any) -> tuple[str, int]:
    """(hook, index) of a latent by its flat index in ``dictionary.encode_flat``'s output, as the
    analysis job stores it: (``dictionary.group_hook(group)``, index within the group). A snapshot with
    ``hook(group)`` instead (analysis's FeatureLayout) works too, without serve importing it."""
    group, index = divmod(flat_index, dictionary.d_sae)
    hook_of = getattr(dictionary, "group_hook", None) or dictionary.hook
    return hook_of(group), index


class FeatureActivations:
    """Cached models and dictionaries, and the per-token top-n computation."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._dictionaries: OrderedDict[tuple[str, int], Any] = OrderedDict()
        # Unit-norm write directions per loaded dictionary; dropped with it when it leaves the cache.
        self._unit_directions: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()
        import torch

        threads = config.model.num_threads or max(1, math.floor(config.model_num_cpus))
        torch.set_num_threads(threads)

    def model(self, name: str | None) -> Any:
        """The language model ``name`` (the configured one when None), loaded once and cached."""
        from raysae.lm import LanguageModel, ModelLoadError

        name = name or self.config.model.name
        with self._load_lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            cfg = self.config.model.model_copy(update={"name": name})
            try:
                model = LanguageModel.from_config(cfg)
            except (ModelLoadError, OSError, ValueError) as err:
                raise RequestError(503, f"cannot load language model {name!r}: {err}") from err
            self._models[name] = model
            while len(self._models) > self.config.max_cached_models:
                self._models.popitem(last=False)
            return model

    def dictionary(self, dictionary_id: str, path: str, device: str) -> Any:
        """The dictionary saved at ``path``, cached until its weights file changes."""
        from raysae.dictionaries import DictionaryFormatError, load_dictionary
        from raysae.dictionaries.io import WEIGHTS_FILE

        folder = Path(path)
        try:
            stamp = (folder / WEIGHTS_FILE).stat().st_mtime_ns
        except OSError as err:
            raise RequestError(
                503, f"dictionary {dictionary_id!r}: its saved weights are not readable on the server: {err}"
            ) from err
        key = (str(folder), stamp)
        with self._load_lock:
            if key in self._dictionaries:
                self._dictionaries.move_to_end(key)
                return self._dictionaries[key]
            try:
                loaded = load_dictionary(folder, device=device)
            except (DictionaryFormatError, OSError) as err:
                raise RequestError(503, f"dictionary {dictionary_id!r} cannot be loaded: {err}") from err
            self._dictionaries[key] = loaded
            while len(self._dictionaries) > self.config.max_cached_dictionaries:
                self._dictionaries.popitem(last=False)
            return loaded

    def resolve(self, record: dict[str, Any]) -> tuple[Any, Any]:
        """(language model, dictionary) of a dictionaries document (``dictionary_id``, ``path``,
        optional ``model``), loaded or cached, checked to fit each other; ``RequestError`` otherwise."""
        from raysae.dictionaries import DictionaryCompatibilityError
        from raysae.lm import HookError

        dictionary_id = record["dictionary_id"]
        path = record.get("path")
        if not isinstance(path, str) or not path:
            raise RequestError(
                409, f"dictionary {dictionary_id!r} has no saved path; the model endpoints need one"
            )
        model_name = record.get("model")
        if model_name is not None and not isinstance(model_name, str):
            raise RequestError(409, f"dictionary {dictionary_id!r} names its model with a non-string")
        model = self.model(model_name)
        dictionary = self.dictionary(dictionary_id, path, str(model.device))
        try:
            dictionary.check_model_compatible(model.name, model.d_model, model.n_layers)
        except DictionaryCompatibilityError as err:
            raise RequestError(409, f"dictionary {dictionary_id!r}: {err}") from err
        try:
            model.check_hooks(list(dictionary.hooks_in))
        except HookError as err:
            raise RequestError(
                409, f"dictionary {dictionary_id!r} reads hooks that model {model.name!r} lacks: {err}"
            ) from err
        return model, dictionary

    def tokenize(self, model: Any, text: str) -> Any:
        """``text`` as [1, T] ids with BOS; 413 beyond ``max_text_tokens`` (BOS excluded)."""
        tokens = model.to_tokens(text, prepend_bos=True)
        n_text = tokens.shape[1] - 1
        if n_text > self.config.max_text_tokens:
            raise RequestError(
                413, f"text is {n_text} tokens long; the limit is {self.config.max_text_tokens} tokens"
            )
        return tokens

    def top_features(
        self, record: dict[str, Any], text: str, top_n: int, include_bos: bool = False
    ) -> dict[str, Any]:
        """The ``top_n`` most active features of every token of ``text`` under the dictionary ``record``
        (a dictionaries document: ``dictionary_id``, ``path``, optional ``model``)."""
        dictionary_id = record["dictionary_id"]
        model, dictionary = self.resolve(record)
        hooks = list(dictionary.hooks_in)
        tokens = self.tokenize(model, text)
        with self._run_lock:
            acts = model.run_with_hooks(tokens, hooks)
            z = dictionary.encode_flat({h: acts[h][0] for h in hooks}).float()  # [T, n_features]
        k = min(top_n, z.shape[1])
        values, indices = (t.tolist() for t in z.topk(k, dim=-1))
        n_active = (z > 0).sum(-1).tolist()
        ids = tokens[0].tolist()
        start = 0 if include_bos else 1
        out_tokens = []
        for pos in range(start, len(ids)):
            feats = []
            for value, flat in zip(values[pos], indices[pos], strict=True):
                if value <= 0:
                    break
                hook, index = feature_of(flat, dictionary)
                feats.append({"hook": hook, "index": index, "activation": value})
            out_tokens.append(
                {
                    "position": pos,
                    "token": model.tokenizer.decode([ids[pos]], clean_up_tokenization_spaces=False),
                    "token_id": ids[pos],
                    "n_active": n_active[pos],
                    "features": feats,
                }
            )
        return {
            "dictionary_id": dictionary_id,
            "model": model.name,
            "hooks": dictionary.feature_hooks(),
            "top_n": top_n,
            "n_tokens": len(out_tokens),
            "tokens": out_tokens,
        }

    def steer(
        self,
        record: dict[str, Any],
        hook: str,
        index: int,
        prompt: str,
        strength: float,
        max_new_tokens: int,
    ) -> dict[str, Any]:
        """Greedy continuations of ``prompt`` with and without ``strength`` × the feature's decoder
        output added at the dictionary's output hooks (``raysae.serve.steering``)."""
        from raysae.lm import HookError
        from raysae.serve import steering

        model, dictionary = self.resolve(record)
        flat = steering.flat_feature(dictionary, hook, index)
        directions = steering.decoder_output(dictionary, flat)
        try:
            model.check_hooks(list(directions))
        except HookError as err:
            raise RequestError(409, f"the dictionary writes hooks that {model.name!r} lacks: {err}") from err
        tokens = self.tokenize(model, prompt)
        with self._run_lock:
            plain = steering.greedy_generate(model, tokens, max_new_tokens)
            replace = steering.steering_hooks(directions, strength)
            steered = steering.greedy_generate(model, tokens, max_new_tokens, replace)
        return {
            "dictionary_id": record["dictionary_id"],
            "hook": hook,
            "index": index,
            "model": model.name,
            "prompt": prompt,
            "strength": strength,
            "max_new_tokens": max_new_tokens,
            "hooks_out": list(directions),
            "unsteered": steering.continuation(model, plain),
            "steered": steering.continuation(model, steered),
        }

    def nearest(self, record: dict[str, Any], hook: str, index: int, k: int) -> list[dict[str, Any]]:
        """The ``k`` features whose write directions have the highest cosine with this feature's
        (itself excluded); the unit-norm matrix is cached with the loaded dictionary."""
        from raysae.serve import steering

        model, dictionary = self.resolve(record)
        flat = steering.flat_feature(dictionary, hook, index)
        with self._load_lock:
            unit = self._unit_directions.get(dictionary)
            if unit is None:
                unit = steering.unit_write_directions(dictionary, model.n_layers)
                self._unit_directions[dictionary] = unit
        out = []
        for other, cosine in steering.nearest_by_cosine(unit, flat, k):
            other_hook, other_index = feature_of(other, dictionary)
            out.append({"hook": other_hook, "index": other_index, "cosine": cosine})
        return out


@serve.deployment(name="ActivationModel")
class ActivationModel:
    """Serve deployment of ``FeatureActivations``; the ingress calls its methods via a handle, so a
    forward pass never runs in the ingress."""

    def __init__(self, config: ServeConfig):
        self.engine = FeatureActivations(config)

    def top_features(
        self, record: dict[str, Any], text: str, top_n: int, include_bos: bool = False
    ) -> dict[str, Any]:
        """See ``FeatureActivations.top_features``."""
        return self.engine.top_features(record, text, top_n, include_bos)

    def steer(
        self,
        record: dict[str, Any],
        hook: str,
        index: int,
        prompt: str,
        strength: float,
        max_new_tokens: int,
    ) -> dict[str, Any]:
        """See ``FeatureActivations.steer``."""
        return self.engine.steer(record, hook, index, prompt, strength, max_new_tokens)

    def nearest(self, record: dict[str, Any], hook: str, index: int, k: int) -> list[dict[str, Any]]:
        """See ``FeatureActivations.nearest``."""
        return self.engine.nearest(record, hook, index, k)
