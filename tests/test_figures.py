"""The lessons' pictures draw exactly the numbers they are given (tinyformer.figures)."""

from __future__ import annotations

import pytest
import torch
from matplotlib.colors import to_rgba

from tinyformer import vllm_rules
from tinyformer.figures import (
    NULL_COLOUR,
    Pool,
    StepCounts,
    argmax_agreement,
    arrivals_figure,
    bits_figure,
    engine_vs_vllm_figure,
    kv_pool_figure,
    recall_figure,
    request_blocks,
    startup_figure,
    startup_segments,
    vllm_steps,
)
from tinyformer.serving.vllm_log import READY, STAGES, Iteration


def test_request_blocks_hold_back_the_null_block_and_round_up_to_whole_blocks():
    # lesson 08's pools: 10 blocks of 128 at max_model_len 128 or 64; the same bytes in 40 blocks of 32; half of it
    assert request_blocks(10, 128, 128) == [[b] for b in range(1, 10)]
    assert len(request_blocks(10, 128, 64)) == 9  # a 64-token request still takes a whole 128-token block
    assert request_blocks(40, 32, 128) == [list(range(1 + 4 * i, 5 + 4 * i)) for i in range(9)]  # 3 blocks left
    assert len(request_blocks(40, 32, 64)) == 19
    assert len(request_blocks(5, 128, 128)) == 4
    assert len(request_blocks(10, 128, 129)) == 4  # 2 blocks each: 9 usable // 2
    with pytest.raises(ValueError, match="num_blocks"):
        request_blocks(0, 128, 128)


def face_colours(ax) -> list[tuple]:
    return [tuple(p.get_facecolor()) for p in ax.patches if p.get_hatch() is None]


def test_kv_pool_figure_colours_each_requests_blocks_and_hatches_the_unused_tail():
    pools = {"served": Pool(10, 128, 128), "max_model_len 64": Pool(10, 128, 64), "32-token blocks": Pool(40, 32, 128)}
    fig = kv_pool_figure(pools, bytes_per_token=1024)
    ax = fig.axes[0]
    colours = face_colours(ax)
    assert len(colours) == 10 + 10 + 40  # one rectangle per block
    assert colours.count(to_rgba(NULL_COLOUR)) == 3  # one null block per pool
    assert colours.count(to_rgba("white")) == 0 + 0 + 3  # free blocks: only the 32-token pool has any
    by_pool = [colours[:10], colours[10:20], colours[20:]]
    held = [len([c for c in row if c not in (to_rgba(NULL_COLOUR), to_rgba("white"))]) for row in by_pool]
    assert held == [9, 9, 36]
    assert len(set(by_pool[2][1:5])) == 1 and by_pool[2][4] != by_pool[2][5]  # request 0: blocks 1-4, one colour
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 9  # max_model_len 64 in 128-token blocks: every request wastes half a block
    assert all(p.get_width() == 64 * 1024 / 1024 for p in hatched)  # 64 unused tokens x 1 KiB per token


def test_vllm_steps_turn_its_usage_back_into_blocks():
    it = Iteration(3, 1, 30, 4, 4, 12.0, kv_cache_usage=0.25)
    (step,) = vllm_steps([it], num_blocks=33)
    assert step == StepCounts(requests=5, prefill_requests=1, blocks_used=0.25 * 32)  # usage of the 32 usable


def test_engine_vs_vllm_figure_puts_both_on_the_same_step_axis():
    ours = [StepCounts(2, 2, 2), StepCounts(3, 1, 3), StepCounts(3, 0, 4)]
    theirs = [StepCounts(1, 1, 1.0), StepCounts(3, 2, 3.0)]
    fig = engine_vs_vllm_figure(ours, theirs, num_blocks=33)
    left, right = fig.axes
    assert left.get_shared_x_axes().joined(left, right) and left.get_shared_y_axes().joined(left, right)
    assert list(left.lines[0].get_ydata()) == [2, 3, 4] and list(right.lines[0].get_ydata()) == [1.0, 3.0]
    assert left.lines[1].get_ydata()[0] == vllm_rules.usable_blocks(33)


