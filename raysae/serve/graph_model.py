"""The attribution-graph deployment: holds the language model and transcoders, computes one graph at a
time and writes it to the store.

The ingress checks the request, records it as ``queued`` (``graph_requests``) and calls ``compute``
through a handle; this replica marks it ``running``, computes (``raysae.graphs.compute_graph``), upserts
the graph by its id and marks the request ``done`` — or ``failed`` with the user error's message (over
the memory budget, a prompt too long, dictionaries that are not transcoders). The graph document is
written before the request says ``done``, so a poller never sees ``done`` without a graph. Models and
dictionaries are cached as in the text deployment (``FeatureActivations``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ray import serve

from raysae.config.graphs import GraphConfig
from raysae.config.serve import ServeConfig
from raysae.errors import RaysaeError
from raysae.serve.activations import FeatureActivations, RequestError
from raysae.store import Store

log = logging.getLogger(__name__)
TRANSCODER_ARCHITECTURES = ("clt", "transcoder")


def transcoder_records(store: Store, dictionary_id: str) -> list[dict[str, Any]]:
    """The store records behind ``dictionary_id``: one CLT, or per-layer transcoders joined by '+'.
    ``RequestError`` (404/422) names an unknown id or a dictionary that is not a transcoder."""
    ids = [dictionary_id] if store.get_dictionary(dictionary_id) else dictionary_id.split("+")
    records = []
    for did in ids:
        record = store.get_dictionary(did)
        if record is None:
            raise RequestError(404, f"dictionary {did!r} not found")
        arch = record.get("architecture")
        if arch not in TRANSCODER_ARCHITECTURES:
            raise RequestError(
                422,
                f"dictionary {did!r} is a {arch or 'dictionary of unknown architecture'}, not a "
                "transcoder: attribution graphs need a CLT or per-layer transcoders",
            )
        if not record.get("path"):
            raise RequestError(422, f"dictionary {did!r} has no saved folder (path) in its record")
        records.append(record)
    if len(records) > 1 and any(r.get("architecture") == "clt" for r in records):
        raise RequestError(422, "give one CLT, or only per-layer transcoders joined by '+'")
    return records


class GraphEngine:
    """One replica's state: cached model and transcoders, the store, one graph at a time."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.cache = FeatureActivations(config.model_copy(update={"model_num_cpus": config.graph_num_cpus}))
        self.store = Store(config.store)
        self._lock = threading.Lock()

    def _mark(self, graph_id: str, status: str, **fields: Any) -> None:
        self.store.upsert_graph_request(graph_id, {"status": status, **fields})

    def compute(self, graph_id: str, dictionary_id: str, prompt: str, parameters: dict[str, Any]) -> dict:
        """Compute and store the graph; returns the request's final state (``done`` or ``failed``)."""
        from raysae.graphs.compute import compute_graph
        from raysae.graphs.export import graph_document
        from raysae.graphs.transcoders import TranscoderSet

        with self._lock:
            self._mark(graph_id, "running")
            start = time.perf_counter()
            try:
                records = transcoder_records(self.store, dictionary_id)
                lm = self.cache.model(records[0].get("model"))
                dicts = [
                    self.cache.dictionary(r["dictionary_id"], r["path"], str(lm.device)) for r in records
                ]
                for d in dicts:
                    d.check_model_compatible(lm.name, lm.d_model, lm.n_layers)
                n_tokens = len(lm.to_tokens(prompt, prepend_bos=False)[0])
                if n_tokens > self.config.graph_max_prompt_tokens:
                    raise RequestError(
                        413,
                        f"the prompt has {n_tokens} tokens; the limit is {self.config.graph_max_prompt_tokens}",
                    )
                cfg = GraphConfig.model_validate({**self.config.graph_defaults.model_dump(), **parameters})
                graph = compute_graph(lm, TranscoderSet(dicts, lm.n_layers), prompt, cfg, dictionary_id)
                if graph.graph_id != graph_id:  # the ingress and compute_graph hash the same fields
                    raise RuntimeError(f"graph id mismatch: {graph.graph_id} != {graph_id}")
                doc = graph_document(graph, lm.tokenizer)
                self.store.upsert_graph(graph_id, doc, dictionary_id=dictionary_id)
            except RaysaeError as err:
                status, message = 422, str(err)
                if isinstance(err, RequestError):
                    status, message = err.status, err.detail
                elif isinstance(err, MemoryError):  # GraphMemoryError: over the budget, with the estimate
                    status = 413
                self._mark(graph_id, "failed", error=message, http_status=status)
                return {"graph_id": graph_id, "status": "failed", "error": message, "http_status": status}
            except Exception as err:
                log.exception("graph %s failed", graph_id)
                message = f"internal error ({type(err).__name__}); see the graph replica's log"
                self._mark(graph_id, "failed", error=message, http_status=500)
                return {"graph_id": graph_id, "status": "failed", "error": message, "http_status": 500}
            seconds = time.perf_counter() - start
            self._mark(graph_id, "done", seconds=seconds, error=None)
            return {"graph_id": graph_id, "status": "done", "seconds": seconds}


@serve.deployment(name="GraphModel")
class GraphModel:
    """Serve deployment of ``GraphEngine``; the ingress calls ``compute`` through a handle."""

    def __init__(self, config: ServeConfig):
        self.engine = GraphEngine(config)

    def compute(self, graph_id: str, dictionary_id: str, prompt: str, parameters: dict[str, Any]) -> dict:
        """See ``GraphEngine.compute``."""
        return self.engine.compute(graph_id, dictionary_id, prompt, parameters)
