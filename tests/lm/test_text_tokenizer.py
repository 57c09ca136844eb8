"""The token reader's tokenizer: exactly transformers' ids for a generic tokenizer.json, without it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
from transformers import PreTrainedTokenizerBase

from raysae.config.data import ActivationsConfig, ModelConfig
from raysae.data.tokens import token_windows
from raysae.lm.bundled import model_source
from raysae.lm.loader import load_tokenizer
from raysae.lm.text_tokenizer import TextTokenizer, load_text_tokenizer

TEXTS = ["Hello world", " leading space", "<|im_start|>user\nhi<|im_end|>", "emoji 🙂 and ünïcode", ""]


def test_bundled_model_tokenises_like_transformers():
    cfg = ActivationsConfig.model_validate({"total_tokens": 40_960, "tokens": {"context_size": 128}})
    fast, hf = load_text_tokenizer(cfg.model), load_tokenizer(cfg.model)
    assert isinstance(fast, TextTokenizer)
    assert (fast.bos_token_id, fast.pad_token_id) == (hf.bos_token_id, hf.pad_token_id)
    for special in (False, True):
        assert fast(TEXTS, add_special_tokens=special) == {
            "input_ids": hf(TEXTS, add_special_tokens=special)["input_ids"]
        }
    ours = list(token_windows(cfg.text, cfg.tokens, fast, cfg.batch_windows, cfg.total_tokens))
    theirs = list(token_windows(cfg.text, cfg.tokens, hf, cfg.batch_windows, cfg.total_tokens))
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs, strict=True):
        for key, value in a.to_dict().items():
            np.testing.assert_array_equal(value, b.to_dict()[key])


def test_bundled_text_tokenizer_needs_neither_torch_nor_transformers():
    check = (
        "import sys; from raysae.config.data import ModelConfig; "
        "from raysae.lm.text_tokenizer import load_text_tokenizer; "
        "ids = load_text_tokenizer(ModelConfig())(['hello'], add_special_tokens=False)['input_ids']; "
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules); "
        "assert not heavy and ids[0], (heavy, ids)"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_other_tokenizer_classes_load_through_transformers(tmp_path):
    """A named tokenizer class may adjust tokenizer.json on load, so only transformers reads it."""
    bundled = model_source(ModelConfig())
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bundled / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "GPT2Tokenizer"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_text_tokenizer(ModelConfig(name=str(tmp_path)))
    assert isinstance(tok, PreTrainedTokenizerBase)
    assert (
        tok(["Hello world"], add_special_tokens=False)["input_ids"]
        == load_tokenizer(ModelConfig())(["Hello world"], add_special_tokens=False)["input_ids"]
    )
