"""What the activation pipeline's Ray Data plan holds, importable without torch or transformers.

Ray Data pickles its plan, and every process that receives it imports the modules of the classes in
it: Ray Train's DatasetManager and SplitCoordinator, the train workers' split iterators, the read task.
With the token source in ``raysae.data.pipeline`` and the map class in ``raysae.data.extract``,
unpickling the plan cost 3.1 s of CPU (torch and transformers) in each, one after another before the
first model replica was created: in streaming training on 2 cores the replica started 11 s after the
train workers. Here the source imports its tokenizer inside the read task, and the map class is a
light stand-in that imports the real one inside the actor.

The stand-in also sets the replica's thread environment (``OMP_NUM_THREADS``, the wait policy) before
that import, while the actor has not loaded torch yet: OpenMP reads it once, when torch loads. Given as
the actor's ``runtime_env`` instead, it made Ray start a dedicated worker process through the runtime-env
agent (an actor ready in 1.2 s instead of 0.4 s on 2 cores).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from raysae.config.data import ActivationsConfig


class TokenWindowDatasource(Datasource):
    """Ray Data source of token-window batches (one block per forward batch) from one read task."""

    def __init__(self, cfg: ActivationsConfig, skip_windows: int = 0):
        super().__init__()
        self.cfg = cfg
        self.skip_windows = skip_windows

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
        cfg, skip = self.cfg, self.skip_windows

        def read() -> Iterator:
            from raysae.data.tokens import token_windows
            from raysae.lm.text_tokenizer import load_text_tokenizer

            tokenizer = load_text_tokenizer(cfg.model)
            for wb in token_windows(
                cfg.text, cfg.tokens, tokenizer, cfg.batch_windows, cfg.total_tokens, skip_windows=skip
            ):
                yield BlockAccessor.batch_to_block(wb.to_dict())

        meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
        return [ReadTask(read, meta)]


class Replica:
    """Map class of the pipeline's actor pool standing in for ``target`` ("module:Class"): the actor
    sets ``env`` in its environment, imports and builds the real class with the constructor's keyword
    arguments and calls it per batch. ``env`` reaches OpenMP only if torch is not loaded yet (a fresh
    actor); the real class sets torch's thread count itself either way."""

    target: ClassVar[str]
    env: ClassVar[dict[str, str]] = {}

    def __init__(self, **kwargs: Any):
        os.environ.update(self.env)
        module, _, name = self.target.partition(":")
        self.impl = getattr(importlib.import_module(module), name)(**kwargs)

    def __call__(self, batch: dict[str, Any]) -> Any:
        return self.impl(batch)


def replica_class(cls: type | str, env: Mapping[str, str] | None = None) -> type[Replica]:
    """A ``Replica`` for ``cls`` (a class or its "module:Class" path, so the caller need not import it)
    with its name, since Ray Data names the operator and its actors after the map class
    (``MapBatches(ActivationExtractor)``), setting ``env`` in the actor. Made at run time, so pickled by
    value: its bytes name this module and ``cls``'s path, never ``cls``'s module."""
    target = cls if isinstance(cls, str) else f"{cls.__module__}:{cls.__qualname__}"
    name = target.rpartition(":")[2].rpartition(".")[2]
    return type(name, (Replica,), {"target": target, "env": dict(env or {})})
