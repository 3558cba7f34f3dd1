"""Generation: the KV cache changes the work, never the result; batching never mixes rows."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import random_model

from tinyformer import ModelConfig, Transformer
from tinyformer.generate import generate, generate_batch, left_pad, next_token, time_cache_speedup

LOGITS_ATOL = 1e-4  # float32: cached and uncached paths sum the same numbers in a different order
LOGITS_RTOL = 1e-5

CONFIGS = {
    "1-head": ModelConfig(vocab_size=37, n_positions=24, n_embd=32, n_layer=1, n_head=1),
    "2-heads-3-layers": ModelConfig(vocab_size=61, n_positions=40, n_embd=64, n_layer=3, n_head=2),
    "3-heads": ModelConfig(vocab_size=50, n_positions=32, n_embd=96, n_layer=2, n_head=3),
}


def random_prompt(config: ModelConfig, length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (length,), generator=generator).tolist()


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=LOGITS_ATOL, rtol=LOGITS_RTOL)


@pytest.fixture(scope="module")
def model() -> Transformer:
    return random_model(CONFIGS["2-heads-3-layers"], seed=1)


SAMPLING = {"greedy": dict(), "sampled": dict(temperature=1.0, seed=11)}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("prompt_len", [1, 5, 11])
@pytest.mark.parametrize("mode", SAMPLING)
def test_cached_and_uncached_agree_at_every_step(name: str, prompt_len: int, mode: str) -> None:
    config = CONFIGS[name]
    model = random_model(config, seed=prompt_len)
    prompt = random_prompt(config, prompt_len, seed=prompt_len)
    new = config.n_positions - prompt_len  # all the way to the last position row

    cached = generate(model, prompt, new, use_cache=True, **SAMPLING[mode])
    uncached = generate(model, prompt, new, use_cache=False, **SAMPLING[mode])

    assert cached.tokens == uncached.tokens
    assert len(cached.tokens[0]) == new
    assert cached.logits.shape == (1, new, config.vocab_size)
    assert_logits_close(cached.logits, uncached.logits)
    if mode == "greedy":  # greedy really is the argmax of the logits it reports
        assert cached.logits[0].argmax(dim=-1).tolist() == cached.tokens[0]
    else:  # a sampled path visits many tokens, so the cache is checked on varied inputs
        assert len(set(cached.tokens[0])) > 3


def test_uncached_logits_equal_a_plain_forward_pass(model: Transformer) -> None:
    prompt = random_prompt(model.config, 6, seed=3)
    out = generate(model, prompt, 8, use_cache=False)
    full = torch.tensor([out.sequences[0]])  # [1, 14]
    with torch.no_grad():
        expected = model(full)[0, 5:-1]  # the prediction after each of the last 8 prefixes
    assert_logits_close(out.logits[0], expected)


def test_cache_grows_by_one_token_per_step(model: Transformer) -> None:
    config = model.config
    prompt = random_prompt(config, 7, seed=4)
    lengths, nbytes = [], []
    out = generate(
        model, prompt, 5, on_step=lambda step, cache: (lengths.append(len(cache)), nbytes.append(cache.nbytes))
    )

    # Prefill stores the 7 prompt tokens; every decode step adds the one token it fed.
    assert lengths == [7, 8, 9, 10, 11]
    bytes_per_token = 2 * config.n_layer * config.n_embd * 4  # K and V, every layer, float32
    assert nbytes == [bytes_per_token * n for n in lengths]
    # The newest token is never fed, so the final cache holds prompt + new - 1 tokens.
    assert out.cache.shapes() == [(1, config.n_head, 11, config.head_dim)] * config.n_layer


def test_uncached_generation_has_no_cache(model: Transformer) -> None:
    assert generate(model, [1, 2, 3], 2, use_cache=False).cache is None


@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_generation_equals_each_prompt_alone(model: Transformer, use_cache: bool) -> None:
    prompts = [random_prompt(model.config, n, seed=n) for n in (9, 1, 4, 9, 6)]
    new = model.config.n_positions - 9

    batch = generate_batch(model, prompts, new, use_cache=use_cache)

    for row, prompt in enumerate(prompts):
        alone = generate(model, prompt, new, use_cache=use_cache)
        assert batch.tokens[row] == alone.tokens[0], f"row {row} differs from its solo run"
        assert_logits_close(batch.logits[row], alone.logits[0])


def test_batched_cache_holds_padding_and_one_row_per_prompt(model: Transformer) -> None:
    batch = generate_batch(model, [[1, 2, 3, 4], [5]], 3)
    assert batch.cache.shapes()[0] == (2, model.config.n_head, 4 + 2, model.config.head_dim)


def test_left_pad_right_aligns_prompts() -> None:
    ids, mask = left_pad([[7, 8, 9], [5]])
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]


def test_equal_length_2d_tensor_is_a_batch(model: Transformer) -> None:
    prompts = [random_prompt(model.config, 4, seed=s) for s in (1, 2)]
    batch = generate(model, torch.tensor(prompts), 5)
    assert batch.tokens == [generate(model, p, 5).tokens[0] for p in prompts]


# -- the position limit: a sequence holds at most n_positions tokens --------------------------------


@pytest.mark.parametrize("use_cache", [True, False])
def test_prompt_at_the_position_limit(model: Transformer, use_cache: bool) -> None:
    n = model.config.n_positions
    full = random_prompt(model.config, n, seed=5)

    assert generate(model, full, 0, use_cache=use_cache).tokens == [[]]
    with pytest.raises(ValueError, match=rf"n_positions={n}.*at most 0 new tokens"):
        generate(model, full, 1, use_cache=use_cache)
    truncated = generate(model, full, 3, use_cache=use_cache, on_limit="truncate")
    assert truncated.tokens == [[]] and truncated.stop_reason == "n_positions"
    assert len(generate(model, full[:-1], 1, use_cache=use_cache).tokens[0]) == 1


@pytest.mark.parametrize("on_limit", ["error", "truncate"])
def test_prompt_one_past_the_position_limit_is_a_clear_error(model: Transformer, on_limit: str) -> None:
    n = model.config.n_positions
    too_long = random_prompt(model.config, n + 1, seed=6)
    with pytest.raises(ValueError, match=rf"prompt has {n + 1} tokens.*at most {n} tokens"):
        generate(model, too_long, 1, on_limit=on_limit)
    with pytest.raises(ValueError, match="prompt has"):
        generate_batch(model, [[1], too_long], 0)


def test_truncate_stops_exactly_at_the_limit(model: Transformer) -> None:
    n = model.config.n_positions
    out = generate(model, [1, 2, 3], n, on_limit="truncate")
    assert len(out.sequences[0]) == n
    assert out.stop_reason == "n_positions"
    assert generate(model, [1, 2, 3], 4).stop_reason == "max_new_tokens"


def test_batch_limit_is_set_by_the_longest_prompt(model: Transformer) -> None:
    n = model.config.n_positions
    with pytest.raises(ValueError, match="at most 2 new tokens"):
        generate_batch(model, [[1], [1] * (n - 2)], 3)


# -- sampling ----------------------------------------------------------------------------------------


def test_sampling_is_reproducible_with_a_seed(model: Transformer) -> None:
    options = dict(temperature=1.5, seed=123)
    first = generate(model, [1, 2, 3], 20, **options).tokens
    assert generate(model, [1, 2, 3], 20, **options).tokens == first
    assert generate(model, [1, 2, 3], 20, temperature=1.5, seed=124).tokens != first
    assert generate(model, [1, 2, 3], 20, use_cache=False, **options).tokens == first


def test_top_k_samples_only_among_the_k_best(model: Transformer) -> None:
    out = generate(model, [4, 5], 25, temperature=2.0, top_k=3, seed=7)
    top3 = out.logits[0].topk(3, dim=-1).indices  # [steps, 3]
    assert all(token in allowed for token, allowed in zip(out.tokens[0], top3.tolist(), strict=True))
    assert out.tokens != generate(model, [4, 5], 25).tokens, "sampling at temperature 2 should leave greedy's path"


def test_top_k_one_and_temperature_zero_are_greedy(model: Transformer) -> None:
    greedy = generate(model, [4, 5], 10).tokens
    assert generate(model, [4, 5], 10, temperature=1.0, top_k=1, seed=0).tokens == greedy
    assert generate(model, [4, 5], 10, seed=99).tokens == greedy


def test_next_token_follows_the_distribution() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 0.0]]))  # token 3 has probability 0
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([next_token(logits, 1.0, None, generator) for _ in range(2000)])[:, 0]
    freq = torch.bincount(draws, minlength=4) / 2000.0
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1, 0.0]), atol=0.04, rtol=0)


# -- stopping at EOS ----------------------------------------------------------------------------------


def test_generation_stops_at_eos(model: Transformer) -> None:
    greedy = generate(model, [1, 2, 3], 10).tokens[0]
    eos = greedy[3]
    cut = greedy[: greedy.index(eos) + 1]
    out = generate(model, [1, 2, 3], 10, eos_token_id=eos)
    assert out.tokens == [cut] and out.stop_reason == "eos"


def test_batched_rows_stop_at_eos_on_their_own(model: Transformer) -> None:
    prompts = [[1, 2, 3], [9, 8]]
    solo = [generate(model, p, 12).tokens[0] for p in prompts]
    eos = solo[0][2]
    out = generate_batch(model, prompts, 12, eos_token_id=eos)
    for row, tokens in enumerate(solo):
        expected = tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
        assert out.tokens[row] == expected


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, message",
    [
        ([], "empty"),
        ("the cat", "list of integer token ids"),
        ([1.5, 2.0], "list of integer token ids"),
        (torch.zeros(3), "integer token ids"),
        (torch.zeros(1, 2, 3, dtype=torch.long), r"\[T\] or \[B, T\]"),
    ],
)
def test_bad_prompts_are_clear_errors(model: Transformer, prompt, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(model, prompt, 1)


def test_unknown_token_id_is_a_clear_error(model: Transformer) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, [model.config.vocab_size], 1)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(max_new_tokens=-1), "non-negative"),
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=1.0, top_k=0), "top_k"),
        (dict(on_limit="wrap"), "on_limit"),
    ],
)
def test_bad_options_are_clear_errors(model: Transformer, options: dict, message: str) -> None:
    options = {"max_new_tokens": 2, **options}
    with pytest.raises(ValueError, match=message):
        generate(model, [1, 2], **options)


def test_generate_batch_wants_a_list_of_prompts(model: Transformer) -> None:
    with pytest.raises(ValueError, match="list of token-id lists"):
        generate_batch(model, [1, 2, 3], 1)


def test_generation_leaves_the_model_in_its_mode(model: Transformer) -> None:
    model.train()
    try:
        generate(model, [1], 1)
        assert model.training
    finally:
        model.eval()


# ---- time_cache_speedup: what it runs and returns (its timings are the benchmarks' business) -------------------------


def test_time_cache_speedup_puts_each_uncached_run_between_two_cached_ones(model, monkeypatch) -> None:
    calls = []

    def recording_generate(*args, use_cache=True, **kwargs):
        calls.append(use_cache)
        return generate(*args, use_cache=use_cache, **kwargs)

    module = importlib.import_module("tinyformer.generate")  # the module: the package's `generate` is the function
    monkeypatch.setattr(module, "generate", recording_generate)
    prompts = [random_prompt(model.config, 6, seed=3), random_prompt(model.config, 6, seed=4)]
    result = time_cache_speedup(model, prompts, 5, repeats=2)

    assert calls == [True, True, False, True, False, True]  # warm-up, then cached/uncached alternating
    expected = generate(model, prompts, 5).tokens
    assert result.cached_tokens == result.uncached_tokens == expected  # both ways, the tokens of generate
    assert result.cached_seconds > 0 and result.uncached_seconds > 0
    assert result.speedup == result.uncached_seconds / result.cached_seconds


@pytest.mark.parametrize("repeats", [0, -1, 1.5, True])
def test_time_cache_speedup_refuses_a_repeat_count_that_is_not_a_positive_integer(model, repeats) -> None:
    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        time_cache_speedup(model, [1, 2, 3], 2, repeats=repeats)
