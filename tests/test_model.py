"""The hand-written Transformer: shapes, GPT-2 names and logits, masks, KV cache, input errors."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tinyformer.config import ModelConfig
from tinyformer.kv_cache import KVCache
from tinyformer.model import Transformer

ATOL = 1e-5  # float32: the same sums taken in another order differ by ~1e-6 at these sizes
EXACT = 1e-6  # where only unrelated rows/positions change, results should be bit-for-bit alike
HF_SEEDS = [1, 2, 4, 9, 10]  # together: 1-4 heads, 1-3 layers, head sizes 8-32, both eps values
PAD = 1


def random_config(seed: int) -> ModelConfig:
    """A small config drawn from ``seed``: head sizes 8..32, 1-4 heads, 1-3 layers, odd vocabularies."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
    n_head, head_dim = pick([1, 2, 4]), pick([8, 16, 32])
    return ModelConfig(
        vocab_size=pick([11, 37, 55, 101]),
        n_positions=pick([8, 24, 40]),
        n_embd=n_head * head_dim,
        n_layer=pick([1, 2, 3]),
        n_head=n_head,
        layer_norm_epsilon=pick([1e-5, 1e-6]),
    )


def randomized_model(config: ModelConfig, seed: int) -> Transformer:
    """A model in eval mode whose every parameter (biases and layer-norm gains too) is random, so
    a weight copied to the wrong place, or not transposed, shows up in the logits."""
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_gain = ".ln_" in name and name.endswith(".weight")  # layer-norm gains live around 1
            p.copy_(1.0 + 0.1 * noise if is_gain else 0.1 * noise)
    return model


def seeded_ids(config: ModelConfig, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, length), generator=g)  # [B, T]


@pytest.fixture
def config() -> ModelConfig:
    return ModelConfig(vocab_size=37, n_positions=24, n_embd=64, n_layer=2, n_head=2)


@pytest.fixture
def model(config) -> Transformer:
    return randomized_model(config, seed=0)


# ---- shapes and names --------------------------------------------------------------------------


def test_logit_shape(model, config):
    logits = model(seeded_ids(config, batch=3, length=10))
    assert logits.shape == (3, 10, config.vocab_size)
    assert logits.dtype == torch.float32


def expected_gpt2_names(n_layer: int) -> set[str]:
    """GPT-2's parameter names, written out from the GPT-2 checkpoint layout."""
    names = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"}
    block = ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]
    for i in range(n_layer):
        names |= {f"transformer.h.{i}.{part}.{kind}" for part in block for kind in ("weight", "bias")}
    return names


def test_parameter_names_are_gpt2s(model, config):
    ours = set(model.state_dict())
    assert ours == expected_gpt2_names(config.n_layer) | {"lm_head.weight"}
    assert ours == set(GPT2LMHeadModel(hf_config(config)).state_dict())


def test_lm_head_is_tied_to_wte(model, config):
    assert model.lm_head.weight is model.transformer.wte.weight
    with torch.no_grad():
        model.transformer.wte.weight[5].fill_(3.0)
    assert torch.equal(model.lm_head.weight[5], torch.full((config.n_embd,), 3.0))
    untied = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert model.num_parameters() == untied - config.vocab_size * config.n_embd


# ---- the same logits as transformers' GPT-2 ------------------------------------------------------


def hf_config(config: ModelConfig) -> GPT2Config:
    """Written here, not taken from tinyformer.export, so the test checks the export's assumptions."""
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        activation_function="gelu_new",
        layer_norm_epsilon=config.layer_norm_epsilon,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation="eager",
    )


@torch.no_grad()
def copy_by_hand(model: Transformer) -> GPT2LMHeadModel:
    """Copy module by module; Conv1D keeps weights as [in, out], nn.Linear as [out, in]."""
    hf = GPT2LMHeadModel(hf_config(model.config)).eval()
    ours, theirs = model.transformer, hf.transformer
    theirs.wte.weight.copy_(ours.wte.weight)
    theirs.wpe.weight.copy_(ours.wpe.weight)
    for a, b in zip(ours.h, theirs.h, strict=True):
        for norm in ("ln_1", "ln_2"):
            getattr(b, norm).load_state_dict(getattr(a, norm).state_dict())
        for linear, conv in [(a.attn.c_attn, b.attn.c_attn), (a.attn.c_proj, b.attn.c_proj)] + [
            (a.mlp.c_fc, b.mlp.c_fc),
            (a.mlp.c_proj, b.mlp.c_proj),
        ]:
            conv.weight.copy_(linear.weight.t())  # [out, in] -> [in, out]
            conv.bias.copy_(linear.bias)
    theirs.ln_f.load_state_dict(ours.ln_f.state_dict())
    assert hf.lm_head.weight.data_ptr() == theirs.wte.weight.data_ptr(), "GPT-2's head should be tied too"
    return hf


