"""Documents to token windows: held-out split, seeded shuffle, tokenise, BOS, pack into context windows.

Every token keeps its document id (the document's index in the source, stable across splits and
shuffling) and its position in the document (0 = first text token; BOS is -1). Padding, only in the
last window, has document id -1. ``keep`` marks the tokens that become activation rows: not padding,
and not BOS when ``exclude_bos``. The same settings always give the same stream.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from raysae.config.data import TextSourceConfig, TokensConfig
from raysae.data.sources import iter_documents

if TYPE_CHECKING:  # the token reader tokenises without transformers where it can (raysae.lm.text_tokenizer)
    from transformers import PreTrainedTokenizerBase

    from raysae.lm.text_tokenizer import TextTokenizer

    Tokenizer = PreTrainedTokenizerBase | TextTokenizer


@dataclass
class WindowBatch:
    """A batch of token windows; every array is [n, context_size] except ``window_ids`` [n]."""

    tokens: np.ndarray
    doc_ids: np.ndarray
    positions: np.ndarray
    keep: np.ndarray
    window_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.window_ids)

    @property
    def n_kept(self) -> int:
        return int(self.keep.sum())

    def to_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("tokens", "doc_ids", "positions", "keep", "window_ids")}

    def chunks(self, windows: int) -> Iterator[WindowBatch]:
        """Consecutive batches of at most ``windows`` windows (views, no copies)."""
        for lo in range(0, len(self), windows):
            yield WindowBatch(*(a[lo : lo + windows] for a in self.to_dict().values()))

    @classmethod
    def from_dict(cls, d: dict[str, np.ndarray]) -> WindowBatch:
        return cls(*(np.asarray(d[k]) for k in ("tokens", "doc_ids", "positions", "keep", "window_ids")))


def is_eval_document(index: int, cfg: TokensConfig) -> bool:
    """Whether document ``index`` is held out: a seeded hash, so the split never depends on order."""
    if cfg.eval_fraction == 0:
        return False
    digest = hashlib.blake2b(f"{cfg.seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < cfg.eval_fraction


def split_documents(docs: Iterable[str], cfg: TokensConfig) -> Iterator[tuple[int, str]]:
    """(document id, text) of the documents on ``cfg.split``'s side, shuffled through a seeded buffer."""
    want_eval = cfg.split == "eval"
    selected = ((i, d) for i, d in enumerate(docs) if is_eval_document(i, cfg) == want_eval)
    return shuffle_buffer(selected, cfg.shuffle_buffer_documents, cfg.seed)


def shuffle_buffer(items: Iterable, size: int, seed: int) -> Iterator:
    """Streaming shuffle: hold ``size`` items, emit a random one as each new item arrives (0: no shuffle)."""
    if size <= 1:
        yield from items
        return
    rng = random.Random(seed)
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


def tokenized_documents(
    docs: Iterable[tuple[int, str]], tokenizer: Tokenizer, cfg: TokensConfig
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(tokens, doc ids, positions) per document, with BOS first when ``cfg.prepend_bos``."""
    it = iter(docs)
    bos = tokenizer.bos_token_id
    while chunk := list(islice(it, cfg.tokenize_batch_documents)):
        ids = tokenizer([text for _, text in chunk], add_special_tokens=False)["input_ids"]
        for (doc_id, _), toks in zip(chunk, ids, strict=True):
            if not toks:
                continue
            toks = np.asarray(toks, dtype=np.int64)
            pos = np.arange(len(toks), dtype=np.int64)
            if cfg.prepend_bos:
                toks = np.concatenate([[bos], toks])
                pos = np.concatenate([[-1], pos])
            yield toks, np.full(len(toks), doc_id, dtype=np.int64), pos


def pack_windows(
    docs: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    context_size: int,
    bos_token_id: int,
    pad_token_id: int,
    bos_per_window: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Concatenate documents and cut windows of ``context_size``; a window that starts inside a
    document gets a BOS first (when ``bos_per_window``); the last window is padded."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    fill = 0
    for toks, dids, pos in docs:
        i = 0
        while i < len(toks):
            if fill == 0 and bos_per_window and pos[i] != -1:
                parts.append((np.array([bos_token_id]), dids[i : i + 1], np.array([-1])))
                fill = 1
            take = min(context_size - fill, len(toks) - i)
            parts.append((toks[i : i + take], dids[i : i + take], pos[i : i + take]))
            fill += take
            i += take
            if fill == context_size:
                yield tuple(np.concatenate(col) for col in zip(*parts, strict=True))  # type: ignore[misc]
                parts, fill = [], 0
    if parts and any((p >= 0).any() for _, _, p in parts):
        n_pad = context_size - fill
        parts.append((np.full(n_pad, pad_token_id), np.full(n_pad, -1), np.full(n_pad, -1)))
        yield tuple(np.concatenate(col) for col in zip(*parts, strict=True))  # type: ignore[misc]


def token_windows(
    text: TextSourceConfig,
    cfg: TokensConfig,
    tokenizer: Tokenizer,
    batch_windows: int,
    total_tokens: int | None = None,
    skip_windows: int = 0,
    pad_token_id: int | None = None,
) -> Iterator[WindowBatch]:
    """Batches of ``batch_windows`` windows. Stops once ``total_tokens`` kept tokens are reached (the
    excess of the last window is un-kept); the first ``skip_windows`` windows are dropped (resume)."""
    docs = tokenized_documents(split_documents(iter_documents(text), cfg), tokenizer, cfg)
    bos = tokenizer.bos_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    windows = pack_windows(docs, cfg.context_size, bos, pad_token_id, cfg.prepend_bos)
    kept = 0
    batch: list[tuple[np.ndarray, ...]] = []
    for window_id, (toks, dids, pos) in enumerate(windows):
        keep = (pos >= 0) if cfg.exclude_bos else (dids >= 0)
        if total_tokens is not None:
            room = total_tokens - kept
            if room <= 0:
                break
            if keep.sum() > room:
                keep = keep & (np.cumsum(keep) <= room)
        kept += int(keep.sum())
        if window_id < skip_windows:
            continue
        batch.append((toks, dids, pos, keep, np.int64(window_id)))
        if len(batch) == batch_windows:
            yield _stack(batch)
            batch = []
    if batch:
        yield _stack(batch)


def _stack(rows: list[tuple[np.ndarray, ...]]) -> WindowBatch:
    toks, dids, pos, keep, wid = zip(*rows, strict=True)
    return WindowBatch(
        np.stack(toks).astype(np.int64),
        np.stack(dids).astype(np.int64),
        np.stack(pos).astype(np.int64),
        np.stack(keep),
        np.asarray(wid, dtype=np.int64),
    )
