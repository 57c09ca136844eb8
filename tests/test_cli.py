"""The ``raysae`` command as a user meets it: light start-up, and user errors as one line, exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from raysae.cli import main
from raysae.config import SAEConfig
from raysae.dictionaries import build_dictionary
from raysae.errors import EXIT_USER_ERROR


def test_help_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from raysae.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'ray', 'transformers', 'transformer_lens') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"raysae {command}: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("tokens", ["-5", "0"])
def test_eval_token_count_must_be_positive(tmp_path, capsys, tokens):
    path = build_dictionary(SAEConfig(d_model=576, d_sae=64, top_k=4)).save(tmp_path / "d")
    assert main(["eval", str(path), "--tokens", tokens]) == EXIT_USER_ERROR
    assert "total_tokens" in _one_line_error(capsys, "eval")


def test_a_folder_given_as_config_says_it_is_a_directory(tmp_path, capsys):
    assert main(["train", str(tmp_path)]) == EXIT_USER_ERROR
    assert "is a directory" in _one_line_error(capsys, "train")
    assert main(["cache", str(tmp_path)]) == EXIT_USER_ERROR
    assert "is a directory" in _one_line_error(capsys, "cache")


def test_missing_and_corrupt_checkpoints_are_one_line_errors(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == EXIT_USER_ERROR
    assert "nope" in _one_line_error(capsys, "eval")
    path = build_dictionary(SAEConfig(d_model=576, d_sae=64, top_k=4)).save(tmp_path / "d")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor bytes: only the checksum notices
    weights.write_bytes(bytes(data))
    assert main(["eval", str(path), "--tokens", "64"]) == EXIT_USER_ERROR
    assert "model.safetensors" in _one_line_error(capsys, "eval")


def test_unknown_top_level_key_in_a_cache_file_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"activatons": {"hooks": ["blocks.1.hook_resid_post"]}}))
    assert main(["cache", str(cfg), "--local"]) == EXIT_USER_ERROR
    assert "'activatons'" in _one_line_error(capsys, "cache")


def test_a_shared_analysis_file_is_validated_whole(tmp_path, capsys):
    path = build_dictionary(SAEConfig(d_model=576, d_sae=64, top_k=4)).save(tmp_path / "d")
    cfg = tmp_path / "a.json"
    cfg.write_text(json.dumps({"analysis": {}, "trainer": {"lr": -1}}))
    assert main(["analyze", str(path), "--config", str(cfg), "--local"]) == EXIT_USER_ERROR
    assert "trainer" in _one_line_error(capsys, "analyze")
    cfg.write_text(json.dumps({"analysis": {}, "activatons": {}}))
    assert main(["analyze", str(path), "--config", str(cfg), "--local"]) == EXIT_USER_ERROR
    assert "'activatons'" in _one_line_error(capsys, "analyze")


@pytest.mark.parametrize(
    ("content", "says"),
    [(None, "no files match"), (b"\x00\x01\x02binary\xff\xfe", "a binary file, not UTF-8 text")],
    ids=["empty-folder", "binary-file"],
)
def test_train_on_a_bad_corpus_fails_in_the_driver_in_one_line(tmp_path, capsys, content, says):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if content is not None:
        (corpus / "a.txt").write_bytes(content)
    cfg = tmp_path / "t.json"
    settings = {
        "sae": {"d_model": 576, "d_sae": 64, "top_k": 4, "hook_point_in": "blocks.1.hook_resid_post"},
        "activations": {"text": {"kind": "text", "path": str(corpus)}},
        "output_dir": str(tmp_path / "run"),
    }
    cfg.write_text(json.dumps(settings))
    assert main(["train", str(cfg)]) == EXIT_USER_ERROR
    err = _one_line_error(capsys, "train")
    assert str(corpus) in err and says in err
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
