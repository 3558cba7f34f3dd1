"""Which parts of the model have weights, and how many numbers and bytes each holds.

Softmax, GELU, the causal mask and the KV cache have no weights; they do not appear here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

# Parameter name fragment -> the part of the transformer it belongs to (first match wins).
PARTS = (
    ("wte", "token embedding"),
    ("wpe", "position embedding"),
    ("attn.c_attn", "attention Q, K, V"),
    ("attn.c_proj", "attention output"),
    ("mlp.c_fc", "MLP expand"),
    ("mlp.c_proj", "MLP project back"),
    ("ln_", "layer norm"),
    ("lm_head", "LM head"),
)


@dataclass(frozen=True)
class ParamRow:
    name: str  # e.g. "transformer.h.0.attn.c_attn.weight"
    part: str  # e.g. "attention Q, K, V"
    shape: tuple[int, ...]
    count: int  # numbers stored for this row (0 when it shares another row's tensor)
    bytes: int
    tied_to: str | None = None  # the name of the tensor it shares, for tied weights


def part_of(name: str) -> str:
    for fragment, part in PARTS:
        if fragment in name:
            return part
    return "other"


def parameter_table(model: nn.Module, dtype: torch.dtype = torch.float32) -> list[ParamRow]:
    """One row per parameter name in the model. A tied weight (lm_head shares wte's table) gets a
    row with count 0 and `tied_to` set, so the totals count the shared tensor once, like
    ``model.parameters()`` does."""
    bytes_per_number = torch.empty((), dtype=dtype).element_size()
    first_name: dict[int, str] = {}  # id(tensor) -> the first name it was seen under
    rows = []
    for name, p in model.named_parameters(remove_duplicate=False):
        tied_to = first_name.setdefault(id(p), name)
        tied_to = None if tied_to == name else tied_to
        count = 0 if tied_to else p.numel()
        rows.append(ParamRow(name, part_of(name), tuple(p.shape), count, count * bytes_per_number, tied_to))
    return rows


def totals_by_part(rows: list[ParamRow]) -> dict[str, tuple[int, int]]:
    """part -> (parameter count, bytes), in the order parts first appear."""
    totals: dict[str, tuple[int, int]] = {}
    for r in rows:
        count, nbytes = totals.get(r.part, (0, 0))
        totals[r.part] = (count + r.count, nbytes + r.bytes)
    return totals


def format_table(rows: list[ParamRow]) -> str:
    """A plain-text table with a total line, for printing in a notebook."""
    lines = [f"{'name':<40} {'part':<20} {'shape':<12} {'params':>9} {'bytes':>10}"]
    for r in rows:
        shape = "x".join(map(str, r.shape))
        note = f"  (same tensor as {r.tied_to})" if r.tied_to else ""
        lines.append(f"{r.name:<40} {r.part:<20} {shape:<12} {r.count:>9,} {r.bytes:>10,}{note}")
    lines.append(f"{'total':<40} {'':<20} {'':<12} {sum(r.count for r in rows):>9,} {sum(r.bytes for r in rows):>10,}")
    return "\n".join(lines)
