"""A model's tokenizer for turning text into ids only, loaded without transformers where that is exact.

The token reader (the pipeline's one Ray read task) needs three things of a tokenizer: batch encoding
without special tokens, the BOS id and the pad id. transformers' tokenizer classes import torch: 2.9 s
of CPU, plus 1 s to build the tokenizer, in a task that runs beside the model replicas' own start on
the same cores. A folder whose ``tokenizer_config.json`` names transformers' generic ``TokenizersBackend``
is the ``tokenizer.json`` that class wraps unchanged, which the ``tokenizers`` library loads in 0.1 s;
every other tokenizer class may adjust it on load, so those load through transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysae.config.data import ModelConfig
from raysae.lm.bundled import model_source

if TYPE_CHECKING:
    import tokenizers
    from transformers import PreTrainedTokenizerBase

GENERIC_CLASS = "TokenizersBackend"


class TextTokenizer:
    """``tokenizer.json`` behind the part of transformers' tokenizer interface raysae's token reader uses."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, bos_token_id: int | None, pad_token_id: int | None):
        self.tokenizer = tokenizer
        self.bos_token_id = bos_token_id
        self.pad_token_id = pad_token_id

    def __call__(self, texts: Sequence[str], add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encodings]}


def load_text_tokenizer(cfg: ModelConfig) -> TextTokenizer | PreTrainedTokenizerBase:
    """The tokenizer of the model ``cfg`` names, for encoding text: a ``TextTokenizer`` where its folder
    holds a generic ``tokenizer.json`` (the bundled model's does), else transformers' tokenizer."""
    source = model_source(cfg)
    folder = Path(source)
    config_file, json_file = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if folder.is_dir() and config_file.is_file() and json_file.is_file():
        config = json.loads(config_file.read_text())
        if config.get("tokenizer_class") == GENERIC_CLASS:
            import tokenizers

            tok = tokenizers.Tokenizer.from_file(str(json_file))
            bos, pad = _token_id(tok, config.get("bos_token")), _token_id(tok, config.get("pad_token"))
            if bos is not None:
                return TextTokenizer(tok, bos, pad)
    from raysae.lm.loader import load_tokenizer

    return load_tokenizer(cfg)


def _token_id(tok: tokenizers.Tokenizer, token: Any) -> int | None:
    """Id of a special token as ``tokenizer_config.json`` gives it (its text, or {"content": text})."""
    if isinstance(token, dict):
        token = token.get("content")
    return tok.token_to_id(token) if isinstance(token, str) else None
