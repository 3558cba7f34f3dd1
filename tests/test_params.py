"""The parameter table: counts per part, tied weights counted once, bytes per dtype."""

from __future__ import annotations

import torch
import torch.nn as nn

from tinyformer.config import ModelConfig
from tinyformer.model import Transformer
from tinyformer.params import format_table, parameter_table, part_of, totals_by_part

CONFIG = ModelConfig(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=1)


def test_total_equals_the_models_own_count_and_tied_head_is_counted_once():
    model = Transformer(CONFIG)
    rows = parameter_table(model)
    assert sum(r.count for r in rows) == model.num_parameters()
    head = next(r for r in rows if r.name == "lm_head.weight")
    assert head.count == 0 and head.bytes == 0 and head.tied_to == "transformer.wte.weight"
    assert head.shape == (40, 32)


def test_counts_per_part_follow_the_formulas():
    d, V, P, L = CONFIG.n_embd, CONFIG.vocab_size, CONFIG.n_positions, CONFIG.n_layer
    totals = totals_by_part(parameter_table(Transformer(CONFIG)))
    assert totals["token embedding"][0] == V * d
    assert totals["position embedding"][0] == P * d
    assert totals["attention Q, K, V"][0] == L * (d * 3 * d + 3 * d)
    assert totals["attention output"][0] == L * (d * d + d)
    assert totals["MLP expand"][0] == L * (d * 4 * d + 4 * d)
    assert totals["MLP project back"][0] == L * (4 * d * d + d)
    assert totals["layer norm"][0] == (2 * L + 1) * 2 * d  # ln_1, ln_2 per block + ln_f; gain and bias
    assert totals["LM head"] == (0, 0)


def test_bytes_follow_the_dtype():
    model = Transformer(CONFIG)
    fp32 = sum(r.bytes for r in parameter_table(model))
    bf16 = sum(r.bytes for r in parameter_table(model, torch.bfloat16))
    assert fp32 == 4 * model.num_parameters()
    assert bf16 == 2 * model.num_parameters()


def test_modules_without_weights_have_no_rows():
    assert parameter_table(nn.Sequential(nn.GELU(approximate="tanh"), nn.Softmax(dim=-1))) == []


def test_unknown_names_fall_into_other_and_table_prints_a_total():
    assert part_of("encoder.something.weight") == "other"
    text = format_table(parameter_table(nn.Linear(3, 2)))
    assert text.splitlines()[-1].split()[:2] == ["total", "8"]