def copy_with_export(model: Transformer) -> GPT2LMHeadModel:
    from tinyformer.export import to_hf_gpt2

    hf = to_hf_gpt2(model)
    hf.set_attn_implementation("eager")
    return hf


@pytest.mark.parametrize("make_hf", [copy_by_hand, copy_with_export], ids=["by_hand", "export"])
@pytest.mark.parametrize("seed", HF_SEEDS)
@torch.no_grad()
def test_logits_equal_transformers_gpt2(seed, make_hf):
    config = random_config(seed)
    model = randomized_model(config, seed)
    hf = make_hf(model)
    assert hf.config._attn_implementation == "eager"
    ids = seeded_ids(config, batch=3, length=config.n_positions, seed=seed)
    expected = hf(ids).logits  # [B, T, V]
    got = model(ids)
    assert got.abs().max() > 0.1, "logits too small for the comparison to mean anything"
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_left_padding_equals_transformers_gpt2(model, config):
    """The padded batch path agrees with GPT-2's attention_mask + position_ids path too."""
    ids, mask, positions = left_padded_batch(config, lengths=[5, 9, 2])
    expected = copy_by_hand(model)(ids, attention_mask=mask.long(), position_ids=positions).logits
    got = model(ids, padding_mask=mask, position_ids=positions)
    torch.testing.assert_close(got[mask], expected[mask], atol=ATOL, rtol=0)


# ---- what attention may and may not see ----------------------------------------------------------


@torch.no_grad()
def test_causal_later_tokens_do_not_change_earlier_logits(model, config):
    ids = seeded_ids(config, batch=2, length=12)
    changed = ids.clone()
    changed[:, 7] = (ids[:, 7] + 1) % config.vocab_size
    before, after = model(ids), model(changed)
    torch.testing.assert_close(after[:, :7], before[:, :7], atol=EXACT, rtol=0)
    assert (after[:, 7:] - before[:, 7:]).abs().amax(dim=-1).min() > 1e-4, "every later position should change"


@torch.no_grad()
def test_batch_rows_do_not_mix(model, config):
    ids = seeded_ids(config, batch=3, length=10)
    changed = ids.clone()
    changed[1] = seeded_ids(config, batch=1, length=10, seed=99)[0]
    before, after = model(ids), model(changed)
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]], atol=EXACT, rtol=0)
    assert not torch.allclose(after[1], before[1])
    torch.testing.assert_close(model(ids[2:3]), before[2:3], atol=ATOL, rtol=0)


def left_padded_batch(config: ModelConfig, lengths: list[int]):
    """ids [B, T] left-padded with PAD, padding_mask [B, T] (True = real), position_ids [B, T]."""
    T = max(lengths)
    ids = torch.full((len(lengths), T), PAD)
    for row, n in enumerate(lengths):
        ids[row, T - n :] = seeded_ids(config, batch=1, length=n, seed=row)[0]
    mask = torch.arange(T)[None, :] >= T - torch.tensor(lengths)[:, None]  # [B, T]
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # real tokens at 0..n-1, padding parked at 0
    return ids, mask, positions


@torch.no_grad()
def test_left_padded_rows_equal_each_row_alone(model, config):
    lengths = [5, 9, 2]
    ids, mask, positions = left_padded_batch(config, lengths)
    logits = model(ids, padding_mask=mask, position_ids=positions)
    for row, n in enumerate(lengths):
        alone = model(ids[row : row + 1, -n:])  # [1, n, V]
        torch.testing.assert_close(logits[row, -n:], alone[0], atol=ATOL, rtol=0)
    unmasked = model(ids)  # without the mask the padding leaks in: the test above is not vacuous
    assert not torch.allclose(unmasked[0, -5:], logits[0, -5:], atol=1e-3)


