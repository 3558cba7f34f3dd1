"""`tinyformer serve`: arguments, up-front refusals and vLLM's own start-up error, as the user sees them."""

from __future__ import annotations

import pytest

from tinyformer.cli import main


def test_serve_is_listed_with_its_options(capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    options = ("--max-model-len", "--kv-cache-tokens", "--api-key", "--host", "--port", "--tensor-parallel-size")
    for option in (*options, "--pipeline-parallel-size"):
        assert option in out


def test_serve_refuses_bad_settings_in_one_line(export_config, capsys):
    assert main(["serve", str(export_config), "--max-model-len", "256"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinyformer serve: error: max_model_len=256") and "n_positions=128" in err
    assert main(["serve", str(export_config / "missing")]) == 1
    assert "export the model first" in capsys.readouterr().err


@pytest.mark.vllm
def test_serve_reports_vllms_own_error_with_no_check(tmp_path, capsys):
    import torch

    from tinyformer.config import ModelConfig
    from tinyformer.export import export_hf
    from tinyformer.model import Transformer
    from tinyformer.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    folder = export_hf(Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer))), tokenizer, tmp_path / "m")
    assert main(["serve", str(folder), "--max-model-len", "256", "--no-check"]) == 1
    err = capsys.readouterr().err
    assert "vLLM says: User-specified max_model_len (256)" in err and "What it means" in err
