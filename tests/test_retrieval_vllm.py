"""The embedding server: VLLMServer(pooling=...) against a real vLLM (one module-scoped server, MEAN pooling), the
refusals it makes before starting one, and LAST pooling in vLLM's offline engine (the same pooler, no second server)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch

from tinyformer import retrieval as R
from tinyformer.config import ModelConfig
from tinyformer.export import export_hf
from tinyformer.model import Transformer
from tinyformer.serving import ServingConfigError, VLLMServer, embeddings, run_embedding_load
from tinyformer.serving.offline import offline_llm
from tinyformer.tokenizer import build_tokenizer

TEXTS = ["the cat sleeps .", "the dogs near the fox behind the mice run quietly .", "the foxes swim ."]


def test_pooling_flags_and_refusals(tmp_path, monkeypatch):
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    folder = export_hf(Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer))), tokenizer, tmp_path / "m")
    command = VLLMServer(folder, pooling="LAST", shared=False, port=1).command()
    at = command.index("--runner")
    assert command[at : at + 6] == [
        "--runner",
        "pooling",
        "--convert",
        "embed",
        "--pooler-config",
        '{"pooling_type": "LAST"}',
    ]
    assert "--runner" not in VLLMServer(folder, shared=False, port=1).command()
    with pytest.raises(
        ServingConfigError, match=r"max_num_batched_tokens \(64\) is smaller than max_model_len \(128\)"
    ):
        VLLMServer(folder, pooling="MEAN", max_num_batched_tokens=64)
    VLLMServer(folder, pooling="LAST", max_num_batched_tokens=64)  # LAST keeps chunked prefill: allowed
    with pytest.raises(ServingConfigError, match="pooling must be None"):
        VLLMServer(folder, pooling="mean")
    monkeypatch.setenv("TINYFORMER_VLLM_URL", "http://10.0.0.5:8000")  # a class's server generates: not used
    assert not VLLMServer(folder, pooling="MEAN").shared and VLLMServer(folder).shared


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer))).eval()
    folder = export_hf(model, tokenizer, tmp_path_factory.mktemp("embed") / "nano")
    with VLLMServer(folder, pooling="MEAN", kv_cache_tokens=2048, shared=False, progress=False) as server:
        yield model, tokenizer, server


@pytest.mark.vllm
@pytest.mark.slow
def test_served_embeddings_equal_mean_pooling_by_hand(embedder):
    model, tokenizer, server = embedder
    served = embeddings(server, TEXTS)
    assert served.shape == (3, model.config.n_embd)
    assert (served - R.embed(model, tokenizer, TEXTS, "mean")).abs().max().item() <= 1e-5
    assert "Resolved pooling config: pooling_type=MEAN" in server.log_text()
    assert "Chunked prefill is enabled" not in server.log_text()  # MEAN pooling: off


@pytest.mark.vllm
@pytest.mark.slow
def test_one_runner_per_engine_and_the_length_limit(embedder):
    _, _, server = embedder
    with pytest.raises(openai.NotFoundError):  # a pooling server has no /v1/completions route
        server.client(max_retries=0).completions.create(model=server.model, prompt="the cat", max_tokens=2)
    too_long = " ".join(["the cat sleeps ."] * 33)  # 132 tokens > max_model_len 128
    response = httpx.post(f"{server.api_url}/embeddings", json={"model": server.model, "input": too_long}, timeout=60)
    assert response.status_code == 400
    assert (
        "This model's maximum context length is 128 tokens. However, your prompt contains at least 129"
        in (json.loads(response.text)["error"]["message"])
    )


@pytest.mark.vllm
@pytest.mark.slow
def test_concurrent_embedding_load_returns_the_same_vectors(embedder):
    model, tokenizer, server = embedder
    texts = TEXTS * 6
    expected = R.embed(model, tokenizer, texts)
    for limit in (1, 8):
        load = run_embedding_load(server, texts, concurrency=limit)
        assert load.vectors.shape == expected.shape and (load.vectors - expected).abs().max() <= 1e-5
        assert load.tokens == sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts)


@pytest.mark.vllm
def test_vllms_last_token_pooling_equals_pooling_by_hand(embedder):
    """LAST pooling is an engine of its own (the pooler is fixed at start-up); same weights as the MEAN server.
    vLLM's offline engine in this process: only the vectors are checked here, which need no second server."""
    model, tokenizer, mean_server = embedder
    with offline_llm(mean_server.model_dir, pooling="LAST", kv_cache_tokens=2048) as llm:
        assert llm.llm_engine.vllm_config.model_config.pooler_config.pooling_type == "LAST"
        outputs = llm.embed(TEXTS, use_tqdm=False)
    vectors = torch.tensor([out.outputs.embedding for out in outputs])
    assert (vectors - R.embed(model, tokenizer, TEXTS, "last")).abs().max().item() <= 1e-5
    assert (vectors - R.embed(model, tokenizer, TEXTS, "mean")).abs().max().item() > 1e-2  # a different vector
