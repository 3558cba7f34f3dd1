"""The llama architecture of the one Transformer class: rotary positions, RMSNorm, SwiGLU, grouped-query attention.

Every test builds small models with random weights; test_model.py covers the GPT-2 path this shares."""

from __future__ import annotations

import pytest
import torch

from tinyformer.config import ModelConfig
from tinyformer.generate import generate, generate_batch
from tinyformer.kv_cache import KVCache
from tinyformer.memory.measure import kv_cache_formula_bytes
from tinyformer.model import Transformer
from tinyformer.positions import apply_rotary

ATOL = 1e-5  # float32: the same sums taken in another order differ by ~1e-6 at these sizes
VOCAB = 41


def llama(n_kv_head: int, n_head: int = 4, seed: int = 0, **overrides) -> Transformer:
    """A 2-layer llama (head_dim 16) whose every weight, norm gains included, is random, in eval mode."""
    with pytest.warns(UserWarning, match="head size"):  # head_dim 16: fine in PyTorch, not for vLLM's CPU kernel
        config = ModelConfig(
            vocab_size=VOCAB, n_positions=32, n_embd=16 * n_head, n_layer=2, n_head=n_head, arch="llama",
            n_kv_head=n_kv_head, **overrides,
        )  # fmt: skip
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if ".ln_" in name else 0.2 * noise)
    return model


def ids_of(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ----- the config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(arch="llama", n_head=4, n_kv_head=3), r"n_head=4 is not divisible by n_kv_head=3.*\[1, 2, 4\]"),
        (dict(arch="llama", n_head=4, n_kv_head=0), r"n_kv_head must be a positive integer"),
        (dict(arch="mistral"), r"unknown arch 'mistral'; choose one of \['gpt2', 'llama'\]"),
        (dict(arch="gpt2", n_head=4, n_kv_head=2), r"grouped-query attention is part of arch='llama'"),
        (dict(arch="gpt2", tie_word_embeddings=False), r"arch='gpt2' reads its head from the token table"),
    ],
)
def test_bad_configs_say_what_to_change(fields, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**dict(vocab_size=11, n_positions=8, n_embd=128, n_layer=1, n_head=4), **fields})


def test_presets_take_the_arch_and_kv_heads_as_overrides():
    config = ModelConfig.preset("micro", vocab_size=50, arch="llama", n_kv_head=1)
    assert (config.arch, config.n_head, config.n_kv_head, config.group_size, config.head_dim) == ("llama", 4, 1, 4, 32)
    assert ModelConfig.preset("micro", vocab_size=50).n_kv_head == 4  # default: one K/V head per query head
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_llama_has_no_position_table_and_no_biases():
    model = llama(n_kv_head=2)
    names = [name for name, _ in model.named_parameters()]
    assert not any("wpe" in name or name.endswith(".bias") for name in names)
    c_attn = model.transformer.h[0].attn.c_attn.weight
    assert tuple(c_attn.shape) == (64 + 2 * 2 * 16, 64)  # q: 4 heads, k and v: 2 heads each, of 16 dims
    assert model.lm_head.weight is model.transformer.wte.weight
    untied = llama(n_kv_head=2, tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight


def test_swiglu_keeps_the_gelu_mlps_parameter_count_at_8_thirds_width():
    config = ModelConfig.preset("micro", vocab_size=50, arch="llama")
    swiglu = sum(p.numel() for p in Transformer(config).transformer.h[0].mlp.parameters())
    gpt2 = Transformer(ModelConfig.preset("micro", vocab_size=50))
    gelu = sum(p.numel() for p in gpt2.transformer.h[0].mlp.parameters())
    assert config.mlp_hidden == 344 and swiglu == 3 * 128 * 344  # 8/3 x 128 = 341.3, rounded up to a multiple of 8
    assert abs(swiglu - gelu) / gelu < 0.01


# ----- the parts ---------------------------------------------------------------------------------


def test_rotary_scores_depend_only_on_the_distance():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 16, generator=g), torch.randn(1, 16, generator=g)

    def score(m: int, n: int) -> float:
        return float(apply_rotary(q, torch.tensor([m])) @ apply_rotary(k, torch.tensor([n])).T)

    assert score(7, 3) == pytest.approx(score(107, 103), abs=1e-5) == pytest.approx(score(4, 0), abs=1e-5)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)


