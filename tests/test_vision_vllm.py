"""Lesson 10's VLM in vLLM beyond the chat server (issue 25): the offline ``vllm.LLM`` in this process, with
``multi_modal_data``, and the VLM served as an embedding model whose image+text vectors equal pooling by hand.

One vLLM server (the embedding one, as VLM2Vec-style embedders are deployed: /v1/embeddings with chat messages) and
two offline engines in this process (generation, then pooling: the second starts in seconds, vLLM being imported).
The server starts first, in the background, so its start overlaps the offline engines'. Lesson 10 holds the offline
engine to its chat server (same prompt ids, same new ids) and the offline pooling to pooling by hand; here the
offline engine is held to the model's own greedy decoding, and the served vectors to pooling by hand."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
import transformers

from tinyformer import vision
from tinyformer.export.llava import export_llava, vllm_args
from tinyformer.serving import (
    ServingConfigError,
    VLLMServer,
    embeddings,
    engine_settings,
    image_embedding,
    image_message,
    llm_settings,
    offline_llm,
)

BLOCK = 32
SETTINGS = dict(max_model_len=48, kv_cache_tokens=8 * BLOCK, block_size=BLOCK, extra_args=vllm_args(2))


@pytest.fixture(scope="module")
def lesson_vlm(tmp_path_factory):
    trained = vision.load_or_train_vlm(progress=False)  # tests/test_lesson_checkpoints.py trains it once per run
    folder = export_llava(trained.model, trained.tokenizer, tmp_path_factory.mktemp("vlm") / "vlm-hf")
    return trained.model, trained.tokenizer, folder


@pytest.fixture(scope="module")
def embedder_start(lesson_vlm):
    server = VLLMServer(lesson_vlm[2], pooling="MEAN", shared=False, progress=False, **SETTINGS)
    start = server.start_in_background()
    yield start
    server.stop()


def pictures(n: int):
    return vision.pictures(vision.scenes(n, 11), 11)  # lesson 10's two pictures


def test_engine_settings_are_the_servers_flags_read_by_vllm():
    assert engine_settings(vllm_args(2)) == {"model_impl": "transformers", "limit_mm_per_prompt": {"image": 2}}
    with pytest.raises(ServingConfigError, match=r"\['port'\] are settings of vLLM's API server"):
        engine_settings(["--port", "8000"])  # rejects a server-only flag, which LLM(port=...) would not take
    with pytest.raises(ServingConfigError, match="vLLM's parser refuses"):
        engine_settings(["--no-such-flag"])


def test_llm_settings_refuse_what_the_server_refuses(lesson_vlm):
    folder = lesson_vlm[2]
    settings = llm_settings(folder, pooling="MEAN", **SETTINGS)
    assert (settings["runner"], settings["convert"], settings["pooler_config"].pooling_type) == (
        "pooling",
        "embed",
        "MEAN",
    )
    assert settings["kv_cache_memory_bytes"] == VLLMServer(folder, shared=False, **SETTINGS).kv_cache_bytes
    assert "runner" not in llm_settings(folder, **SETTINGS)
    with pytest.raises(ServingConfigError, match="To serve at least one request"):  # 1 usable block < 48 tokens
        llm_settings(folder, max_model_len=48, kv_cache_tokens=2 * BLOCK, block_size=BLOCK)
    with pytest.raises(ServingConfigError, match="pooling must be None"):
        llm_settings(folder, pooling="mean")


@pytest.mark.vllm
@pytest.mark.slow
def test_offline_llm_with_pictures_gives_the_models_greedy_tokens(lesson_vlm, embedder_start):
    """``llm.generate({"prompt": "<image> the", "multi_modal_data": {"image": ...}})`` in this process: the prompt
    ids are the lesson's placeholder expansion and the words the model's own greedy ones; ``llm.chat`` (the chat
    template, as the server applies it) gives the same ids. Afterwards this process is as it was, and a second
    engine, a pooling one, embeds a picture as pooling by hand does."""
    import vllm.envs
    from PIL import Image
    from vllm import SamplingParams

    model, tokenizer, folder = lesson_vlm
    threads, set_threads, environment = torch.get_num_threads(), torch.set_num_threads, dict(os.environ)
    greedy = SamplingParams(temperature=0, max_tokens=6)
    with offline_llm(folder, **SETTINGS) as llm:
        for n in (1, 2):
            prompt = " ".join([vision.IMAGE_TOKEN] * n + vision.PROMPT)
            images = [Image.fromarray(p) for p in pictures(n)]
            out = llm.generate({"prompt": prompt, "multi_modal_data": {"image": images}}, greedy, use_tqdm=False)[0]
            ids = vision.prompt_ids(tokenizer, n, model.tokens_per_image)
            ours = model.answer(torch.tensor([ids]), vision.to_pixels(pictures(n)), 6, tokenizer.eos_token_id)[0]
            assert out.prompt_token_ids == ids  # 16 placeholders per picture, then "the"
            assert list(out.outputs[0].token_ids) == ours + [tokenizer.eos_token_id]  # greedy, stopped at EOS
        chat = llm.chat([image_message(pictures(1), "the")], greedy, use_tqdm=False)[0]
        assert chat.prompt_token_ids == vision.prompt_ids(tokenizer, 1, model.tokens_per_image)
    # Rejects an offline_llm that leaves vLLM's marks on the process (a test worker, a Jupyter kernel).
    assert torch.set_num_threads is set_threads and torch.get_num_threads() == threads
    assert dict(os.environ) == environment
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in environment and vllm.envs.VLLM_ENABLE_V1_MULTIPROCESSING  # read live
    with offline_llm(folder, pooling="MEAN", **SETTINGS) as embedder:  # a second engine in this process
        out = embedder.embed({"prompt": "<image> the", "multi_modal_data": {"image": images[0]}}, use_tqdm=False)[0]
    ids = vision.prompt_ids(tokenizer, 1, model.tokens_per_image)
    by_hand = pooled_by_hand(model, tokenizer, ids, pictures(2)[:1])
    assert (torch.tensor(out.outputs.embedding) - by_hand).abs().max().item() <= 1e-5
    # Rejects transformers' classes left decorated by vLLM ("Current vLLM config is not set" once the engine is gone).
    assert transformers.LlavaForConditionalGeneration.from_pretrained(folder).config.image_token_id == ids[0]


def pooled_by_hand(model, tokenizer, ids: list[int], images) -> torch.Tensor:
    """Mean of the final layer norm's outputs over every position (image tokens included), at unit length."""
    seen = {}
    hook = model.lm.transformer.ln_f.register_forward_hook(lambda _m, _i, out: seen.update(h=out))
    with torch.no_grad():
        model(torch.tensor([ids]), None if images is None else vision.to_pixels(images))
    hook.remove()
    return F.normalize(seen["h"][0].mean(0), dim=-1)


@pytest.mark.vllm
@pytest.mark.slow
def test_served_image_embeddings_equal_mean_pooling_by_hand(lesson_vlm, embedder_start):
    model, tokenizer, _ = lesson_vlm
    server = embedder_start.result()
    for n in (1, 2):
        vector, tokens = image_embedding(server, pictures(n), "the")
        ids = vision.prompt_ids(tokenizer, n, model.tokens_per_image)
        assert tokens == len(ids)  # the image tokens are pooled too
        assert (vector - pooled_by_hand(model, tokenizer, ids, pictures(n))).abs().max().item() <= 1e-5
    first, _ = image_embedding(server, pictures(2)[:1], "the")
    second, _ = image_embedding(server, pictures(2)[1:], "the")
    assert (first - second).abs().max().item() > 1e-3  # rejects a server that pools the text alone
    text = "the red circle left ."
    served = embeddings(server, [text])[0]  # plain text through the same server: the LM alone
    ids = tokenizer.convert_tokens_to_ids(text.split())
    assert (served - pooled_by_hand(model, tokenizer, ids, None)).abs().max().item() <= 1e-5
