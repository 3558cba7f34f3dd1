"""Lessons 07-09 and 18 exercises: talking to the server, vLLM's KV capacity, batching many requests, the layers
of each pipeline stage.

Expected answers: ``tinyformer.serving`` (the client's headers), ``tinyformer.generate`` (what fits in
the position table, left padding), ``tinyformer.vllm_rules`` (vLLM's block arithmetic) and
``tinyformer.memory.architecture.stage_layer_ranges`` (vLLM's split of layers over pipeline stages). No server is
needed: these are the computations the lessons then check against a real one.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from tinyformer import vllm_rules
from tinyformer.checks.core import Case, compare_numbers, compare_tensors, run_check, tensors_match
from tinyformer.generate import left_pad, tokens_that_fit

# --------------------------------------------------------------------------------------------------
# Lesson 07: the API key travels in a header
# --------------------------------------------------------------------------------------------------

API_KEYS = ("classroom-key", "q2VfX1u8tWkR0pHjLzY5bA", None)


def check_auth_header(fn, *, quiet: bool = False):
    """``fn(api_key)`` -> the HTTP headers a request to /v1/... needs: ``{}`` when the key is None."""
    from tinyformer.serving.server import VLLMServer  # the package's client sends exactly these

    def make_cases():
        return [
            Case(f"api_key={key!r}", (key,), VLLMServer.headers.fget(SimpleNamespace(api_key=key))) for key in API_KEYS
        ]

    def compare(got, expected):
        if not isinstance(got, dict):
            return f"expected a dict of headers like {expected!r}, got {got!r} ({type(got).__name__})."
        return None if got == expected else f"expected {expected!r}, got {got!r}."

    def no_bearer(got, case):
        key = case.args[0]
        if key and isinstance(got, dict) and key in got.values():
            return "the value names the scheme first: 'Bearer ' followed by the key."
        return None

    def header_for_none(got, case):
        if case.args[0] is None and got:
            return "without a key, send no Authorization header at all (return an empty dict)."
        return None

    return run_check(
        "check_auth_header",
        fn,
        make_cases,
        compare,
        diagnoses=(no_bearer, header_for_none),
        hint="one header, 'Authorization', whose value is 'Bearer <the key>'; no key, no header.",
        quiet=quiet,
    )


# --------------------------------------------------------------------------------------------------
# Lesson 08: max_model_len caps prompt + output; the KV cache comes in blocks
# --------------------------------------------------------------------------------------------------

FIT_CASES = ((5, 128), (100, 256), (256, 256), (1, 2048))  # (prompt tokens, max_model_len)


def check_max_tokens_allowed(fn, *, quiet: bool = False):
    """``fn(prompt_tokens, max_model_len)`` -> the largest ``max_tokens`` a request with that prompt may ask for."""

    def make_cases():
        cases = []
        for prompt, limit in FIT_CASES:
            expected = tokens_that_fit(limit, [[0] * prompt], limit, on_limit="truncate")  # the package's rule
            cases.append(Case(f"prompt of {prompt} tokens, max_model_len={limit}", (prompt, limit), expected))
        return cases

    def off_by_one(got, case):
        if isinstance(got, int) and abs(got - case.expected) == 1:
            return "off by one: prompt + output may use exactly max_model_len positions, no more, no fewer."
        return None

    def whole_limit(got, case):
        if got == case.args[1]:
            return "max_model_len counts the prompt too: only what the prompt leaves is available for output."
        return None

    return run_check(
        "check_max_tokens_allowed",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(whole_limit, off_by_one),
        hint="every token of the prompt and of the output takes one position; there are max_model_len of them.",
        quiet=quiet,
    )


# (KV bytes, bytes per token, block size): CPU blocks of 128 tokens and GPU blocks of 16.
BLOCK_CASES = ((2_621_440, 2048, 128), (2_700_000, 2048, 128), (1_000_000, 4096, 16), (262_143, 2048, 128))


def check_kv_blocks(fn, *, quiet: bool = False):
    """``fn(kv_cache_bytes, bytes_per_token, block_size)`` -> how many whole KV blocks vLLM can make."""

    def make_cases():
        return [
            Case(
                f"{nbytes:,} bytes, {per_token:,} B per token, blocks of {block}",
                (nbytes, per_token, block),
                vllm_rules.kv_cache_blocks(nbytes, per_token, block),
            )
            for nbytes, per_token, block in BLOCK_CASES
        ]

    def fractional(got, case):
        nbytes, per_token, block = case.args
        if isinstance(got, float) and math.isclose(got, nbytes / (per_token * block)):
            return "vLLM only makes whole blocks; the bytes left over that can't fill a block stay unused."
        return None

    def tokens_not_blocks(got, case):
        nbytes, per_token, block = case.args
        if got in (nbytes // per_token, case.expected * block):
            return "that counts tokens; a block holds block_size tokens."
        return None

    return run_check(
        "check_kv_blocks",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(fractional, tokens_not_blocks),
        hint="a block holds block_size tokens of bytes_per_token bytes each; count how many whole blocks fit.",
        quiet=quiet,
    )


# (KV bytes, bytes per token, block size, max_model_len): the lesson's 1,280-token CPU server first, then a
# budget with leftover bytes, then a max_model_len that leaves a request's last block partly empty.
CAPACITY_CASES = (
    (2_621_440, 2048, 128, 256),
    (2_700_000, 2048, 128, 256),
    (2_621_440, 2048, 128, 200),
    (4_000_000, 1024, 16, 1000),
    (786_432, 2048, 128, 128),
)


def check_kv_capacity(fn, *, quiet: bool = False):
    """``fn(kv_cache_bytes, bytes_per_token, block_size, max_model_len)`` -> (tokens, max_concurrency) as vLLM
    logs them: "KV cache size: <tokens> tokens, Maximum concurrency for <max_model_len> tokens per request: <x>x"."""

    def make_cases():
        cases = []
        for nbytes, per_token, block, limit in CAPACITY_CASES:
            capacity = vllm_rules.vllm_kv_capacity(nbytes, per_token, block, limit)
            label = f"{nbytes:,} bytes, {per_token:,} B per token, blocks of {block}, max_model_len={limit}"
            cases.append(Case(label, (nbytes, per_token, block, limit), (capacity.tokens, capacity.max_concurrency)))
        return cases

    def compare(got, expected):
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return f"expected a pair (tokens, max_concurrency) like {expected!r}, got {got!r}."
        for what, g, e in zip(("tokens", "max_concurrency"), got, expected, strict=True):
            problem = compare_numbers(rel=1e-6)(g, e)
            if problem:
                return f"{what}: {problem}"
        return None

    def partial_blocks(got, case):
        nbytes, per_token, block, limit = case.args
        if limit % block and math.isclose(got[1], nbytes // (per_token * block) * block / limit, rel_tol=1e-6):
            return (
                "a request's last block is a whole block even when partly used: a request of max_model_len "
                "tokens takes ceil(max_model_len / block_size) blocks."
            )
        return None

    def ignores_blocks(got, case):
        nbytes, per_token, block, limit = case.args
        if nbytes % (per_token * block) and math.isclose(got[1], nbytes / per_token / limit, rel_tol=1e-6):
            return "count whole blocks first: leftover bytes that can't fill a block hold no tokens."
        return None

    return run_check(
        "check_kv_capacity",
        fn,
        make_cases,
        compare,
        diagnoses=(ignores_blocks, partial_blocks),
        hint="whole blocks in the budget; blocks one max_model_len request needs (rounded up); concurrency = "
        "their ratio; tokens = int(concurrency x max_model_len).",
        quiet=quiet,
    )


# --------------------------------------------------------------------------------------------------
# Lesson 09: many requests at once
# --------------------------------------------------------------------------------------------------

# (KV cache token slots, tokens per request, block size)
FILL_CASES = ((1280, 160, 128), (1280, 256, 128), (4096, 100, 16), (2560, 1000, 128), (1280, 100, 128))


def check_concurrency_to_fill_cache(fn, *, quiet: bool = False):
    """``fn(kv_cache_tokens, tokens_per_request, block_size)`` -> the fewest requests of ``tokens_per_request``
    tokens (prompt + output) that, running at once, need every block vLLM gives to requests (all but the null
    block), so that more must wait in the queue."""

    def make_cases():
        cases = []
        for slots, per_request, block in FILL_CASES:
            # A cache of `slots` tokens, with 1-byte tokens so bytes and token slots are the same number.
            capacity = vllm_rules.vllm_kv_capacity(slots, 1, block, max_model_len=per_request)
            label = f"{slots:,} token slots, {per_request} tokens per request, blocks of {block}"
            expected = math.ceil(capacity.usable_blocks / capacity.blocks_per_request)
            cases.append(Case(label, (slots, per_request, block), expected))
        return cases

    def token_division(got, case):
        slots, per_request, _ = case.args
        if got in (slots // per_request, math.ceil(slots / per_request)) and got != case.expected:
            return (
                "the cache is handed out in blocks: a request holds ceil(tokens / block_size) whole blocks, "
                "so count blocks, not tokens."
            )
        return None

    def null_block(got, case):
        slots, per_request, block = case.args
        if got == math.ceil(slots // block / vllm_rules.blocks_for_tokens(per_request, block)) != case.expected:
            return "vLLM keeps one block back (the null block): requests share one block fewer than the cache holds."
        return None

    def rounded_down(got, case):
        if got == case.expected - 1:
            return "rounded down: with that many requests some blocks are still free; one more fills the cache."
        return None

    return run_check(
        "check_concurrency_to_fill_cache",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(token_division, null_block, rounded_down),
        hint=(
            "blocks in the cache less the null block, blocks per request (rounded up), then how many requests "
            "use them all (rounded up)."
        ),
        quiet=quiet,
    )


PAD_PROMPTS = (([5, 6, 7], [8, 9]), ([4], [4, 5, 6, 7], [9, 9]), ([3, 1, 4],))


def check_left_pad(fn, *, quiet: bool = False):
    """``fn(prompts)``: token-id lists of different lengths -> (ids [B, W], mask [B, W]), each prompt
    right-aligned after pad id 0 and mask True on real tokens, so every row's newest token is in the last column."""

    def make_cases():
        cases = []
        for prompts in PAD_PROMPTS:
            prompts = [list(p) for p in prompts]
            cases.append(Case(f"prompt lengths {[len(p) for p in prompts]}", (prompts,), left_pad(prompts)))
        return cases

    def compare(got, expected):
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return f"expected a pair (ids, mask), got {type(got).__name__}."
        for what, g, e in zip(("ids", "mask"), got, expected, strict=True):
            problem = compare_tensors(atol=0, rtol=0)(g, e)
            if problem:
                return f"{what}: {problem}"
        return None

    def right_padded(got, case):
        ids, _ = got
        prompts = case.args[0]
        width = max(len(p) for p in prompts)
        right = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
        if tensors_match(ids, right):
            return (
                "that is right padding: put the pads *before* each prompt, so its newest token is in the last column."
            )
        return None

    def inverted_mask(got, case):
        _, mask = got
        if tensors_match(mask, ~case.expected[1]):
            return "the mask is inverted: True marks real tokens, False the pads."
        return None

    return run_check(
        "check_left_pad",
        fn,
        make_cases,
        compare,
        diagnoses=(right_padded, inverted_mask),
        hint="width = the longest prompt; each row is pads (id 0) then the prompt; the mask is False on pads, "
        "True on real tokens.",
        quiet=quiet,
    )


