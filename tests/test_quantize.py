"""tinyformer.quantize: int8 per channel and int4 per group round-trip within their step size, pack in AWQ's
order (checked against an independent bit-by-bit reference), count bytes with scales and zero points, and
refuse bad input with a message that says what to change."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from tinyformer import ModelConfig, Transformer
from tinyformer import quantize as qz
from tinyformer.export.awq import awq_quantization_config, export_quantised


@pytest.fixture(scope="module")
def model(tokenizer) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=len(tokenizer), n_positions=32, n_embd=64, n_layer=2, n_head=2))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def weight(seed: int, out: int = 96, n_in: int = 64) -> torch.Tensor:
    return torch.randn(out, n_in, generator=torch.Generator().manual_seed(seed)) * 0.3


# -- int8 ---------------------------------------------------------------------------------------------------


def test_int8_is_symmetric_per_row_and_within_half_a_step():
    w = weight(0)
    q, scale = qz.quantise_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (96, 1) and scale.dtype == torch.float16
    assert q.abs().amax(dim=1).eq(127).all()  # each row's largest weight uses the full range
    error = (qz.dequantise_int8(q, scale) - w).abs()
    assert (error <= scale.float() / 2 + 1e-7).all()  # round to nearest: at most half a step per row
    assert qz.dequantise_int8(*qz.quantise_int8(torch.zeros(3, 8))).eq(0).all()  # a zero row: scale 1, no NaN


def test_int8_round_trip_matches_a_numpy_reference():
    w = weight(1)
    scale = (w.numpy().__abs__().max(axis=1, keepdims=True) / 127).astype("float16").astype("float32")
    expected = (w.numpy() / scale).round().clip(-127, 127) * scale
    q, s = qz.quantise_int8(w)
    assert torch.allclose(qz.dequantise_int8(q, s), torch.from_numpy(expected), atol=0, rtol=0)


# -- int4 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_size", [16, 32, 64])
def test_int4_groups_round_trip_within_one_step_and_keep_zero_exact(group_size):
    w = weight(2)
    w[0, :group_size] = 0.0  # an all-zero group
    q, scale, zero = qz.quantise_int4(w, group_size)
    groups = 64 // group_size
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and scale.shape == zero.shape == (96, groups)
    back = qz.dequantise_int4(q, scale, zero, group_size)
    step = scale.float().repeat_interleave(group_size, dim=1)  # [out, in]
    # zero is rounded to a whole number, which moves the grid by up to half a step: at most one step off
    assert ((back - w).abs() <= step + 1e-6).all()
    assert (back - w).abs().mean() <= step.mean() / 3
    assert back[0, :group_size].eq(0).all()
    assert qz.dequantise_int4(zero.repeat_interleave(group_size, 1), scale, zero, group_size).eq(0).all()


def test_smaller_groups_give_smaller_error():
    w = weight(3)
    errors = [(qz.quantise_weight(w, "int4", g).dequantise() - w).norm() for g in (64, 32, 16)]
    assert errors[0] > errors[1] > errors[2]
    assert (qz.quantise_weight(w, "int8").dequantise() - w).norm() < errors[2]


# -- packing ------------------------------------------------------------------------------------------------


def reference_pack(q: torch.Tensor, order) -> torch.Tensor:
    """Bit by bit, with Python ints: number order[i] of each eight at bits 4i."""
    rows, cols = q.shape
    out = torch.empty(rows, cols // 8, dtype=torch.int32)
    for r in range(rows):
        for c in range(cols // 8):
            word = 0
            for i in range(8):
                word |= int(q[r, 8 * c + order[i]]) << (4 * i)
            out[r, c] = word - (1 << 32) if word >= 1 << 31 else word
    return out


def test_pack_matches_the_bitwise_reference_and_unpacks():
    q = torch.randint(0, 16, (5, 24), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    packed = qz.pack_int4(q)
    assert packed.dtype == torch.int32 and packed.shape == (5, 3)
    assert torch.equal(packed, reference_pack(q, qz.AWQ_ORDER))
    assert torch.equal(qz.unpack_int4(packed), q)
    assert torch.equal(qz.pack_int4(torch.arange(8)[None]), torch.tensor([[0x75316420]], dtype=torch.int32))


def test_pack_matches_vllms_reading_of_awq_order():
    """vLLM reads AWQ words by taking nibble [0, 4, 1, 5, 2, 6, 3, 7][j] as number j (its _REVERSE_AWQ_PACK_ORDER)."""
    q = torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    nibbles = (qz.pack_int4(q)[..., None] >> torch.arange(0, 32, 4, dtype=torch.int32)) & 15  # [3, 2, 8]
    assert torch.equal(nibbles[..., [0, 4, 1, 5, 2, 6, 3, 7]].reshape(3, 16).to(torch.uint8), q)


# -- bytes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("scheme", "group_size"), [("int8", None), ("int4", 32), ("int4", 64)])
def test_bytes_per_parameter_include_scales_and_zero_points(model, scheme, group_size):
    layers = qz.quantise_model(model, scheme, group_size)
    # every quantised layer of this model reads 64 or 256 inputs; count them layer by layer
    stored = sum(
        qz.scheme_bytes_per_parameter(scheme, layer.q.shape[1], group_size) * layer.q.numel()
        for layer in layers.values()
    )
    assert sum(layer.stored_bytes() for layer in layers.values()) == stored
    assert qz.bytes_per_parameter(layers) == pytest.approx(stored / sum(layer.q.numel() for layer in layers.values()))
    assert qz.scheme_bytes_per_parameter("int4", 4096, 128) == 0.5 + 2.5 / 128  # not the idealised 0.5


def test_dequantised_model_changes_only_the_quantised_weights(model):
    layers = qz.quantise_model(model, "int4", 32)
    copy = qz.dequantised_model(model, layers)
    before, after = model.state_dict(), copy.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {f"{name}.weight" for name in layers}
    assert set(qz.round_trip_errors(model, layers)) == set(layers)


def test_default_group_size_is_capped_at_the_narrowest_layer(model):
    assert qz.smallest_input_width(model) == 64
    assert qz.default_group_size(model) == 64
    assert {layer.group_size for layer in qz.quantise_model(model, "int4").values()} == {64}


# -- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: qz.quantise_weight(weight(0), "int3"), "unknown quantisation scheme 'int3'"),
        (lambda: qz.quantise_int4(weight(0), 48), "group_size=48 does not divide the layer's input width 64"),
        (lambda: qz.quantise_int4(weight(0), 0), "group_size must be a positive integer"),
        (lambda: qz.quantise_weight(weight(0), "int4"), "int4 needs a group_size"),
        (lambda: qz.quantise_int8(torch.zeros(4)), "expected a float weight matrix"),
        (lambda: qz.pack_int4(torch.zeros(2, 6, dtype=torch.uint8)), "not a multiple of 8"),
        (lambda: qz.pack_int4(torch.full((1, 8), 16)), "must be in 0..15"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call()


# -- the AWQ folder ---------------------------------------------------------------------------------------


def test_awq_export_holds_packed_weights_scales_and_its_config(model, tokenizer, tmp_path):
    out = export_quantised(model, tokenizer, tmp_path / "awq", group_size=32)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == awq_quantization_config(32)
    layers = qz.quantise_model(model, "int4", 32)
    with safe_open(out / "model.safetensors", "pt") as f:
        names = set(f.keys())
        for name, layer in layers.items():
            assert f"{name}.weight" not in names
            qweight, qzeros, scales = (f.get_tensor(f"{name}.{t}") for t in ("qweight", "qzeros", "scales"))
            n_out, n_in = layer.q.shape
            assert qweight.dtype == qzeros.dtype == torch.int32 and scales.dtype == torch.float16
            assert qweight.shape == (n_in, n_out // 8) and qzeros.shape == (n_in // 32, n_out // 8)
            assert scales.shape == (n_in // 32, n_out)
            # reading the file back gives the dequantised weight (Conv1D [in, out] -> Linear [out, in])
            back = qz.dequantise_int4(qz.unpack_int4(qweight).t(), scales.t(), qz.unpack_int4(qzeros).t(), 32)
            assert torch.equal(back, layer.dequantise())
        assert "transformer.wte.weight" in names and "lm_head.weight" not in names


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "int8"}, "4-bit kernel only"),
        ({"group_size": 48}, "does not divide"),
        ({"scheme": "fp4"}, "unknown quantisation scheme"),
    ],
)
def test_awq_export_refuses_what_vllm_cannot_load(model, tokenizer, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export_quantised(model, tokenizer, tmp_path / "awq", **kwargs)
    assert not (tmp_path / "awq").exists() and not list(tmp_path.iterdir())
