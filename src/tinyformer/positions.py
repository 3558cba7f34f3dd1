"""Position signals other than a learned table: sinusoidal (added to the input) and rotary (applied to q, k).

The GPT-2 model learns its position table (`wpe`). These two schemes compute positions from a formula
instead, so they have no weights and no fixed number of rows. Small pure functions, for plotting
and comparing in the notebooks; :func:`apply_rotary` is also the rotation the llama model applies to its
queries and keys in every layer (lesson 14).
"""

from __future__ import annotations

import torch

ROPE_BASE = 10000.0  # rotary's "theta": the slowest pair turns once every 2 pi x base positions (Llama 2: 10000)


def _frequencies(dim: int, base: float) -> torch.Tensor:
    """One angular frequency per pair of dimensions, from 1 down to ~1/base (a geometric ladder)."""
    if dim <= 0 or dim % 2 != 0:
        raise ValueError(f"dim must be a positive even number (dimensions are used in pairs), got {dim}.")
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # [dim / 2]


def _angles(n_positions: int, dim: int, base: float) -> torch.Tensor:
    if n_positions <= 0:
        raise ValueError(f"n_positions must be positive, got {n_positions}.")
    positions = torch.arange(n_positions, dtype=torch.float64)  # [P]
    return positions[:, None] * _frequencies(dim, base)[None, :]  # [P, dim / 2], angle = position x frequency


def sinusoidal_table(n_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The "Attention Is All You Need" encoding [n_positions, dim]: even columns sin, odd columns cos.

    Row p is added to the token vector at position p, exactly like a row of a learned `wpe`."""
    angles = _angles(n_positions, dim, base)  # [P, dim / 2]
    table = torch.empty(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table.float()  # [P, dim]


def rotary_angles(n_positions: int, head_dim: int, base: float = ROPE_BASE) -> torch.Tensor:
    """The rotation angle [n_positions, head_dim / 2] that rotary encoding applies to each pair of dims."""
    return _angles(n_positions, head_dim, base).float()


def apply_rotary(x: torch.Tensor, positions: torch.Tensor | None = None, base: float = ROPE_BASE) -> torch.Tensor:
    """Rotate each pair of dimensions (x[..., 2i], x[..., 2i+1]) of x [..., T, hd] by position x frequency_i.

    Applied to queries and keys (not added to the input), so q_m . k_n depends on m - n only:
    rotating both by their own positions leaves just the difference in their dot product.
    positions: [T] (default 0..T-1), or any shape that broadcasts against x's leading dims: the llama model
    passes [B, 1, T] for x [B, heads, T, hd], the engine [N, 1] for its packed tokens x [N, heads, hd]."""
    T, hd = x.shape[-2], x.shape[-1]
    positions = torch.arange(T, device=x.device) if positions is None else positions  # [T]
    frequencies = _frequencies(hd, base).to(x.device)  # [hd / 2]
    angles = positions.to(torch.float64)[..., None] * frequencies  # [..., hd / 2], angle = position x frequency
    cos, sin = torch.cos(angles).to(x.dtype), torch.sin(angles).to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]  # [..., T, hd / 2] each: the two coordinates of each pair
    rotated = torch.empty_like(x)
    rotated[..., 0::2] = even * cos - odd * sin  # a 2-D rotation of every pair
    rotated[..., 1::2] = even * sin + odd * cos
    return rotated  # [..., T, hd]
