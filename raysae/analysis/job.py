"""The analysis job: stream token windows through an actor pool of (model, dictionary) replicas, merge their
partial statistics exactly on the driver, then write feature documents to MongoDB batch by batch.

    read task (token windows) ─▶ ActorPoolStrategy: FeatureAnalyzer (model + dictionary) ─▶ Partial
         ─▶ driver: StatsMerger (exact: counts, sums, histograms, global top-k and sample)
         ─▶ DLA + documents per batch of features ─▶ idempotent upserts (features, dictionaries, analyses)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from tqdm.auto import tqdm

from raysae.analysis.dla import DLAReadout, top_dla_tokens
from raysae.analysis.documents import dictionary_document, feature_documents
from raysae.analysis.layout import FeatureLayout
from raysae.analysis.merge import StatsMerger
from raysae.analysis.partial import Partial, histogram_edges
from raysae.analysis.worker import (
    AnalysisError,
    FeatureAnalyzer,
    PartialSettings,
    ShippedFiles,
    check_compatible,
)
from raysae.config.analysis import AnalysisConfig
from raysae.config.base import format_validation_error
from raysae.config.data import ActivationsConfig
from raysae.data.sources import check_source
from raysae.data.tokens import token_windows
from raysae.dictionaries import SparseDictionary, load_dictionary
from raysae.dictionaries.io import CONFIG_FILE, WEIGHTS_FILE
from raysae.lm.model import LanguageModel
from raysae.store import Store

log = logging.getLogger(__name__)


@dataclass
class AnalysisResult:
    """Summary of one analysis run."""

    dictionary_id: str
    analysis_id: str
    n_tokens: int
    n_windows: int
    n_features: int
    features_written: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def activations_for(cfg: AnalysisConfig, dictionary: SparseDictionary) -> ActivationsConfig:
    """The activation settings of ``cfg`` with the dictionary's input hooks (validated)."""
    data = cfg.activations.model_dump()
    data["hooks"] = list(dictionary.hooks_in)
    try:
        return ActivationsConfig.model_validate(data)
    except ValidationError as err:
        raise AnalysisError(format_validation_error(err, "the dictionary's input hooks")) from err


