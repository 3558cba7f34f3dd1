"""vLLM's structured outputs against the mask written by hand (tinyformer.structured), on lesson 14's trained
nano-llama served by the real vLLM server (one start for the module).

vLLM 0.32 takes the constraint in the request field ``structured_outputs`` ({"regex": ...}, {"choice": [...]},
{"json": ...}); its "auto" backend picks xgrammar, which reads this word-level tokenizer as a RAW vocabulary (each
token's string, nothing between tokens), the text our automaton sees. The older ``guided_regex`` field is ignored
with a warning in the log: HTTP 200 and unconstrained text. A JSON schema cannot be met with this vocabulary (no
token holds a brace): vLLM fails that request with HTTP 500 from inside the engine."""

from __future__ import annotations

import re

import pytest

from tinyformer.export import export_hf
from tinyformer.generate import generate
from tinyformer.serving import VLLMServer, run_load
from tinyformer.serving.client import RequestRejected, complete
from tinyformer.structured import choice_pattern, for_tokenizer, generate_structured
from tinyformer.train import load_or_train

MAX_NEW = 12
SENTENCE = r"(cat|dog)s?(run|sleep|jump)s?(today|again)\."
CASES = [  # (prompt, pattern for what follows it): grammar text is the tokens joined without spaces
    ("the", SENTENCE),
    ("the cat near the", SENTENCE),
    ("the dogs", r"(near|with)the(fox|foxes)(run|sleep|hide)s?\."),
    ("the mice", r"(sleep|run|eat)s?(today|again|often)?\."),
    ("the bird . the", r"(horse|frog)s?(near|under)the(wolf|wolves)(swim|wait)s?\."),
]
CHOICES = ["cat", "dog", "mice", "wolves"]  # no token is a proper prefix of one: see test_structured's xgrammar test
# xgrammar warns once, from C++, when it builds its view of this vocabulary: the mark of the xgrammar backend.
XGRAMMAR_RAW_VOCAB = "Using RAW VocabType by default"
GUIDED_WARNING = "Request contains the removed guided-decoding field(s) ['guided_regex'], which are ignored"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model, tokenizer = load_or_train("nano", arch="llama", progress=False)
    path = export_hf(model, tokenizer, tmp_path_factory.mktemp("structured") / "nano-llama")
    with VLLMServer(path, kv_cache_tokens=16 * 128, max_num_seqs=8, shared=False, progress=False) as server:
        yield model, tokenizer, server


def ours(model, tokenizer, prompt: str, pattern: str):
    return generate_structured(model, tokenizer.encode(prompt), for_tokenizer(pattern, tokenizer), MAX_NEW)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize(("prompt", "pattern"), CASES)
def test_a_regex_request_gives_the_tokens_of_our_mask(served, prompt, pattern):
    model, tokenizer, server = served
    reply = complete(server, prompt, max_tokens=MAX_NEW, structured_outputs={"regex": pattern})
    expected = ours(model, tokenizer, prompt, pattern)
    assert expected.stop_reason == "eos"
    assert reply.token_ids == expected.tokens and reply.finish_reason == "stop"
    assert re.fullmatch(pattern, "".join(reply.text.split()))  # the text vLLM returns, spaces taken out


@pytest.mark.vllm
@pytest.mark.slow
def test_the_constraint_changed_what_the_model_says(served):
    """Without a grammar the served model writes its own sentence, which breaks these patterns."""
    model, tokenizer, server = served
    automaton = for_tokenizer(CASES[0][1], tokenizer)
    for prompt, pattern in CASES:
        plain = complete(server, prompt, max_tokens=MAX_NEW)
        assert plain.token_ids == generate(model, tokenizer.encode(prompt), MAX_NEW).tokens[0]
        assert re.fullmatch(pattern, automaton.text_of(plain.token_ids)) is None


