"""Fewer bits for the weights: int8 per channel and int4 per group, written out by hand.

Two schemes, both for the linear layers of the transformer blocks (``c_attn``, ``c_proj``, ``c_fc``);
the embedding tables (and the LM head tied to ``wte``), the layer norms and the biases stay as they are:

* **int8, symmetric, per output channel.** Each row of a ``[out, in]`` weight gets one scale
  ``s = max|w| / 127``; the row is stored as ``round(w / s)`` in -127..127. Zero maps to zero.
* **int4, asymmetric, per group.** Each run of ``group_size`` inputs of a row gets a scale and a zero
  point: ``s = (max - min) / 15``, ``z = round(-min / s)``, stored ``q = round(w / s) + z`` in 0..15;
  ``w ~ (q - z) * s``. The range always includes 0, so 0 is exact and ``z`` is in 0..15.

Scales are rounded to fp16 when they are made (that is how checkpoints store them), so the
dequantised weights here are exactly the weights a server reconstructs from the files.

Packing: eight 4-bit numbers share one int32. In AWQ's layout number ``ORDER[i]`` of each group of
eight output columns goes to bits ``4i .. 4i+3`` (:data:`AWQ_ORDER`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tinyformer.model import Transformer

SCHEMES = ("int8", "int4")
QUANTISED_LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # nn.Linear inside each block
SCALE_DTYPE = torch.float16  # how checkpoints store scales
INT8_MAX = 127
INT4_MAX = 15
DEFAULT_GROUP_SIZE = 128
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # number AWQ_ORDER[i] of 8 goes to bits 4i..4i+3 of the int32
PACK = 8  # 4-bit numbers per int32


@dataclass(frozen=True)
class QuantisedLinear:
    """One layer's quantised weight ``[out, in]`` (nn.Linear layout) and what it takes to undo it."""

    scheme: str  # "int8" or "int4"
    q: torch.Tensor  # int8: int8 [out, in] in -127..127; int4: uint8 [out, in] in 0..15
    scale: torch.Tensor  # fp16; int8: [out, 1]; int4: [out, in // group_size]
    zero: torch.Tensor | None  # int4: uint8 [out, in // group_size] in 0..15; int8: None
    group_size: int | None  # int4 only

    def dequantise(self) -> torch.Tensor:
        """The float32 weight ``[out, in]`` these numbers stand for."""
        if self.scheme == "int8":
            return dequantise_int8(self.q, self.scale)
        return dequantise_int4(self.q, self.scale, self.zero, self.group_size)

    def stored_bytes(self) -> int:
        """Bytes in a checkpoint: the numbers (int4 two per byte), fp16 scales, 4-bit zero points."""
        numbers = self.q.numel() if self.scheme == "int8" else self.q.numel() // 2
        zeros = 0 if self.zero is None else self.zero.numel() // 2
        return numbers + self.scale.numel() * self.scale.element_size() + zeros


# ---- the two schemes, written out --------------------------------------------------------------