@torch.no_grad()
def test_attention_weights_shape_rows_and_causal_zeros(model, config):
    ids = seeded_ids(config, batch=2, length=9)
    logits, attentions = model(ids, return_attention=True)
    torch.testing.assert_close(logits, model(ids), atol=0, rtol=0)
    assert len(attentions) == config.n_layer
    above = torch.triu(torch.ones(9, 9, dtype=torch.bool), diagonal=1)
    for weights in attentions:
        assert weights.shape == (2, config.n_head, 9, 9)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, config.n_head, 9), atol=EXACT, rtol=0)
        assert torch.all(weights[..., above] == 0)
        assert torch.all(weights[..., ~above] > 0)


@torch.no_grad()
def test_attention_ignores_padded_keys(model, config):
    ids, mask, positions = left_padded_batch(config, lengths=[3, 6])
    _, attentions = model(ids, padding_mask=mask, position_ids=positions, return_attention=True)
    for weights in attentions:  # [B, nh, T, S]
        real_queries = weights[0, :, mask[0]]  # [nh, 3, S]
        assert torch.all(real_queries[..., ~mask[0]] == 0)


# ---- KV cache --------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefill", [1, 4])
@torch.no_grad()
def test_kv_cache_decoding_equals_full_forward(model, config, prefill):
    T = config.n_positions
    ids = seeded_ids(config, batch=2, length=T)
    cache = KVCache(config.n_layer)
    steps = [model(ids[:, :prefill], cache=cache)]  # prefill [B, prefill, V]
    for t in range(prefill, T):
        steps.append(model(ids[:, t : t + 1], cache=cache))  # one token [B, 1, V]
        assert len(cache) == t + 1
    torch.testing.assert_close(torch.cat(steps, dim=1), model(ids), atol=ATOL, rtol=0)
    assert cache.shapes() == [(2, config.n_head, T, config.head_dim)] * config.n_layer
    assert cache.nbytes == 2 * config.n_layer * 2 * T * config.n_embd * 4  # K and V, float32


@torch.no_grad()
def test_kv_cache_past_the_position_table(model, config):
    cache = KVCache(config.n_layer)
    model(seeded_ids(config, batch=1, length=config.n_positions), cache=cache)
    with pytest.raises(ValueError, match=rf"position {config.n_positions} has no row in the position table"):
        model(seeded_ids(config, batch=1, length=1), cache=cache)


# ---- clear errors for bad input ---------------------------------------------------------------------


def test_sequence_longer_than_position_table(model, config):
    ids = seeded_ids(config, batch=1, length=config.n_positions + 1)
    n = config.n_positions
    with pytest.raises(ValueError, match=rf"position {n} has no row in the position table .*n_positions={n}"):
        model(ids)
    model(ids[:, : config.n_positions])  # the longest allowed input works


@pytest.mark.parametrize("bad_id", [37, 1000, -1])
def test_ids_outside_vocabulary(model, config, bad_id):
    ids = seeded_ids(config, batch=1, length=4)
    ids[0, 2] = bad_id
    with pytest.raises(ValueError, match=rf"token id {bad_id} is outside the vocabulary \(ids must be in 0\.\.36\)"):
        model(ids)


@pytest.mark.parametrize(
    "ids, message",
    [
        (torch.zeros(1, 4), r"integer token ids .*float32"),
        (torch.zeros(4, dtype=torch.long), r"shape \[batch, seq\], got \[4\]\. Add a batch dimension with ids\[None\]"),
        (torch.zeros(1, 2, 3, dtype=torch.long), r"shape \[batch, seq\], got \[1, 2, 3\]"),
        (torch.zeros(1, 0, dtype=torch.long), r"ids is empty"),
        ([[1, 2, 3]], r"must be a torch\.LongTensor .*got list"),
    ],
    ids=["float", "1-D", "3-D", "empty", "list"],
)
def test_malformed_ids(model, ids, message):
    with pytest.raises(ValueError, match=message):
        model(ids)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_integer_dtypes_that_are_accepted_work(model, config, dtype):
    ids = seeded_ids(config, batch=1, length=4)
    torch.testing.assert_close(model(ids.to(dtype)), model(ids), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16])
def test_small_integer_dtypes_work_or_get_a_clear_error(model, config, dtype):
    ids = seeded_ids(config, batch=1, length=4)
    try:
        model(ids.to(dtype))
    except ValueError as err:
        assert "dtype" in str(err)


def test_negative_position_ids(model, config):
    ids = seeded_ids(config, batch=1, length=3)
    with pytest.raises(ValueError, match="position -1"):
        model(ids, position_ids=torch.tensor([[-1, 0, 1]]))