@pytest.mark.vllm
@pytest.mark.slow
def test_a_choice_request_is_the_alternation_of_the_choices(served):
    model, tokenizer, server = served
    for prompt in ("the", "the cat near the", "the dog with the"):
        reply = complete(server, prompt, max_tokens=MAX_NEW, structured_outputs={"choice": CHOICES})
        assert reply.token_ids == ours(model, tokenizer, prompt, choice_pattern(CHOICES)).tokens
        assert reply.text.strip() in CHOICES


@pytest.mark.vllm
@pytest.mark.slow
def test_the_auto_backend_is_xgrammar_reading_a_raw_vocabulary(served):
    _, _, server = served
    complete(server, "the", max_tokens=2, structured_outputs={"regex": SENTENCE})
    assert XGRAMMAR_RAW_VOCAB in server.log_text()


@pytest.mark.vllm
@pytest.mark.slow
def test_the_removed_guided_regex_field_is_ignored_with_a_warning(served):
    model, tokenizer, server = served
    reply = complete(server, "the", max_tokens=MAX_NEW, guided_regex=SENTENCE)  # HTTP 200, no constraint
    assert reply.token_ids == generate(model, tokenizer.encode("the"), MAX_NEW).tokens[0]
    assert GUIDED_WARNING in server.log_text()


@pytest.mark.vllm
@pytest.mark.slow
def test_cost_per_token_of_the_mask_here_and_in_vllm(served):
    """Measured and printed, not asserted: the share of a decoding step that masking takes, by hand and in vLLM.
    Not a solo test: nothing asserted depends on speed, so it uses the module's server in the two-worker run instead
    of starting one of its own afterwards (one vLLM start and ~24 s of the solo run; lesson 17 prints the same)."""
    model, tokenizer, server = served
    runs = [ours(model, tokenizer, prompt, pattern) for prompt, pattern in CASES * 4]
    tokens = sum(len(r.tokens) for r in runs)
    mask_us = 1e6 * sum(r.mask_seconds for r in runs) / tokens
    step_us = 1e6 * sum(r.step_seconds for r in runs) / tokens
    prompts = [prompt for prompt, _ in CASES] * 4
    ms_per_token = {}
    for name, extra in (("plain", {}), ("regex", {"structured_outputs": {"regex": SENTENCE}})):
        run_load(server, prompts[:1], concurrency=1, max_tokens=MAX_NEW, **extra)  # warm-up: the grammar compiles
        load = run_load(server, prompts, concurrency=1, max_tokens=MAX_NEW, **extra)  # one sequence at a time
        ms_per_token[name] = 1e3 * load.seconds / load.completion_tokens
    print(f"\nby hand: mask {mask_us:.0f} us of a {step_us:.0f} us step per token ({mask_us / step_us:.1%})")
    print(
        f"vLLM, one request at a time, HTTP included: {ms_per_token['plain']:.2f} ms/token plain, "
        f"{ms_per_token['regex']:.2f} ms/token with the regex"
    )
    assert mask_us > 0 and all(v > 0 for v in ms_per_token.values())


@pytest.mark.vllm
@pytest.mark.slow
def test_a_json_schema_no_token_can_start_fails_the_request_inside_the_engine(served):
    """No token of this word-level vocabulary holds a '{' or a '"': xgrammar masks every token, the engine still
    picks one (end-of-text), the grammar rejects it and vLLM ends the request with HTTP 500. The server lives on.
    By hand the same impossibility is a ValueError before any decoding. (Last in the module: it errs on purpose.)"""
    model, tokenizer, server = served
    schema = {"type": "object", "properties": {"animal": {"type": "string"}}}
    with pytest.raises(RequestRejected, match="HTTP 500"):
        complete(server, "the", max_tokens=MAX_NEW, structured_outputs={"json": schema})
    assert "grammar rejected tokens [0]" in server.log_text()
    with pytest.raises(ValueError, match="no sequence of this vocabulary's tokens matches"):
        for_tokenizer(r"\{.*\}", tokenizer)
    reply = complete(server, "the", max_tokens=MAX_NEW, structured_outputs={"regex": SENTENCE})
    assert reply.token_ids == ours(model, tokenizer, "the", SENTENCE).tokens
