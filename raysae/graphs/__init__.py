"""Attribution graphs through a cross-layer transcoder or per-layer transcoders (circuit-tracer's method).

Definitions follow safety-research/circuit-tracer and Ameisen et al. (2025), "Circuit Tracing"
(transformer-circuits.pub/2025/attribution-graphs/methods.html): the local replacement model
(``replacement``: MLPs replaced by transcoder features plus error nodes, attention patterns and norm
denominators frozen), direct-effect edges by injected backward passes (``attribution``, as
circuit-tracer's ``attribution/attribute_*.py``), influence pruning and the replacement and
completeness scores (``prune``, as its ``graph.py``), and the viewer JSON (``export``, as its
``frontend/graph_models.py`` and ``utils/create_graph_files.py``). The code here is our own.

``compute_graph(lm, transcoder, prompt, cfg)`` returns a ``Graph``; ``graph_document(graph)`` makes its
store document; ``raysae graphs CONFIG`` (``commands``, ``job``) runs many prompts on Ray.
"""

from __future__ import annotations

from raysae._lazy import lazy_exports

_EXPORTS = {
    "AttributionContext": "raysae.graphs.attribution",
    "Graph": "raysae.graphs.graph",
    "GraphMemoryError": "raysae.graphs.graph",
    "TranscoderSet": "raysae.graphs.transcoders",
    "compute_graph": "raysae.graphs.compute",
    "graph_document": "raysae.graphs.export",
    "graph_id": "raysae.graphs.graph",
    "run_graphs": "raysae.graphs.job",
    "viewer_json": "raysae.graphs.export",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