def test_shifting_every_position_leaves_the_logits_unchanged_and_needs_no_table():
    model, ids = llama(n_kv_head=2), ids_of(2, 12)
    shifted = torch.arange(12).expand(2, 12) + 1000  # far past n_positions=32: there is no table to run out of
    assert torch.allclose(model(ids), model(ids, position_ids=shifted), atol=1e-4)


def test_rmsnorm_equals_layernorm_on_centred_vectors():
    model = llama(n_kv_head=2)
    rms = model.transformer.ln_f
    layer = torch.nn.LayerNorm(64, eps=rms.eps, elementwise_affine=False)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    x = x - x.mean(-1, keepdim=True)
    assert torch.allclose(rms(x), layer(x) * rms.weight, atol=1e-6)


@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_grouped_query_attention_equals_mha_with_each_kv_head_copied_to_its_group(n_kv_head):
    gqa = llama(n_kv_head=n_kv_head)
    mha = llama(n_kv_head=4, seed=1)
    group, hd = 4 // n_kv_head, 16
    state = dict(gqa.state_dict())
    for layer in range(2):
        name = f"transformer.h.{layer}.attn.c_attn.weight"
        q, k, v = state[name].split([64, n_kv_head * hd, n_kv_head * hd])
        copy = lambda kv: kv.view(n_kv_head, hd, 64).repeat_interleave(group, dim=0).reshape(4 * hd, 64)  # noqa: E731
        state[name] = torch.cat([q, copy(k), copy(v)])  # query head h reads the copy of K/V head h // group
    mha.load_state_dict(state)
    ids = ids_of(2, 20)
    assert torch.allclose(gqa(ids), mha(ids), atol=ATOL)


# ----- the cache ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_the_cache_holds_n_kv_head_heads_already_rotated(n_kv_head):
    model, ids = llama(n_kv_head=n_kv_head), ids_of(1, 10)
    cache = KVCache(model.config.n_layer)
    model(ids, cache=cache)
    assert cache.shapes() == [(1, n_kv_head, 10, 16)] * 2
    assert cache.nbytes == kv_cache_formula_bytes(cache, model.config) == 2 * 2 * n_kv_head * 16 * 4 * 10
    x = model.transformer.h[0].ln_1(model.transformer.wte(ids))  # the first layer's keys, computed by hand
    keys = model.transformer.h[0].attn.c_attn(x).split([64, 16 * n_kv_head, 16 * n_kv_head], dim=-1)[1]
    keys = apply_rotary(keys.view(1, 10, n_kv_head, 16).transpose(1, 2), torch.arange(10))
    assert torch.allclose(cache.keys[0], keys, atol=1e-6)


@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_cached_generation_equals_recomputing_everything(n_kv_head):
    model = llama(n_kv_head=n_kv_head)
    prompt = ids_of(1, 7)[0].tolist()
    cached = generate(model, prompt, 20, use_cache=True)
    uncached = generate(model, prompt, 20, use_cache=False)
    assert cached.tokens == uncached.tokens
    assert torch.allclose(cached.logits, uncached.logits, atol=ATOL)


def test_left_padded_batch_equals_each_prompt_alone():
    model = llama(n_kv_head=2)
    prompts = [ids_of(1, n, seed=n)[0].tolist() for n in (3, 9, 5)]
    batch = generate_batch(model, prompts, 10)
    assert batch.tokens == [generate(model, p, 10).tokens[0] for p in prompts]


@pytest.mark.parametrize("tied", [True, False])
def test_the_calculators_spec_counts_the_llama_model(tied):
    """memory's ModelSpec of a llama config: the model's own parameter count and n_kv_head heads per cached token."""
    from tinyformer.memory.catalogue import ModelSpec

    config = ModelConfig.preset("micro", vocab_size=50, arch="llama", n_kv_head=2, tie_word_embeddings=tied)
    spec = ModelSpec.from_tinyformer(config)
    assert spec.n_params == Transformer(config).num_parameters()
    assert spec.kv_bytes_per_token("fp32") == 2 * 2 * 2 * 32 * 4  # K and V, 2 layers, 2 K/V heads of 32, fp32