def derive_analysis_id(path: Path, dictionary_id: str, cfg: AnalysisConfig) -> str:
    """A stable id from the dictionary's weights and the settings: re-runs replace the same record."""
    h = hashlib.sha256()
    with open(path / WEIGHTS_FILE, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    settings = cfg.model_dump(mode="json", exclude={"store", "analysis_id", "dictionary_id"})
    h.update(json.dumps([dictionary_id, settings], sort_keys=True).encode())
    return "analysis-" + h.hexdigest()[:16]


def iter_partials_ray(
    cfg: AnalysisConfig, acts: ActivationsConfig, path: Path, settings: PartialSettings
) -> Iterator[Partial]:
    """Partials from the activation pipeline's actor pool with ``FeatureAnalyzer`` as its map class
    (resources from ``raysae.data.resources``; Ray must be initialised)."""
    import ray

    from raysae.data.pipeline import window_map_dataset

    files = {name: (path / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}
    ds = window_map_dataset(
        acts,
        FeatureAnalyzer,
        {"settings": settings, "dictionary_files": ShippedFiles(ray.put(files))},
        windows_per_task=cfg.windows_per_task,
        # A fixed merge order makes float sums, hence documents, identical from run to run.
        preserve_order=True,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
        for blob in batch["partial"]:
            yield Partial.from_bytes(bytes(blob))


def iter_partials_local(
    analyzer: FeatureAnalyzer, cfg: AnalysisConfig, acts: ActivationsConfig
) -> Iterator[Partial]:
    """Partials computed in this process over the same windows and forward batches."""
    for windows in token_windows(
        acts.text,
        acts.tokens,
        analyzer.lm.tokenizer,
        cfg.windows_per_task,
        acts.total_tokens,
        pad_token_id=analyzer.lm.pad_token_id,
    ):
        yield analyzer.analyze(windows)


def vocabulary(lm: LanguageModel, size: int) -> list[str]:
    """``decode([id])`` of every token id below ``size``."""
    n = min(size, len(lm.tokenizer))
    strings = lm.tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
    return strings + [""] * (size - n)


def analyze(
    checkpoint: str | Path,
    cfg: AnalysisConfig | None = None,
    *,
    store: Store | None = None,
    use_ray: bool = True,
    progress: bool = True,
    lm: LanguageModel | None = None,
) -> AnalysisResult:
    """Analyse every feature of the dictionary saved at ``checkpoint`` and write the results to the store.

    With ``use_ray`` (Ray must be initialised) the work runs in a Ray Data actor pool; otherwise in this
    process. ``store`` defaults to ``Store.connect(cfg.store)``; ``lm`` reuses a loaded model for DLA,
    token strings and (without Ray) the forward passes.
    """
    cfg = cfg or AnalysisConfig()
    t_start = time.perf_counter()
    started_at = datetime.now(UTC)
    path = Path(checkpoint).expanduser().resolve()
    dictionary = load_dictionary(path, device="cpu")
    layout = FeatureLayout.of(dictionary)
    acts = activations_for(cfg, dictionary)
    check_source(acts.text)  # a bad corpus fails here in one line, not in a Ray read task
    dictionary_id = cfg.dictionary_id or path.name
    analysis_id = cfg.analysis_id or derive_analysis_id(path, dictionary_id, cfg)
    own_store = store is None
    store = store or Store.connect(cfg.store)
    record: dict[str, Any] = {
        "status": "running",
        "error": None,
        "corpus": acts.text.model_dump(mode="json"),
        "model": acts.model.model_dump(mode="json"),
        "context_size": acts.tokens.context_size,
        "hooks": dictionary.feature_hooks(),
        "n_features": dictionary.n_features,
        "settings": cfg.model_dump(mode="json", exclude={"store"}),
        "started_at": started_at,
    }
    timings: dict[str, float] = {}
    try:
        store.upsert_analysis(dictionary_id, analysis_id, record)
        settings = PartialSettings.of(cfg)
        if lm is None:
            lm = LanguageModel.from_config(acts.model)
        check_compatible(lm, dictionary)  # fail here, not in every replica
        t0 = time.perf_counter()
        if use_ray:
            partials = iter_partials_ray(cfg, acts, path, settings)
        else:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its spinning threads slow torch 3x
            analyzer = FeatureAnalyzer(
                acts.model, settings, dictionary=load_dictionary(path, device="cpu"), lm=lm
            )
            partials = iter_partials_local(analyzer, cfg, acts)
        merger = merge_partials(partials, dictionary.n_features, cfg, progress)
        timings.update(merger.timings, pass_s=time.perf_counter() - t0)
        t0 = time.perf_counter()
        written = write_features(store, dictionary_id, dictionary, layout, merger, lm, cfg, progress, timings)
        timings["write_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.upsert_dictionary(
            dictionary_id,
            dictionary_document(dictionary, layout, path, lm.name, analysis_id),
            replace=False,
        )
        timings["store_s"] = timings.get("store_s", 0.0) + time.perf_counter() - t0
        seconds = time.perf_counter() - t_start
        record.update(
            status="complete",
            tokens=merger.n_tokens,
            windows=merger.n_windows,
            features_written=written,
            finished_at=datetime.now(UTC),
            seconds=seconds,
            timings=timings,
        )
        store.upsert_analysis(dictionary_id, analysis_id, record)
    except BaseException as err:
        record.update(status="failed", error=f"{type(err).__name__}: {err}", finished_at=datetime.now(UTC))
        try:
            store.upsert_analysis(dictionary_id, analysis_id, record)
        except Exception:  # the store itself may be what failed; keep the original error
            log.exception("could not record the failed analysis %s", analysis_id)
        raise
    finally:
        if own_store:
            store.close()
    return AnalysisResult(
        dictionary_id,
        analysis_id,
        merger.n_tokens,
        merger.n_windows,
        dictionary.n_features,
        written,
        seconds,
        timings,
    )


def merge_partials(
    partials: Iterator[Partial], n_features: int, cfg: AnalysisConfig, progress: bool
) -> StatsMerger:
    """Merge a stream of partials, with a terminal progress bar counting tokens."""
    merger = StatsMerger(n_features, cfg.histogram_bins, cfg.top_k_examples, cfg.samples_per_feature)
    total = cfg.activations.total_tokens
    bar = tqdm(total=total, unit="tok", desc="analysis", disable=not progress, dynamic_ncols=True)
    merge_s = 0.0
    try:
        for p in partials:
            t0 = time.perf_counter()
            merger.add(p)
            merge_s += time.perf_counter() - t0
            bar.update(p.n_tokens)
    finally:
        bar.close()
    merger.timings["merge_s"] = merge_s
    return merger


def write_features(
    store: Store,
    dictionary_id: str,
    dictionary: SparseDictionary,
    layout: FeatureLayout,
    merger: StatsMerger,
    lm: LanguageModel,
    cfg: AnalysisConfig,
    progress: bool,
    timings: dict[str, float],
) -> int:
    """DLA and documents per batch of features, each batch upserted before the next is built; then the
    documents of features this dictionary no longer has (an earlier, wider version) are deleted."""
    readout = DLAReadout.of(lm.unembed)
    vocab = vocabulary(lm, readout.W_U.shape[-1])
    edges = histogram_edges(cfg.histogram_bins, cfg.histogram_min, cfg.histogram_max)
    step = min(cfg.write_batch_features, cfg.dla_chunk_features)
    written = 0
    bar = tqdm(
        total=dictionary.n_features, unit="feat", desc="writing", disable=not progress, dynamic_ncols=True
    )
    try:
        for group in range(dictionary.n_groups):
            for lo in range(0, dictionary.d_sae, step):
                indices = np.arange(lo, min(lo + step, dictionary.d_sae))
                t0 = time.perf_counter()
                directions = dictionary.write_directions(group, torch.from_numpy(indices), lm.n_layers)
                top = top_dla_tokens(readout, directions, cfg.dla_tokens)
                t1 = time.perf_counter()
                docs = feature_documents(layout, merger, group, indices, top, vocab, edges, cfg.quantiles)
                t2 = time.perf_counter()
                written += store.upsert_features(dictionary_id, dictionary.group_hook(group), docs)
                t3 = time.perf_counter()
                for name, dt in (("dla_s", t1 - t0), ("documents_s", t2 - t1), ("store_s", t3 - t2)):
                    timings[name] = timings.get(name, 0.0) + dt
                bar.update(len(indices))
    finally:
        bar.close()
    t0 = time.perf_counter()
    store.delete_stale_features(dictionary_id, dictionary.feature_hooks(), dictionary.d_sae)
    timings["store_s"] = timings.get("store_s", 0.0) + time.perf_counter() - t0
    return written