def test_bits_figure_plots_each_format_at_its_bits():
    bpp = {"fp32": 4.0, "int8": 1.0, "int4 g32": 0.578125}
    loss = {"fp32": 1.70, "int8": 1.71, "int4 g32": 1.72}
    agreement = {"fp32": 1.0, "int8": 0.95, "int4 g32": 0.9}
    fig = bits_figure(bpp, loss, agreement, floor=1.69)
    loss_ax, agree_ax = fig.axes
    assert list(loss_ax.lines[0].get_xdata()) == [32.0, 8.0, 4.625]
    assert list(loss_ax.lines[0].get_ydata()) == [1.70, 1.71, 1.72]
    assert list(agree_ax.lines[0].get_ydata()) == [1.0, 0.95, 0.9]


def test_argmax_agreement_counts_equal_choices():
    reference = torch.tensor([[[0.0, 1.0], [2.0, 1.0]]])  # choices: 1, 0
    assert argmax_agreement(torch.tensor([[[0.0, 3.0], [0.0, 1.0]]]), reference) == 0.5  # 1 == 1, 1 != 0
    assert argmax_agreement(reference, reference) == 1.0


def test_recall_figure_draws_the_table_and_refuses_a_row_of_the_wrong_length():
    table = {"TF-IDF": [0.5, 0.7, 0.8, 0.9], "random ranking": [0.1, 0.2, 0.3, 0.4]}
    ax = recall_figure(table, (1, 3, 5, 10)).axes[0]
    assert [list(line.get_ydata()) for line in ax.lines] == list(table.values())
    assert list(ax.lines[0].get_xdata()) == [1, 3, 5, 10]
    with pytest.raises(ValueError, match="one per k"):
        recall_figure({"x": [0.1]}, (1, 3))


def test_figures_show_themselves_as_png_without_pyplot():
    """A notebook shows a cell's last value through _repr_png_: no backend needed, nothing registered with pyplot."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = recall_figure({"TF-IDF": [0.5, 0.9]}, (1, 3))
    assert fig._repr_png_().startswith(b"\x89PNG") and plt.get_fignums() == before


def test_startup_segments_cut_the_start_at_each_milestone_and_merge_one_the_polls_missed():
    milestones = [milestone for _, milestone, _ in STAGES]
    seen = dict(zip(milestones, (7.0, 14.0, 14.5, 16.0, 17.0), strict=True))
    segments = startup_segments(seen, 18.0)
    assert [(begin, end) for _, begin, end in segments] == [(0, 7), (7, 14), (14, 14.5), (14.5, 16), (16, 17), (17, 18)]
    assert [what for what, _, _ in segments] == [before for _, _, before in STAGES] + [READY[1]]
    del seen["loading weights"]  # seen in the same poll as the next one, or not at all: one stretch for both
    merged = startup_segments(seen, 18.0)
    assert len(merged) == 5 and merged[2] == (f"{STAGES[2][2]}; {STAGES[3][2]}", 14.0, 16.0)
    assert startup_segments({}, 18.0) == [("; ".join([s[2] for s in STAGES] + [READY[1]]), 0.0, 18.0)]


def test_startup_figure_draws_one_bar_segment_per_stretch():
    seen = {"API server parsed its arguments": 7.0, "engine process started": 14.0}
    ax = startup_figure(seen, 18.0).axes[0]
    assert [(p.get_x(), p.get_width()) for p in ax.patches] == [(0.0, 7.0), (7.0, 7.0), (14.0, 4.0)]


def test_arrivals_figure_draws_the_stream_as_it_came_and_the_plain_reply_at_its_end():
    ax = arrivals_figure([(0.010, 1), (0.020, 3), (0.030, 6)], plain_seconds=0.025).axes[0]
    streamed, first, plain = ax.lines
    assert list(streamed.get_xdata()) == pytest.approx([0, 10, 20, 30]) and list(streamed.get_ydata()) == [0, 1, 3, 6]
    assert (first.get_xdata()[0], first.get_ydata()[0]) == (pytest.approx(10), 1)
    assert list(plain.get_xdata()) == pytest.approx([0, 25]) and list(plain.get_ydata()) == [0, 6]
