"""ModelConfig: presets, validation messages, the vLLM head-size check, dict round trip."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest

from tinyformer.config import PRESETS, VLLM_CPU_HEAD_SIZES, HeadSizeWarning, ModelConfig

VOCAB = 55  # the shipped tokenizer's size; any positive number works


def sizes(**overrides) -> dict:
    """A valid set of sizes (head_dim 32) with some fields replaced."""
    return {**dict(vocab_size=VOCAB, n_positions=16, n_embd=64, n_layer=2, n_head=2), **overrides}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_are_servable(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadSizeWarning)  # a preset must never warn
        config = ModelConfig.preset(name, vocab_size=VOCAB)
    assert config.vocab_size == VOCAB
    for field, value in PRESETS[name].items():
        assert getattr(config, field) == value
    assert config.head_dim in VLLM_CPU_HEAD_SIZES
    config.check_vllm_head_size()  # must not raise


def test_documented_preset_sizes():
    nano = ModelConfig.preset("nano", vocab_size=VOCAB)
    micro = ModelConfig.preset("micro", vocab_size=VOCAB)
    assert (nano.n_positions, nano.n_embd, nano.n_layer, nano.n_head, nano.head_dim) == (128, 64, 2, 2, 32)
    assert (micro.n_positions, micro.n_embd, micro.n_layer, micro.n_head, micro.head_dim) == (256, 128, 2, 4, 32)


def test_preset_overrides():
    config = ModelConfig.preset("nano", vocab_size=VOCAB, n_layer=3, dropout=0.1)
    assert (config.n_layer, config.dropout, config.n_embd) == (3, 0.1, PRESETS["nano"]["n_embd"])


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*'micro'.*'nano'"):
        ModelConfig.preset("huge", vocab_size=VOCAB)


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match=r"n_embd=64 is not divisible by n_head=3.*divisors of 64"):
        ModelConfig(**sizes(n_head=3))


@pytest.mark.parametrize("field", ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head"])
@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_sizes_must_be_positive_integers(field, bad):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field} must be a positive integer, got {bad!r}"):
        ModelConfig(**sizes(**{field: bad}))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_dropout_range(bad):
    with pytest.raises(ValueError, match=rf"dropout must be in \[0, 1\), got {bad}"):
        ModelConfig(**sizes(dropout=bad))


def test_head_size_16_warns_with_the_fix():
    with pytest.warns(HeadSizeWarning, match=r"64/4 = 16 is not one vLLM's CPU attention supports.*n_head=2") as rec:
        config = ModelConfig(**sizes(n_head=4))
    assert config.head_dim == 16
    # stacklevel points the warning at the line that built the config, not at config.py.
    assert rec[0].filename == __file__


def test_check_vllm_head_size_raises_with_the_fix():
    with pytest.warns(HeadSizeWarning):
        config = ModelConfig(**sizes(n_head=4))
    with pytest.raises(ValueError, match=r"head size .* = 16 .*cannot be served by vLLM on CPU \(e\.g\. n_head=2\)"):
        config.check_vllm_head_size()


def test_head_size_fix_when_no_good_divisor():
    with pytest.warns(HeadSizeWarning):
        config = ModelConfig(**sizes(n_embd=48, n_head=3))
    with pytest.raises(ValueError, match="change n_embd to a multiple of 32"):
        config.check_vllm_head_size()


def test_supported_head_sizes_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadSizeWarning)
        for head_dim in VLLM_CPU_HEAD_SIZES:
            assert ModelConfig(**sizes(n_embd=2 * head_dim, n_head=2)).head_dim == head_dim


def test_dict_round_trip_through_json():
    config = ModelConfig(**sizes(dropout=0.25, layer_norm_epsilon=1e-6))
    restored = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    defaults = {"arch": "gpt2", "n_kv_head": sizes()["n_head"], "tie_word_embeddings": True}
    assert config.to_dict() == {**sizes(), "dropout": 0.25, "layer_norm_epsilon": 1e-6, **defaults}


def test_from_dict_rejects_foreign_fields():
    with pytest.raises(ValueError, match=r"unknown ModelConfig fields \['n_ctx'\]"):
        ModelConfig.from_dict({**sizes(), "n_ctx": 16})


def test_config_is_frozen():
    config = ModelConfig(**sizes())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_layer = 4