def quantise_int8(w: torch.Tensor, scale_dtype: torch.dtype = SCALE_DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [out, in], scale [out, 1]): symmetric, one scale per output channel (row)."""
    _check_weight(w)
    scale = (w.abs().amax(dim=1, keepdim=True) / INT8_MAX).to(scale_dtype)  # [out, 1]
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero row: any scale works
    q = torch.round(w / scale.float()).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)  # [out, in]
    return q, scale


def dequantise_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()  # [out, in] * [out, 1]


def quantise_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q uint8 [out, in] in 0..15, scale fp16 [out, G], zero uint8 [out, G]), G = in / group_size."""
    _check_weight(w)
    out, n_in = w.shape
    check_group_size(group_size, n_in)
    groups = w.reshape(out, n_in // group_size, group_size)  # [out, G, g]
    low = groups.amin(dim=-1).clamp(max=0)  # [out, G]; the range includes 0 so 0 stays exact
    high = groups.amax(dim=-1).clamp(min=0)  # [out, G]
    scale = ((high - low) / INT4_MAX).to(SCALE_DTYPE)  # [out, G]
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero group
    zero = torch.round(-low / scale.float()).clamp(0, INT4_MAX)  # [out, G]: the stored number for 0.0
    q = torch.round(groups / scale.float()[..., None]) + zero[..., None]  # [out, G, g]
    q = q.clamp(0, INT4_MAX).reshape(out, n_in)  # [out, in]
    return q.to(torch.uint8), scale, zero.to(torch.uint8)


def dequantise_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    out, n_in = q.shape
    groups = q.float().reshape(out, n_in // group_size, group_size)  # [out, G, g]
    w = (groups - zero.float()[..., None]) * scale.float()[..., None]  # [out, G, g]
    return w.reshape(out, n_in)


def quantise_weight(w: torch.Tensor, scheme: str, group_size: int | None = None) -> QuantisedLinear:
    check_scheme(scheme)
    if scheme == "int8":
        q, scale = quantise_int8(w)
        return QuantisedLinear("int8", q, scale, None, None)
    if group_size is None:
        raise ValueError("int4 needs a group_size (inputs that share one scale and zero point), e.g. 32 or 64.")
    q, scale, zero = quantise_int4(w, group_size)
    return QuantisedLinear("int4", q, scale, zero, group_size)


# ---- packing 4-bit numbers into int32 (AWQ's order) --------------------------------------------


def pack_int4(q: torch.Tensor, order: tuple[int, ...] = AWQ_ORDER) -> torch.Tensor:
    """[rows, cols] numbers in 0..15 -> int32 [rows, cols / 8]: number ``order[i]`` of each 8 at bits 4i."""
    rows, cols = q.shape
    if cols % PACK:
        raise ValueError(f"int4 packing puts {PACK} numbers in one int32; {cols} columns is not a multiple of {PACK}.")
    if q.min() < 0 or q.max() > INT4_MAX:
        raise ValueError("int4 numbers must be in 0..15 before packing.")
    eights = q.to(torch.int64).reshape(rows, cols // PACK, PACK)[..., list(order)]  # [rows, cols/8, 8]
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)  # 0, 4, ..., 28
    packed = (eights << shifts).sum(dim=-1)  # [rows, cols/8], in 0 .. 2**32 - 1
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)  # the same bits, as int32


def unpack_int4(packed: torch.Tensor, order: tuple[int, ...] = AWQ_ORDER) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: int32 [rows, n] -> uint8 [rows, 8n]."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    nibbles = (packed.to(torch.int64)[..., None] >> shifts) & INT4_MAX  # [rows, n, 8]; nibble i = number order[i]
    numbers = torch.empty_like(nibbles)
    numbers[..., list(order)] = nibbles
    return numbers.reshape(packed.shape[0], -1).to(torch.uint8)


# ---- a whole model ---------------------------------------------------------------------------


def quantised_layer_names(model: Transformer) -> list[str]:
    """``transformer.h.0.attn.c_attn`` ... : the linear layers the schemes quantise, in order."""
    return [f"transformer.h.{i}.{layer}" for i in range(model.config.n_layer) for layer in QUANTISED_LAYERS]


def default_group_size(model: Transformer, requested: int = DEFAULT_GROUP_SIZE) -> int:
    """``requested`` capped at the narrowest input width of the quantised layers (so presets just work)."""
    return min(requested, smallest_input_width(model))


def smallest_input_width(model: Transformer) -> int:
    return min(model.get_submodule(name).in_features for name in quantised_layer_names(model))


def quantise_model(model: Transformer, scheme: str, group_size: int | None = None) -> dict[str, QuantisedLinear]:
    """Every block linear layer of ``model`` quantised (the model itself is not changed)."""
    check_scheme(scheme)
    if scheme == "int4" and group_size is None:
        group_size = default_group_size(model)
    return {
        name: quantise_weight(model.get_submodule(name).weight.detach().float().cpu(), scheme, group_size)
        for name in quantised_layer_names(model)
    }


def dequantised_model(model: Transformer, layers: dict[str, QuantisedLinear]) -> Transformer:
    """A copy of ``model`` whose quantised layers hold the dequantised weights (what the server computes with)."""
    copy = Transformer(model.config)
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, layer in layers.items():
            copy.get_submodule(name).weight.copy_(layer.dequantise())
    return copy.eval()


def round_trip_errors(model: Transformer, layers: dict[str, QuantisedLinear]) -> dict[str, float]:
    """Per layer: ||w - dequantise(quantise(w))|| / ||w|| (relative Frobenius error)."""
    errors = {}
    for name, layer in layers.items():
        w = model.get_submodule(name).weight.detach().float().cpu()
        errors[name] = float((w - layer.dequantise()).norm() / w.norm())
    return errors


def bytes_per_parameter(layers: dict[str, QuantisedLinear]) -> float:
    """Stored bytes per quantised weight, scales and zero points included (int8 ~1, int4 > 0.5)."""
    stored = sum(layer.stored_bytes() for layer in layers.values())
    return stored / sum(layer.q.numel() for layer in layers.values())


def scheme_bytes_per_parameter(scheme: str, n_in: int, group_size: int | None = None) -> float:
    """The same, from the layout alone: int8 1 + 2/n_in; int4 1/2 + (2 + 1/2)/group_size."""
    check_scheme(scheme)
    scale_bytes = torch.finfo(SCALE_DTYPE).bits // 8
    if scheme == "int8":
        return 1 + scale_bytes / n_in
    check_group_size(group_size, n_in)
    return 0.5 + (scale_bytes + 0.5) / group_size


def checkpoint_bytes_per_parameter(dtype: str, n_in: int, group_size: int = DEFAULT_GROUP_SIZE) -> float:
    """Bytes per weight of a quantised checkpoint's matrix with ``n_in`` inputs, scales included:
    int4 groups of ``group_size`` (AWQ/GPTQ), int8 per channel, fp8 with one scale per output channel."""
    if dtype == "fp8":
        return scheme_bytes_per_parameter("int8", n_in)  # 1 byte per weight + an fp16 scale per channel
    return scheme_bytes_per_parameter(dtype, n_in, None if dtype == "int8" else min(group_size, n_in))


# ---- clear errors ------------------------------------------------------------------------------


def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantisation scheme {scheme!r}; choose one of {list(SCHEMES)}.")


def check_group_size(group_size, n_in: int) -> None:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}.")
    if n_in % group_size:
        divisors = [g for g in (16, 32, 64, 128, 256) if n_in % g == 0]
        raise ValueError(
            f"group_size={group_size} does not divide the layer's input width {n_in}: every group must be "
            f"whole. Pick a divisor of {n_in}, e.g. {divisors or [n_in]}."
        )


