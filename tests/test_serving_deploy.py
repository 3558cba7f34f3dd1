"""Deploying questions answered against a real vLLM server (issue 25): a model folder that ships its own config class
(``trust_remote_code``), an export without a chat template, and streamed replies.

One server start (the remote-code export, with the flag) answers every request-level test; one start without the
flag is refused by vLLM itself.
"""

from __future__ import annotations

import json
import threading

import httpx
import psutil
import pytest
from test_serving_server import decisive_model

from tinyformer.export import export_hf
from tinyformer.export.folder import REMOTE_CODE_FILE
from tinyformer.export.gpt2 import REMOTE_CODE_MARK, REMOTE_MODEL_TYPE
from tinyformer.generate import generate
from tinyformer.serving import VLLMServer, VLLMStartupError, complete, run_load
from tinyformer.tokenizer import build_tokenizer

pytestmark = pytest.mark.vllm

# vLLM 0.32's own words, copied from its answers on this box.
NO_TEMPLATE = (
    "As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat template if "
    "the tokenizer does not define one."
)
PASS_THE_FLAG = "Please pass the argument `trust_remote_code=True` to allow custom code to be run."
# vLLM's own hint (transformers_utils/config.py) is raised only when transformers says "requires you to execute the
# configuration file"; transformers 5 words it differently, so a learner never sees this one.
VLLM_HINT = (
    "Failed to load the model config. If the model is a custom model not yet available in the HuggingFace "
    "transformers library, consider setting `trust_remote_code=True` in LLM or using the `--trust-remote-code` "
    "flag in the CLI."
)
PROMPTS = ["the cat near the dogs", "the birds with the fox", "the horse behind the wolves"]


@pytest.fixture(scope="module")
def remote_export(tmp_path_factory):
    tokenizer, model = build_tokenizer(), decisive_model()
    folder = tmp_path_factory.mktemp("deploy") / "micro-remote"
    export_hf(model, tokenizer, folder, chat_template=None, remote_code=True)
    return model, tokenizer, folder


@pytest.fixture(scope="module")
def remote_server(remote_export):
    with VLLMServer(
        remote_export[2],
        kv_cache_tokens=1280,
        trust_remote_code=True,
        log_iterations=True,
        shared=False,
        progress=False,
    ) as server:
        yield server


def test_remote_code_export_names_its_own_class(remote_export):
    folder = remote_export[2]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == REMOTE_MODEL_TYPE and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["auto_map"]["AutoConfig"] == "configuration_tinyformer.TinyformerGPT2Config"
    assert (folder / REMOTE_CODE_FILE).is_file()
    assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text())


def test_vllm_refuses_the_folder_without_the_flag(remote_export, tmp_path):
    with pytest.raises(VLLMStartupError) as refused:
        VLLMServer(remote_export[2], kv_cache_tokens=1280, shared=False, progress=False).start()
    folder = remote_export[2]
    assert refused.value.root_cause == (  # transformers' words, under vLLM's "Value error, "
        f"The repository {folder} contains custom code which must be executed to correctly load the "
        f"model. You can inspect the repository content at {folder} ."
    )
    log = refused.value.log_path.read_text()
    assert f"Error parsing config for {folder}: {refused.value.root_cause}" in log and PASS_THE_FLAG in log
    assert VLLM_HINT not in log
    assert REMOTE_CODE_MARK not in log  # nothing from the folder ran


def test_with_the_flag_the_same_greedy_tokens(remote_server, remote_export):
    model, tokenizer, _ = remote_export
    for prompt in PROMPTS:
        reply = complete(remote_server, prompt, max_tokens=12, ignore_eos=True)
        assert reply.token_ids == generate(model, tokenizer(prompt)["input_ids"], 12).tokens[0], prompt


def test_the_folders_code_ran_inside_the_servers_processes(remote_server):
    group = {remote_server.pid, *(p.pid for p in psutil.Process(remote_server.pid).children(recursive=True))}
    ran_in = [int(line.split()[-2]) for line in remote_server.log_text().splitlines() if REMOTE_CODE_MARK in line]
    assert ran_in and set(ran_in) <= group


def test_chat_without_a_template_is_refused_in_vllms_words(remote_server):
    body = {"model": remote_server.model, "messages": [{"role": "user", "content": "the cat"}], "max_tokens": 4}
    response = httpx.post(f"{remote_server.api_url}/chat/completions", json=body, headers=remote_server.headers)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == NO_TEMPLATE


def test_streamed_deltas_join_to_the_greedy_reply(remote_server):
    client = remote_server.client()
    for prompt in PROMPTS:
        whole = complete(remote_server, prompt, max_tokens=12, ignore_eos=True)
        chunks = list(
            client.completions.create(
                model=remote_server.model,
                prompt=prompt,
                max_tokens=12,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True, "return_token_ids": True},
            )
        )
        ids = [i for chunk in chunks for i in (chunk.choices[0].model_extra or {}).get("token_ids") or []]
        assert ids == whole.token_ids, prompt
        assert "".join(chunk.choices[0].text for chunk in chunks) == whole.text
        assert len([c for c in chunks if c.choices[0].text]) > 1  # the reply came in pieces


def test_asyncio_is_one_thread_and_a_semaphore_of_one_sends_one_request_per_engine_step(remote_server):
    before = len(remote_server.iterations())
    load = run_load(remote_server, PROMPTS * 3, concurrency=1, max_tokens=8, ignore_eos=True)
    sent = sum(len(reply.prompt_token_ids) + 8 - 1 for reply in load.replies)  # prompts, then 7 decode steps each
    steps = remote_server.iterations_covering(before, sent)  # waits for the last steps' log lines, written just after
    assert len({reply.thread_id for reply in load.replies}) == 1  # nine coroutines, one thread
    assert load.replies[0].thread_id == threading.get_ident()  # no running loop here: asyncio.run in this thread
    assert {step.requests for step in steps} == {1}  # every engine step held exactly one request
    assert len(steps) >= 9 * 8  # so 9 requests of 8 tokens took at least one step per token