# --------------------------------------------------------------------------------------------------
# Lesson 18: pipeline parallelism gives each stage whole layers
# --------------------------------------------------------------------------------------------------

# (n_layer, pipeline_parallel_size): even splits, then remainders of 1 and 2 (where they go is the point), one stage.
STAGE_CASES = ((2, 2), (12, 4), (7, 3), (10, 4), (5, 2), (3, 1))


def _split(n_layer: int, sizes: list[int]) -> list[list[int]]:
    """Layers 0 .. n_layer - 1 cut into consecutive stages of the given sizes."""
    starts = [sum(sizes[:stage]) for stage in range(len(sizes))]
    return [list(range(start, start + size)) for start, size in zip(starts, sizes, strict=True)]


def check_stage_layers(fn, *, quiet: bool = False):
    """``fn(n_layer, pipeline_parallel_size)`` -> the layer numbers each pipeline stage holds, as vLLM splits them:
    a list with one list per stage, e.g. ``[[0, 1], [2, 3, 4], [5, 6]]`` for 7 layers over 3 stages."""
    from tinyformer.memory.architecture import stage_layer_ranges  # the package's rule (vLLM 0.32's get_pp_indices)

    def make_cases():
        return [
            Case(f"n_layer={n}, pipeline_parallel_size={pp}", (n, pp), [list(s) for s in stage_layer_ranges(n, pp)])
            for n, pp in STAGE_CASES
        ]

    def compare(got, expected):
        if not isinstance(got, (list, tuple)) or not all(isinstance(s, (list, tuple, range)) for s in got):
            return f"expected one list of layer numbers per stage, like {expected!r}, got {got!r}."
        got = [list(stage) for stage in got]
        return None if got == expected else f"expected {expected!r}, got {got!r}."

    def counts_not_layers(got, case):
        if isinstance(got, (list, tuple)) and list(got) == [len(stage) for stage in case.expected]:
            return "those are how many layers each stage holds; return the layer numbers themselves."
        return None

    def remainder_elsewhere(got, case):
        n, pp = case.args
        base, extra = divmod(n, pp)
        if not extra or not isinstance(got, (list, tuple)):
            return None
        to_last = _split(n, [base] * (pp - 1) + [base + extra])
        to_first = _split(n, [base + 1] * extra + [base] * (pp - extra))
        got = [list(stage) for stage in got if isinstance(stage, (list, tuple, range))]
        if got in (to_last, to_first):
            return (
                "vLLM gives the layers left over one each to the stages before the last, starting from the "
                "second-to-last: the last stage also runs the final norm and the LM head."
            )
        return None

    return run_check(
        "check_stage_layers",
        fn,
        make_cases,
        compare,
        diagnoses=(counts_not_layers, remainder_elsewhere),
        hint="n_layer // pipeline_parallel_size layers per stage, in order; the leftover layers go one each to the "
        "stages just before the last one.",
        quiet=quiet,
    )
