"""The graphs job: a JSONL file of prompts → one attribution graph each, written as each finishes.

    prompts (driver) ─▶ ActorPool of GraphWorker (model + transcoder each) ─▶ document + viewer JSON
         ─▶ driver: Store.upsert_graph (idempotent, by graph_id) and/or {output_dir}/{graph_id}.json

With ``use_ray=False`` one ``GraphWorker`` runs in this process. A prompt that fails with a user error
(over the memory budget, say) is reported and skipped; the others still run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysae.config.graphs import GraphConfig
from raysae.errors import RaysaeError
from raysae.files import atomic_write_json

log = logging.getLogger(__name__)


class GraphJobError(RaysaeError, ValueError):
    """The job's inputs are unusable: no prompts file, a bad line, no dictionary, nowhere to write."""


@dataclass
class GraphJobResult:
    """What one run wrote."""

    graph_ids: list[str] = field(default_factory=list)
    failed: list[tuple[Any, str]] = field(default_factory=list)
    seconds: float = 0.0


def read_prompts(cfg: GraphConfig) -> list[dict[str, Any]]:
    """``[{"prompt": text, "prompt_id": id or line number}]`` from ``cfg.prompts``; errors name the line."""
    if not cfg.prompts:
        raise GraphJobError("no prompts file: set prompts (a JSONL file)")
    path = Path(cfg.prompts)
    if not path.is_file():
        raise GraphJobError(f"{path}: no such prompts file")
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise GraphJobError(f"{path}:{n}: not JSON: {err}") from err
        text = row.get(cfg.prompt_field) if isinstance(row, dict) else None
        if not isinstance(text, str) or not text:
            raise GraphJobError(f"{path}:{n}: no text field {cfg.prompt_field!r}")
        items.append({"prompt": text, "prompt_id": row.get(cfg.id_field, n)})
    if not items:
        raise GraphJobError(f"{path}: no prompts")
    return items


def dictionary_id_of(cfg: GraphConfig) -> str:
    if not cfg.dictionaries:
        raise GraphJobError("no dictionaries: give a CLT folder or per-layer transcoder folders")
    return cfg.dictionary_id or "+".join(Path(p).resolve().name for p in cfg.dictionaries)


class GraphWorker:
    """Holds the model and the transcoder; turns one prompt into its document and viewer JSON."""

    def __init__(self, cfg: dict[str, Any] | GraphConfig):
        from raysae.dictionaries import load_dictionary
        from raysae.graphs.transcoders import TranscoderSet
        from raysae.lm.model import LanguageModel

        self.cfg = cfg if isinstance(cfg, GraphConfig) else GraphConfig.model_validate(cfg)
        self.dictionary_id = dictionary_id_of(self.cfg)
        self.lm = LanguageModel.from_config(self.cfg.model)
        dicts = [load_dictionary(p, device=self.lm.device) for p in self.cfg.dictionaries]
        for d in dicts:
            d.check_model_compatible(self.lm.name, self.lm.d_model, self.lm.n_layers)
        self.transcoder = TranscoderSet(dicts, self.lm.n_layers)

    def run(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per item ``{"prompt_id", "graph_id", "doc", "viewer"}``, or ``{"prompt_id", "error"}`` on a
        user error; the items share one pass (``compute_graphs``)."""
        from raysae.graphs.compute import compute_graphs
        from raysae.graphs.export import graph_document, viewer_json

        prompts = [item["prompt"] for item in items]
        graphs = compute_graphs(self.lm, self.transcoder, prompts, self.cfg, self.dictionary_id)
        out = []
        tok = self.lm.tokenizer
        for item, graph in zip(items, graphs, strict=True):
            if isinstance(graph, RaysaeError):
                out.append({"prompt_id": item["prompt_id"], "error": str(graph)})
                continue
            doc = graph_document(graph, tok, prompt_id=item["prompt_id"])
            viewer = viewer_json(graph, tok) if self.cfg.output_dir else None
            out.append(
                {"prompt_id": item["prompt_id"], "graph_id": graph.graph_id, "doc": doc, "viewer": viewer}
            )
        return out


def _groups(cfg: GraphConfig, items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    k = cfg.prompts_per_pass
    return [items[i : i + k] for i in range(0, len(items), k)]


def _results_ray(cfg: GraphConfig, items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    import ray
    from ray.util import ActorPool

    actor = ray.remote(num_cpus=cfg.cpus_per_replica, num_gpus=cfg.gpus_per_replica)(GraphWorker)
    settings = cfg.model_dump()
    groups = _groups(cfg, items)
    actors = [actor.remote(settings) for _ in range(min(cfg.replicas, len(groups)))]
    try:
        for results in ActorPool(actors).map_unordered(lambda a, group: a.run.remote(group), groups):
            yield from results
    finally:
        for a in actors:
            ray.kill(a)


def _results_local(cfg: GraphConfig, items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    worker = GraphWorker(cfg)
    for group in _groups(cfg, items):
        yield from worker.run(group)


def run_graphs(cfg: GraphConfig, *, use_ray: bool = True) -> GraphJobResult:
    """Compute and write the graph of every prompt of ``cfg.prompts`` (Ray must be initialised when
    ``use_ray``); each graph is written as soon as it is done."""
    start = time.perf_counter()
    items = read_prompts(cfg)
    dictionary_id = dictionary_id_of(cfg)
    if cfg.store is None and cfg.output_dir is None:
        raise GraphJobError("nowhere to write graphs: set store and/or output_dir")
    store = None
    if cfg.store is not None:
        from raysae.store import Store

        store = Store.connect(cfg.store)
    out = Path(cfg.output_dir) if cfg.output_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    result = GraphJobResult()
    try:
        results = _results_ray(cfg, items) if use_ray else _results_local(cfg, items)
        for r in results:
            if "error" in r:
                log.warning("prompt %s: %s", r["prompt_id"], r["error"])
                result.failed.append((r["prompt_id"], r["error"]))
                continue
            if store is not None:
                store.upsert_graph(r["graph_id"], r["doc"], dictionary_id=dictionary_id)
            if out is not None:
                atomic_write_json(out / f"{r['graph_id']}.json", r["viewer"], indent=None)
            result.graph_ids.append(r["graph_id"])
    finally:
        if store is not None:
            store.close()
    result.seconds = time.perf_counter() - start
    return result