def _check_weight(w: torch.Tensor) -> None:
    if w.ndim != 2 or not w.is_floating_point():
        raise ValueError(f"expected a float weight matrix [out, in], got {tuple(w.shape)} {w.dtype}.")


# ---- comparing a lower-precision server with the reference model ------------------------------------------

NEAR_TIE_NATS = 0.05  # logits closer than this count as a tie that rounding (bf16, fp8, int8 activations) may flip


@dataclass(frozen=True)
class GreedyAgreement:
    """How a server's greedy continuations compare with a reference model's, prompt by prompt."""

    prompts: int
    identical: int  # continuations equal token for token
    first_differences: list[float]  # per differing prompt: reference logit gap between its pick and the server's
    near_tie: float

    @property
    def explained(self) -> bool:
        """Every difference starts at a near-tie of the reference model (rounding picked the other token)."""
        return all(gap <= self.near_tie for gap in self.first_differences)


@torch.inference_mode()
def greedy_agreement(
    model: Transformer, prompts: list[list[int]], served: list[list[int]], near_tie: float = NEAR_TIE_NATS
) -> GreedyAgreement:
    """Compare ``served`` continuations with ``model``'s: at the first token where they differ, how far (in
    logits) the server's token was behind the reference model's favourite, given the same prefix."""
    from tinyformer.generate import generate

    identical, gaps = 0, []
    for prompt, got in zip(prompts, served, strict=True):
        ours = generate(model, prompt, len(got)).tokens[0]
        if ours == got:
            identical += 1
            continue
        step = next(i for i, (a, b) in enumerate(zip(ours, got, strict=True)) if a != b)
        logits = model(torch.tensor([prompt + got[:step]]))[0, -1]  # [V], the position that chose token `step`
        gaps.append(float(logits.max() - logits[got[step]]))
    return GreedyAgreement(len(prompts), identical, gaps, near_tie)
