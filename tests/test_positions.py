"""Sinusoidal and rotary position encodings: formula values, relative-position property, errors."""

from __future__ import annotations

import math

import pytest
import torch

from tinyformer.positions import apply_rotary, rotary_angles, sinusoidal_table

ATOL = 1e-5  # float32 sin/cos of angles up to ~100 rad


def test_sinusoidal_matches_the_paper_formula():
    table = sinusoidal_table(50, 16)
    assert table.shape == (50, 16)
    for pos, i in [(0, 0), (1, 0), (7, 3), (49, 7)]:
        angle = pos / 10000 ** (2 * i / 16)
        assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=ATOL)
        assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=ATOL)


def test_sinusoidal_dot_product_depends_on_offset_only():
    table = sinusoidal_table(64, 32).double()
    gram = table @ table.T  # [P, P]
    for offset in (0, 1, 5, 20):
        diagonal = torch.diagonal(gram, offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-4)


def test_rotary_equals_multiplying_pairs_by_a_unit_complex_number():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 8)  # [B, nh, T, hd]
    angles = rotary_angles(10, 8)  # [T, hd / 2]
    as_complex = torch.view_as_complex(x.double().reshape(2, 3, 10, 4, 2).contiguous())  # pairs -> a + ib
    expected = torch.view_as_real(as_complex * torch.polar(torch.ones_like(angles.double()), angles.double()))
    assert torch.allclose(apply_rotary(x), expected.reshape(2, 3, 10, 8).float(), atol=ATOL)


def test_rotary_keeps_lengths_and_leaves_position_zero_unchanged():
    torch.manual_seed(1)
    x = torch.randn(5, 16)
    rotated = apply_rotary(x)
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=ATOL)
    assert torch.equal(rotated[0], x[0])


def test_rotary_score_depends_on_relative_position_only():
    torch.manual_seed(2)
    q, k = torch.randn(16), torch.randn(16)
    positions = torch.arange(30)
    q_at = apply_rotary(q.expand(30, 16), positions)  # the same query placed at every position
    k_at = apply_rotary(k.expand(30, 16), positions)
    scores = q_at @ k_at.T  # [30, 30], scores[m, n] = q at m . k at n
    for offset in (-7, 0, 3, 12):
        diagonal = torch.diagonal(scores, offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-4)
    assert not torch.allclose(torch.diagonal(scores, 0)[0], torch.diagonal(scores, 3)[0], atol=1e-3)


def test_explicit_positions_match_default_positions():
    torch.manual_seed(3)
    x = torch.randn(6, 8)
    assert torch.equal(apply_rotary(x, torch.arange(6)), apply_rotary(x))
    shifted = apply_rotary(x, torch.arange(10, 16))
    assert not torch.allclose(shifted, apply_rotary(x), atol=1e-3)


@pytest.mark.parametrize("dim", [0, 7, -2])
def test_odd_or_non_positive_dimension_is_refused(dim):
    with pytest.raises(ValueError, match="positive even number"):
        sinusoidal_table(4, dim)


def test_rotary_refuses_an_odd_head_size():
    with pytest.raises(ValueError, match="positive even number"):
        apply_rotary(torch.zeros(3, 5))


def test_no_positions_is_refused():
    with pytest.raises(ValueError, match="n_positions must be positive"):
        rotary_angles(0, 8)
